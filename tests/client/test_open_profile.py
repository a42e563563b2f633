"""The command line opens the profile (Argon2id) while the client's modules are imported
on another thread: the two overlap, the profile ends up open on the calling thread,
and no thread outlives the opening, whatever the outcome."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2.low_level import hash_secret_raw

from parley.cli import main as cli
from parley.client import store
from parley.client.store import Profile, WrongPassphrase

MODULE = """
import threading
import time
import {marker} as marker
marker.threads.append(threading.current_thread().name)
marker.importing.set()
marker.saw_derive.append(marker.deriving.wait(timeout=5))
time.sleep(0.2)  # still importing when the key is ready: the opening must wait for it
"""


def loaders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "parley-import"]


class Marker:
    def __init__(self) -> None:
        self.threads: list[str] = []
        self.importing = threading.Event()
        self.deriving = threading.Event()
        self.saw_derive: list[bool] = []
        self.overlapped: list[bool] = []
        self.profile = Path()


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Marker]:
    """A profile, a module to import (``slow_client``) that tells which thread imported
    it and waits (at most 5 s) for the Argon2id to start, and an Argon2id that waits as
    long for that import to start: both see the other only if they run together."""
    mark = Marker()
    name = f"parley_test_marker_{id(mark)}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "slow_client.py").write_text(MODULE.format(marker=name))
    (tmp_path / "mods" / "broken_client.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setitem(sys.modules, name, mark)
    mark.profile = tmp_path / "p"
    Profile(mark.profile, "right").create({"phone": "+14155550123"})
    derive = hash_secret_raw

    def waiting_derive(*args: Any, **kwargs: Any) -> bytes:
        mark.deriving.set()
        mark.overlapped.append(mark.importing.wait(timeout=5))
        return derive(*args, **kwargs)

    monkeypatch.setattr(store, "hash_secret_raw", waiting_derive)
    monkeypatch.setenv("PARLEY_PASSPHRASE", "right")
    yield mark
    for module in ("slow_client", "broken_client"):
        sys.modules.pop(module, None)


def test_argon2id_runs_while_the_client_is_imported(marker: Marker) -> None:
    opened = cli._open_profile(marker.profile, False, "slow_client")
    # each saw the other start: the key was derived while the module was being imported
    assert marker.overlapped == [True]
    assert marker.saw_derive == [True]
    assert marker.threads == ["parley-import"]
    assert "slow_client" in sys.modules
    assert not loaders()
    opened.load()  # already open: no second Argon2id
    assert marker.overlapped == [True]
    opened.close()


def test_a_wrong_passphrase_is_still_refused_and_no_thread_is_left(
    marker: Marker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_PASSPHRASE", "wrong")
    with pytest.raises(WrongPassphrase):
        cli._open_profile(marker.profile, False, "slow_client")
    assert not loaders()


def test_a_failed_import_is_left_to_the_command(marker: Marker) -> None:
    cli._open_profile(marker.profile, False, "broken_client", "slow_client").close()
    assert "broken_client" not in sys.modules
    with pytest.raises(ImportError, match="broken on purpose"):
        __import__("broken_client")


def test_no_profile_yet_is_not_opened(tmp_path: Path, marker: Marker) -> None:
    opened = cli._open_profile(tmp_path / "new", False, "slow_client")
    assert not opened.exists()
    assert marker.overlapped == []


def test_register_and_link_open_nothing(marker: Marker, monkeypatch: pytest.MonkeyPatch) -> None:
    """They decide what an existing profile means (refused, or set aside with --force),
    with their own messages: a wrong passphrase is not raised here."""
    monkeypatch.setenv("PARLEY_PASSPHRASE", "wrong")
    opened = cli._open_profile(marker.profile, True, "slow_client")
    assert opened.exists()
    assert marker.overlapped == []
