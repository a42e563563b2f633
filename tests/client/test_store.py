"""The encrypted profile database: at rest, import of the old format, messages,
the chat list, search, receipts' status, and what a tampered file does."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.client.records import Message
from parley.client.store import DELIVERED, READ, SENT, Profile, ProfileError, WrongPassphrase
from parley.crypto.primitives import aead_encrypt

CANARY = "canary-7f3a1c zebra quartz"
PHONE = "+14155550123"


def message(i: int, chat: str = PHONE, text: str = "", outgoing: bool = False) -> Message:
    return Message(
        id=f"m-{i}",
        chat=chat,
        group=None,
        sender=chat if not outgoing else "+14155550000",
        sender_name="Bob",
        text=text or f"hello number {i}",
        sent_at=1_700_000_000_000 + i,
        outgoing=outgoing,
    )


def files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


def test_sensitive_columns_are_encrypted_at_rest(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p", "correct horse")
    profile.create({"phone": PHONE, "name": "Alice Canary"})
    profile.load()
    profile.add_message(message(1, text=CANARY), unread=True)
    profile.save({"phone": PHONE, "name": "Alice Canary", "note": CANARY})
    profile.close()
    raw = files(tmp_path / "p")
    for secret in (CANARY.encode(), b"zebra", PHONE.encode(), b"Alice Canary", b"m-1", b"Bob"):
        assert secret not in raw
    assert oct((tmp_path / "p" / "profile.db").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "p").stat().st_mode & 0o777) == "0o700"


def test_wrong_passphrase_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    Profile(tmp_path / "p", "right").create({"phone": PHONE})
    db = tmp_path / "p" / "profile.db"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    with pytest.raises(WrongPassphrase):
        Profile(tmp_path / "p", "wrong").load()
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert Profile(tmp_path / "p", "right").load() == {"phone": PHONE}


def write_legacy(directory: Path, passphrase: str, state: dict[str, object]) -> None:
    """A profile in the first format, written the way Parley 0.1 wrote it."""
    directory.mkdir(mode=0o700)
    params = {"time_cost": 1, "memory_cost": 8 * 1024, "parallelism": 1}
    salt = secrets.token_bytes(16)
    key = hash_secret_raw(passphrase.encode(), salt, 1, 8 * 1024, 1, 32, Type.ID)
    (directory / "profile.meta").write_text(
        json.dumps({"format": 1, "salt": salt.hex(), "argon2": params})
    )
    nonce = os.urandom(12)
    blob = nonce + aead_encrypt(key, nonce, json.dumps(state).encode(), b"parley/profile/v1")
    (directory / "profile.enc").write_bytes(blob)


def test_an_old_profile_is_imported_with_its_whole_history(tmp_path: Path) -> None:
    history = [message(i, text=f"old {i}").to_entry() for i in range(12_000)]
    history.append(message(99_999, text="mine", outgoing=True).to_entry())
    state = {"phone": PHONE, "contacts": {"a": {"phone": PHONE}}, "history": history}
    state["seen"] = ["frame-1", "frame-2"]
    write_legacy(tmp_path / "p", "pw", state)
    with pytest.raises(WrongPassphrase):
        Profile(tmp_path / "p", "nope").load()
    assert (tmp_path / "p" / "profile.enc").exists()  # untouched by a wrong passphrase
    assert not (tmp_path / "p" / "profile.db").exists()

    profile = Profile(tmp_path / "p", "pw")
    loaded = profile.load()
    assert loaded == {"phone": PHONE, "contacts": {"a": {"phone": PHONE}}}
    got = profile.messages(PHONE)
    assert len(got) == 12_001  # no cap: more than the old 10,000
    assert [m.text for m in got[:2]] == ["old 0", "old 1"] and got[-1].status == "sent"
    assert profile.seen("frame-1") and not profile.seen("frame-3")
    assert not (tmp_path / "p" / "profile.enc").exists()
    assert not (tmp_path / "p" / "profile.meta").exists()
    profile.close()
    assert b"old 1" not in files(tmp_path / "p")


def test_chat_list_unread_counts_read_and_status(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p", "pw")
    profile.create({})
    profile.load()
    carol = "+14155550999"
    profile.add_message(message(1), unread=True)
    profile.add_message(message(2), unread=True)
    mine = message(3, chat=carol, text="to carol", outgoing=True)
    mine.status_code = SENT
    profile.add_message(mine, unread=False)
    profile.save({})
    chats = profile.chats()
    assert [c.chat for c in chats] == [carol, PHONE]
    assert [c.unread for c in chats] == [0, 2] and chats[0].last == "to carol"
    assert [m.id for m in profile.mark_read(PHONE)] == ["m-1", "m-2"]
    profile.save({})
    assert profile.chats()[1].unread == 0 and profile.mark_read(PHONE) == []
    # status moves forward only, only on outgoing messages of that chat
    assert not profile.set_status("m-3", PHONE, READ)  # the wrong chat
    assert profile.set_status("m-3", carol, READ)
    assert not profile.set_status("m-3", carol, DELIVERED)
    assert not profile.set_status("m-1", PHONE, READ)  # a received message
    profile.save({})
    assert profile.find_message("m-3") is not None
    assert profile.find_message("m-3").status == "read"  # type: ignore[union-attr]


def test_search_uses_the_blind_index_and_confirms_the_text(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p", "pw")
    profile.create({})
    profile.load()
    profile.add_message(message(1, text="the zebra crossed the road"), unread=False)
    profile.add_message(message(2, text="Road works, no zebra today"), unread=False)
    profile.add_message(message(3, text="nothing here"), unread=False)
    profile.save({})
    assert [m.id for m in profile.search("zebra")] == ["m-2", "m-1"]
    assert [m.id for m in profile.search("ZEBRA road")] == ["m-2", "m-1"]
    assert [m.id for m in profile.search("zebra crossed")] == ["m-1"]
    assert profile.search("giraffe") == [] and profile.search("!!") == []


def test_an_uncommitted_operation_leaves_nothing(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p", "pw")
    profile.create({"n": 1})
    profile.load()
    profile.add_message(message(1), unread=True)
    profile.mark_seen("frame-1")
    profile.close()  # a crash before the commit
    again = Profile(tmp_path / "p", "pw")
    assert again.load() == {"n": 1}
    assert again.messages(PHONE) == [] and not again.seen("frame-1")


def test_another_writer_is_noticed(tmp_path: Path) -> None:
    first, second = Profile(tmp_path / "p", "pw"), Profile(tmp_path / "p", "pw")
    first.create({"n": 1})
    first.load()
    assert first.unchanged()
    second.load()
    second.save({"n": 2})
    assert not first.unchanged()
    assert first.load() == {"n": 2} and first.unchanged()


def test_a_tampered_row_is_refused(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p", "pw")
    profile.create({})
    profile.load()
    profile.add_message(message(1, text="one"), unread=False)
    profile.add_message(message(2, chat="+14155550777", text="two"), unread=False)
    profile.save({})
    profile.close()
    db = sqlite3.connect(tmp_path / "p" / "profile.db")
    bodies = [r[0] for r in db.execute("SELECT body FROM messages ORDER BY seq")]
    db.execute("UPDATE messages SET body = ? WHERE seq = 1", (bodies[1],))  # swap rows
    db.commit()
    db.close()
    with pytest.raises(ProfileError):
        Profile(tmp_path / "p", "pw").messages(PHONE)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=8))
def test_messages_round_trip(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    directory = tmp_path_factory.mktemp("p") / "p"
    profile = Profile(directory, "pw")
    profile.create({})
    profile.load()
    for i, text in enumerate(texts):
        profile.add_message(message(i, text=text or "-"), unread=True)
    profile.save({})
    got = profile.messages(PHONE)
    assert [m.text for m in got] == [t or "-" for t in texts]
    assert [m.text for m in profile.messages(PHONE, limit=2)] == [t or "-" for t in texts][-2:]
    assert profile.chats()[0].unread == len(texts)
    profile.close()
