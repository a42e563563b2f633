"""The profile's typed records: what the store keeps turns into records and back
without losing anything, profiles written before the records were typed still
open, and a record a newer version wrote survives an older one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.client.state import MAX_ALARMS, ContactRecord, KtView, ProfileState, Seen
from parley.client.store import Profile

PHONE = "+14155550123"

# A profile's rows as the dict-based code before typed records wrote them.
OLD_ROWS: dict[str, Any] = {
    "server": "http://127.0.0.1:8000",
    "phone": PHONE,
    "name": "Alice",
    "credential": "cred",
    "device": {"account_id": "acc-a", "device_id": 1},
    "contacts": {
        "acc-b": {"phone": "+14155550124", "identity": "SUQ=", "verified": True, "changed": False},
        "acc-c": {
            "phone": "",
            "identity": "TkVX",
            "verified": False,
            "changed": True,
            "notified": False,
            "previous": "T0xE",
            "name": "Carol",
        },
    },
    "phones": {"+14155550124": "acc-b"},
    "groups": {"0" * 32: {"name": "Book club", "left": False}, "1" * 32: {"name": ""}},
    "kt": {
        "devices": [1, 2],
        "expected_links": 1,
        "alarms": ["FORK: something"],
        "log_key": "a2V5",
        "head": {"size": 7, "root": "cm9vdA==", "timestamp_ms": 5},
        "seen": {"acc-b": [3, "dmFs", 9, "SUQ="], "acc-old": [1, "b2xk"]},
        "own": {"version": 2, "value": "b3du"},
        "version": 2,
        "epoch": 4,
        "checked_ms": 10,
        "list_counter": 11,
        "signed": [1, 2],
        "signed_ms": 12,
        "list_seen": 11,
        "gossip_ok": ["7:abcd"],
    },
    "policy": {"version": 2, "text": "v2"},
    "settings": {"read_receipts": False},
    "maintained_ms": 13,
    "prekeys_uploaded_ms": 14,
}


def test_rows_written_before_typed_records_open_and_keep_every_field() -> None:
    state = ProfileState.from_records(OLD_ROWS)
    assert state.registered and state.phone == PHONE and state.credential == "cred"
    carol = state.contacts["acc-c"]
    assert carol.account_id == "acc-c" and carol.changed and carol.previous == "T0xE"
    assert state.contacts["acc-b"].verified and not state.contacts["acc-b"].changed
    assert state.group_name("1" * 32) == "1" * 32  # no name: its id
    assert state.kt.seen["acc-b"] == Seen(3, "dmFs", 9, "SUQ=")
    assert state.kt.seen["acc-old"] == Seen(1, "b2xk")  # before device lists were tracked
    assert state.kt.head is not None and state.kt.head.size == 7
    assert state.policy is not None and state.policy.version == 2
    assert not state.settings.read_receipts
    again = state.records()
    for name, value in OLD_ROWS.items():
        if name in ("contacts", "groups", "kt"):
            continue
        assert again[name] == value, name
    for account, old in OLD_ROWS["contacts"].items():
        assert {k: again["contacts"][account][k] for k in old} == old
    for key, old in OLD_ROWS["kt"].items():
        assert again["kt"][key] == old, key
    assert ProfileState.from_records(again) == state


def test_a_record_a_newer_version_wrote_is_kept() -> None:
    rows = {**OLD_ROWS, "future_feature": {"x": [1, 2]}}
    state = ProfileState.from_records(rows)
    state.name = "Alice B"
    assert state.records()["future_feature"] == {"x": [1, 2]}


def test_a_registration_in_progress_stores_only_where_and_who() -> None:
    pending = ProfileState(server="http://127.0.0.1:1", pending_phone=PHONE)
    rows = pending.records()
    assert rows["pending_phone"] == PHONE and "device" not in rows and "kt" not in rows
    assert not ProfileState.from_records(rows).registered


def test_alarms_are_kept_once_and_bounded() -> None:
    view = KtView()
    view.alarm("one")
    view.alarm("one")
    assert view.alarms == ["one"]
    for i in range(MAX_ALARMS + 5):
        view.alarm(f"alarm {i}")
    assert len(view.alarms) == MAX_ALARMS and view.alarms[-1] == f"alarm {MAX_ALARMS + 4}"


def test_the_store_round_trips_typed_records_and_writes_only_what_changed(
    tmp_path: Path,
) -> None:
    profile = Profile(tmp_path / "p", "pw")
    profile.create(ProfileState.from_records(OLD_ROWS).records())
    state = ProfileState.from_records(profile.load())
    assert state == ProfileState.from_records(OLD_ROWS)
    generation = profile._generation
    profile.save(state.records())  # nothing changed: no write
    assert profile._generation == generation
    state.contacts["acc-b"].name = "Bob"
    profile.save(state.records())
    assert profile._generation == generation + 1
    assert ProfileState.from_records(profile.load()).contacts["acc-b"].name == "Bob"
    profile.close()


text = st.text(max_size=12)
contacts = st.builds(
    ContactRecord,
    account_id=st.just(""),
    phone=text,
    identity=text,
    verified=st.booleans(),
    changed=st.booleans(),
    notified=st.booleans(),
    previous=st.none() | text,
    name=text,
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8), contacts, max_size=4),
    st.lists(text, max_size=5),
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.tuples(st.integers(0, 99), text, st.none() | st.integers(0, 99), text),
        max_size=4,
    ),
)
def test_any_state_survives_its_rows(
    people: dict[str, ContactRecord], alarms: list[str], seen: dict[str, tuple[Any, ...]]
) -> None:
    state = ProfileState(phone=PHONE, device={"account_id": "me"})
    for account, c in people.items():
        c.account_id = account
        state.contacts[account] = c
    for a in alarms:
        state.kt.alarm(a)
    state.kt.seen = {
        a: Seen(v, val, c, ident if c is not None else None)
        for a, (v, val, c, ident) in seen.items()
    }
    assert ProfileState.from_records(state.records()) == state
