"""The XMPP servers ``bench server --peers`` compares Parley with: Prosody and ejabberd.

Each runs from its Debian package, with a configuration this module writes
into a temporary directory (nothing under /etc is read or changed, and the
system's own service is never started or stopped): one virtual host,
``localhost``, a client listener on a free loopback port, plain TCP with SASL
PLAIN allowed (no TLS, as for Parley's loopback HTTP), in-band registration
open so that the generator creates its own accounts, and no traffic shaping
or rate limits (Prosody: ``mod_limits`` off and no ``limits``; ejabberd:
``c2s_shaper: none``, listener ``shaper: none``, ``max_user_sessions`` high,
``registration_timeout: infinity``). Server-to-server, HTTP, offline storage,
message archiving, carbons and stream management are off on both, so each
does what Parley's relay does for a connected recipient: route the stanza.

When the benchmark runs as root, each daemon runs as its package's system
user (``prosody``, ``ejabberd``; both refuse, or are told not, to run as
root), and its temporary directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAIN = "localhost"


def package_version(name: str) -> str | None:
    """The installed Debian package's version, or None when it is not installed."""
    if shutil.which("dpkg-query") is None:
        return None
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
        return None
    return r.stdout.split()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {tail(log)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s: {tail(log)}")


def tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


@dataclass
class Daemon:
    name: str
    version: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    user: str
    notes: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _as_user(name: str, directory: Path) -> dict[str, Any]:
    """Popen arguments that run a daemon as its system user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return {}
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _user_name(kwargs: dict[str, Any]) -> str:
    uid = kwargs.get("user", os.geteuid())
    return pwd.getpwuid(uid).pw_name


PROSODY_CONFIG = """\
-- Written by parley.bench.peers for one benchmark run.
run_as_root = {run_as_root}
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{dir}/certs"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
network_backend = "epoll"
modules_enabled = {{ "roster", "saslauth", "disco", "register", "ping" }}
modules_disabled = {{ "s2s", "s2s_auth_certs", "offline", "limits", "admin_socket" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true
registration_throttle_max = 1000000
registration_throttle_period = 1
authentication = "internal_plain"
storage = "internal"
log = {{ {{ levels = {{ min = "warn" }}, to = "file", filename = "{dir}/prosody.log" }} }}
statistics = nil
VirtualHost "{domain}"
"""


def start_prosody(directory: Path) -> Daemon:
    version = package_version("prosody")
    binary = shutil.which("prosody") or "/usr/bin/prosody"
    if version is None:
        raise LookupError("the Debian package prosody is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir()
    (directory / "certs").mkdir()
    port = free_port()
    log = directory / "prosody.log"
    log.touch()
    run_as = _as_user("prosody", directory)
    config = directory / "prosody.cfg.lua"
    config.write_text(
        PROSODY_CONFIG.format(
            run_as_root="false" if run_as or os.geteuid() != 0 else "true",
            dir=directory,
            port=port,
            domain=DOMAIN,
        )
    )
    if run_as:
        os.chown(config, run_as["user"], run_as["group"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory)}
    stderr = (directory / "prosody.stderr").open("wb")
    proc = subprocess.Popen(
        [binary, "--config", str(config), "-F"],
        stdout=stderr,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        cwd=directory,
        env=env,
        **run_as,
    )
    try:
        wait_port(port, proc, directory / "prosody.stderr")
    except Exception:
        if proc.poll() is None:
            proc.kill()
        raise
    return Daemon("prosody", version, port, proc, log, _user_name(run_as))


EJABBERD_CONFIG = """\
# Written by parley.bench.peers for one benchmark run.
hosts: ["{domain}"]
loglevel: warning
log_rotate_count: 0
hide_sensitive_log_data: true
certfiles: []
acme:
  auto: false
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    shaper: none
    access: c2s
    starttls: false
    starttls_required: false
    max_stanza_size: 262144
auth_method: internal
auth_password_format: plain
registration_timeout: infinity
shaper_rules:
  max_user_sessions: 100000
  c2s_shaper: none
  s2s_shaper: none
access_rules:
  c2s:
    allow: all
  register:
    allow: all
  local:
    allow: all
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_register:
    access: register
    ip_access: all
"""


def start_ejabberd(directory: Path) -> Daemon:
    version = package_version("ejabberd")
    if version is None:
        raise LookupError("the Debian package ejabberd is not installed")
    erl = shutil.which("erl") or "/usr/bin/erl"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spool").mkdir()
    port = free_port()
    config = directory / "ejabberd.yml"
    config.write_text(EJABBERD_CONFIG.format(port=port, domain=DOMAIN))
    log = directory / "ejabberd.log"
    log.touch()
    run_as = _as_user("ejabberd", directory)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "EJABBERD_CONFIG_PATH": str(config),
        "EJABBERD_LOG_PATH": str(log),
        "ERL_LIBS": "/usr/lib/x86_64-linux-gnu",
        "ERL_CRASH_DUMP": str(directory / "erl_crash.dump"),
        "ERL_MAX_PORTS": "32000",
        "ERL_MAX_ETS_TABLES": "1400",
    }
    lib = Path("/usr/lib/x86_64-linux-gnu")
    if not any(lib.glob("ejabberd-*")):
        found = sorted(Path("/usr/lib").glob("*/ejabberd-*"))
        if found:
            env["ERL_LIBS"] = str(found[0].parent)
    stderr = (directory / "ejabberd.stderr").open("wb")
    # What ``ejabberdctl foreground`` runs, without Erlang distribution: no node
    # name, so nothing is registered with (or started as) an epmd daemon.
    proc = subprocess.Popen(
        [
            erl,
            "+K",
            "true",
            "+P",
            "250000",
            "-noinput",
            "-mnesia",
            "dir",
            f'"{directory / "spool"}"',
            "-s",
            "ejabberd",
        ],
        stdout=stderr,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        cwd=directory,
        env=env,
        **run_as,
    )
    try:
        wait_port(port, proc, log, timeout=90)
    except Exception:
        if proc.poll() is None:
            proc.kill()
        raise
    return Daemon("ejabberd", version, port, proc, log, _user_name(run_as))


STARTERS = {"prosody": start_prosody, "ejabberd": start_ejabberd}
