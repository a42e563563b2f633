"""Server configuration, built once by the command line and passed to the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DAY_MS = 86_400_000
SEND_BURST_S = 5


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8470
    sms: str = "console"
    message_ttl_ms: int = 30 * DAY_MS
    ip_retention_ms: int = 7 * DAY_MS
    attachment_ttl_ms: int = 30 * DAY_MS
    max_attachment_bytes: int = 100 * 1024 * 1024
    max_body_bytes: int = 2 * 1024 * 1024
    max_linked_devices: int = 5
    code_ttl_ms: int = 10 * 60_000
    code_attempts: int = 5
    registrations_per_ip_hour: int = 100
    # Each device may send this many messages a second, in bursts of SEND_BURST_S
    # seconds' worth (1,000 by default): a spam brake that no person typing reaches.
    sends_per_device_s: float = 200.0
    prekeys_low: int = 10
    delivery_window: int = 100
    maintenance_interval_s: float = 60.0
    kt_epoch_s: float = 10.0
    log_level: str = "info"  # Parley's own loggers; see server/logs.py
    redis_url: str | None = None  # a cluster node: signals and rate limits in Redis
    workers: int = 1  # processes of this node (each is a node of the cluster)
    # Staff console sessions end after this long without a request, and in any case
    # after console_max_s from sign-in (README, "Staff console").
    console_idle_s: float = 30 * 60.0
    console_max_s: float = 8 * 3600.0
    # Tests only: CSP violation reports the browser sends are appended here (JSON lines).
    csp_report_file: Path | None = None

    @staticmethod
    def default_database_url(data_dir: Path) -> str:
        return f"sqlite:///{data_dir / 'parley.db'}"
