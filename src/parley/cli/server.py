"""``parley-server``: run the relay on SQLite (default) or PostgreSQL."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from parley.server import logs, watchdog
from parley.server.config import DAY_MS, SEND_BURST_S, ServerConfig


def parse(argv: list[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(prog="parley-server", description="Parley relay server")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("parley-data"),
        help="data directory (default ./parley-data)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8470)
    p.add_argument(
        "--database-url", help="sqlite:///PATH (default: DATA_DIR/parley.db) or postgresql://..."
    )
    p.add_argument(
        "--redis-url",
        help="redis://HOST:PORT/DB: run as one node of a cluster sharing a PostgreSQL "
        "database and Redis (signals and rate limits; messages stay in PostgreSQL)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes of this node (default 1; more than one needs --redis-url)",
    )
    p.add_argument("--sms", default="console", help="console (default) or file:PATH")
    p.add_argument(
        "--message-ttl-days",
        type=float,
        default=30,
        help="undelivered messages expire (default 30)",
    )
    p.add_argument(
        "--ip-retention-days", type=float, default=7, help="connection log retention (default 7)"
    )
    p.add_argument("--max-attachment-mb", type=float, default=100)
    p.add_argument("--registrations-per-ip-hour", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument(
        "--sends-per-device-second",
        type=float,
        default=200.0,
        help=f"messages each device may send a second, in bursts of {SEND_BURST_S} seconds' "
        "worth (default 200, so bursts of 1,000); more is answered 429 rate_limited",
    )
    p.add_argument("--maintenance-interval", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="level of parley's own log (default info); the log never holds an address, "
        "phone number, account or message id, or credential",
    )
    p.add_argument(
        "--kt-epoch-seconds",
        type=float,
        default=10.0,
        help="key directory epoch interval (default 10)",
    )
    p.add_argument(
        "--console-idle-minutes",
        type=float,
        default=30.0,
        help="a staff console session ends after this long without a request (default 30)",
    )
    p.add_argument("--console-idle-seconds", type=float, help=argparse.SUPPRESS)  # tests
    p.add_argument("--csp-report-file", type=Path, help=argparse.SUPPRESS)  # tests
    args = p.parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    if not 0 < args.port < 65536:
        p.error("--port must be 1..65535")
    from parley.server.sms import from_spec

    try:
        from_spec(args.sms)
    except ValueError as exc:
        p.error(str(exc))
    database_url = args.database_url or ServerConfig.default_database_url(data_dir)
    if args.redis_url is not None:
        if not args.redis_url.startswith(("redis://", "rediss://", "unix://")):
            p.error("--redis-url must be redis://HOST:PORT/DB (or rediss://, unix://)")
        if not database_url.startswith(("postgresql", "postgres://")):
            p.error("--redis-url needs --database-url postgresql://...: nodes share PostgreSQL")
    if not 1 / SEND_BURST_S <= args.sends_per_device_second <= 1e9:  # also refuses nan
        # below that a burst holds less than one message: no device could ever send
        p.error(f"--sends-per-device-second must be {1 / SEND_BURST_S:g}..1e9")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be 1..64")
    if args.workers > 1 and args.redis_url is None:
        p.error("--workers above 1 needs --redis-url (workers signal each other through Redis)")
    return ServerConfig(
        data_dir=data_dir,
        database_url=database_url,
        host=args.host,
        port=args.port,
        sms=args.sms,
        message_ttl_ms=int(args.message_ttl_days * DAY_MS),
        ip_retention_ms=int(args.ip_retention_days * DAY_MS),
        max_attachment_bytes=int(args.max_attachment_mb * 1024 * 1024),
        registrations_per_ip_hour=args.registrations_per_ip_hour,
        sends_per_device_s=args.sends_per_device_second,
        maintenance_interval_s=args.maintenance_interval,
        kt_epoch_s=args.kt_epoch_seconds,
        log_level=args.log_level,
        redis_url=args.redis_url,
        workers=args.workers,
        console_idle_s=args.console_idle_seconds or args.console_idle_minutes * 60,
        csp_report_file=args.csp_report_file,
    )


CONFIG_ENV = "PARLEY_SERVER_CONFIG"


def app_from_env() -> object:
    """The app factory each ``--workers`` process calls (uvicorn imports it by name)."""
    fields = json.loads(os.environ[CONFIG_ENV])
    config = ServerConfig(
        **{
            **fields,
            "data_dir": Path(fields["data_dir"]),
            "csp_report_file": Path(fields["csp_report_file"])
            if fields.get("csp_report_file")
            else None,
        }
    )
    logs.configure(config.log_level)
    watchdog.enable()
    from parley.server.app import create_app

    return create_app(config)


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        sys.stderr.write(
            f"parley-server: cannot create data directory {config.data_dir}: {exc.strerror}\n"
        )
        return 2
    logs.configure(config.log_level)  # before anything logs: see server/logs.py
    watchdog.enable()  # a shutdown that hangs is reported and ended (server/watchdog.py)
    import uvicorn

    from parley.server.app import create_app

    try:
        app: object = create_app(config)
    except ValueError as exc:
        sys.stderr.write(f"parley-server: {exc}\n")
        return 2
    if config.workers > 1:
        os.environ[CONFIG_ENV] = json.dumps(
            {
                **dataclasses.asdict(config),
                "data_dir": str(config.data_dir),
                "csp_report_file": str(config.csp_report_file or ""),
            }
        )
        app = "parley.cli.server:app_from_env"
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # through the handler it found installed: make that a clean exit status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            app,  # type: ignore[arg-type]
            factory=config.workers > 1,
            workers=config.workers if config.workers > 1 else None,
            host=config.host,
            port=config.port,
            access_log=False,  # an access log would be a record of who fetched whose keys
            log_config=None,  # keep logs.configure(): one handler, behind the privacy filter
            ws="parley.server.api.websocket:PushProtocol",  # the push socket, outside ASGI
            ws_max_size=64 * 1024,
            ws_per_message_deflate=False,  # ciphertext does not compress; deflate only costs CPU
            timeout_graceful_shutdown=10,
            log_level="info",
            server_header=False,
        )
    except SystemExit as exc:  # the signal handler above, after a graceful shutdown
        code = exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # still exit below: a driver's thread must not hold the process
        logging.getLogger("parley.server").error("server failed: %s", type(exc).__name__)
        code = 1
    else:
        code = 0
    # uvicorn returns only after the lifespan shutdown, which finished every submitted
    # commit. A thread a driver left behind (an aiosqlite connection a cancelled
    # handler never returned) must not keep the process alive after that: exit
    # without waiting for non-daemon threads (seen as a rare hang on SIGTERM).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
