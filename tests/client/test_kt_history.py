"""The owner's history proof (``client.kt.verify_history``): every version since the
last check, chained, ending at the entry the directory proves; nothing left out."""

from __future__ import annotations

import pytest

from parley.client.kt import KeyTransparencyError, _claimed_head, verify_history
from parley.translog import directory

ACCOUNT = "4c0b5d6e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
MINE, FORGED = b"m" * 64, b"f" * 64


def _versions(states: list[tuple[bytes, list[int]]]) -> tuple[list[dict[str, object]], bytes]:
    """Versions 1.. of an account, one per epoch, and the last one's value."""
    out, prev = [], directory.EMPTY
    for n, (identity, devices) in enumerate(states, start=1):
        v = {
            "version": n,
            "epoch": 10 * n,
            "identity_key": identity,
            "devices": devices,
            "device_list": b"",
        }
        prev = directory.value_hash(ACCOUNT, n, 10 * n, identity, devices, b"", prev)
        out.append(v)
    return out, prev


def _published(version: int, value: bytes) -> dict[str, object]:
    return {"version": version, "value": value, "epoch": 1000}


def test_a_complete_history_verifies_from_any_checked_version() -> None:
    states = [(MINE, [1]), (FORGED, [1]), (MINE, [1]), (MINE, [1, 9]), (MINE, [1])]
    versions, last = _versions(states)
    verify_history(ACCOUNT, 0, directory.EMPTY, versions, _published(5, last))
    _, after_two = _versions(states[:2])
    verify_history(ACCOUNT, 2, after_two, versions[2:], _published(5, last))


def test_a_version_left_out_or_changed_is_refused() -> None:
    states = [(MINE, [1]), (FORGED, [1]), (MINE, [1])]
    versions, last = _versions(states)
    with pytest.raises(KeyTransparencyError, match="skips"):  # the forged one hidden
        verify_history(ACCOUNT, 0, directory.EMPTY, [versions[0], versions[2]], _published(3, last))
    renumbered = [versions[0], {**versions[2], "version": 2}]  # ...or its number reused
    with pytest.raises(KeyTransparencyError, match="does not lead"):
        verify_history(ACCOUNT, 0, directory.EMPTY, renumbered, _published(3, last))
    cleaned = [versions[0], {**versions[1], "identity_key": MINE}, versions[2]]  # rewritten
    with pytest.raises(KeyTransparencyError, match="does not lead"):
        verify_history(ACCOUNT, 0, directory.EMPTY, cleaned, _published(3, last))
    with pytest.raises(KeyTransparencyError, match="does not lead"):  # stops short
        verify_history(ACCOUNT, 0, directory.EMPTY, versions[:2], _published(3, last))
    with pytest.raises(KeyTransparencyError, match="out of order"):
        swapped = [versions[0], {**versions[1], "epoch": 5}, versions[2]]
        verify_history(ACCOUNT, 0, directory.EMPTY, swapped, _published(3, last))


def test_an_entry_that_went_back_has_no_history_to_show() -> None:
    _, last = _versions([(MINE, [1]), (MINE, [1, 2])])
    _, first = _versions([(MINE, [1])])
    with pytest.raises(KeyTransparencyError):  # checked at 2, the server shows 1 again
        verify_history(ACCOUNT, 2, last, [], _published(1, first))


@pytest.mark.parametrize(
    "claim",
    [None, "12:ab", [12], [12, "zz"], [0, "00" * 32], [-1, "00" * 32], [3, "00" * 31], {"a": 1}],
)
def test_a_malformed_head_in_a_message_is_ignored(claim: object) -> None:
    """A sender's garbage is no evidence against the server."""
    assert _claimed_head(claim) is None


def test_a_head_in_a_message_parses() -> None:
    assert _claimed_head([7, "ab" * 32]) == (7, bytes.fromhex("ab" * 32))
