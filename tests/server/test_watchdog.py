"""The shutdown deadline (server/watchdog.py): a process held after its application
shut down is reported, by code location only, and ended with status 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from parley.server import watchdog

HELD = textwrap.dedent(
    """
    import asyncio, threading, time
    from parley.server import watchdog

    SECRET = "canary-value-7f3a"

    async def stuck_in_a_driver(event: asyncio.Event, held: str) -> None:
        await event.wait()

    async def main() -> None:
        task = asyncio.create_task(stuck_in_a_driver(asyncio.Event(), SECRET))
        watchdog.enable()
        watchdog.arm(0.5)
        await asyncio.sleep(0)
        time.sleep(30)  # the loop is held, as by a join on a driver's thread

    asyncio.run(main())
    """
)


def test_a_held_shutdown_is_reported_and_ended() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HELD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == watchdog.EXIT_STUCK
    assert time.monotonic() - started < 20  # not the 30 s the process was held for
    assert "shutdown did not finish within 0.5 s" in done.stderr
    assert "task stuck_in_a_driver:" in done.stderr  # where the task waits
    assert "in main" in done.stderr  # and where each thread stands
    assert "canary-value-7f3a" not in done.stderr  # locations, never values


def test_the_deadline_is_off_unless_the_server_process_enabled_it() -> None:
    script = HELD.replace("watchdog.enable()", "pass").replace("time.sleep(30)", "time.sleep(1.5)")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "shutdown did not finish" not in done.stderr
