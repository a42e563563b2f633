"""A deadline on the process's end once the application has begun to shut down.

A graceful shutdown finishes every submitted commit within milliseconds. What can
still hold a Python process after that lies outside the application: a driver's
non-daemon thread, or a task that asyncio's runner waits for on exit. Rather than
hang until a supervisor sends SIGKILL, ``parley-server`` then writes where each
task and thread stands, and exits with status 1.

The report holds file, line and function names only, never a value, so nothing a
user sent and no address can reach the log through it. Nothing acknowledged is lost
by the exit: a sender's answer always follows its commit.

Only the ``parley-server`` process enables it (``enable``). An application run
inside another process, such as a test's, must never end that process.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading

EXIT_STUCK = 1
_enabled = threading.Event()  # set once, never cleared


def enable() -> None:
    _enabled.set()


def arm(seconds: float) -> None:
    """Start the deadline (from the lifespan's shutdown, on its event loop)."""
    if not _enabled.is_set():
        return
    timer = threading.Timer(seconds, _expire, args=(asyncio.get_running_loop(), seconds))
    timer.daemon = True
    timer.start()


def _expire(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    out = sys.stderr
    out.write(f"parley-server: shutdown did not finish within {seconds:g} s; where it stands:\n")
    out.writelines(f"  task {line}\n" for line in where_tasks_wait(loop))
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    out.flush()
    os._exit(EXIT_STUCK)


def where_tasks_wait(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Each pending task as its chain of awaiting coroutines, ``qualname:line`` each."""
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the loop changed its task set too often to copy it
        return ["(the task list could not be read)"]
    return [" > ".join(_chain(task.get_coro())) for task in tasks]


def _chain(awaitable: object) -> list[str]:
    found: list[str] = []
    while awaitable is not None and len(found) < 32:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            found.append(type(awaitable).__qualname__)
            break
        found.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return found
