"""Delivery and read receipts: control messages inside the end-to-end encryption.

A receipt is ``{"receipt": {"type": "delivered" | "read", "ids": [...]}}`` in
the control field of an ordinary encrypted message to the original sender's
account, so the server relays ciphertext it cannot tell from a message.

Rules, with a hostile sender or server in mind:
- a receipt moves the state of one of *our outgoing* messages, and only in a
  chat its sender belongs to (the 1:1 chat with that account, or a group whose
  signed roster lists it): nobody else can mark our messages read;
- state only moves forward (sent, delivered, read);
- a group message shows the furthest state any member reported;
- delivered receipts are sent once per received batch and sender; read receipts
  when a chat is marked read, unless the user turned them off
  (``parley settings --read-receipts off``); receipts are never sent for our own
  messages, group changes, or receipts;
- sending one is best effort: a failure never fails the receive.
"""

from __future__ import annotations

from typing import Any

from parley.client.records import Message

KINDS = {"delivered": 2, "read": 3}
STATUS = {v: k for k, v in KINDS.items()}
MAX_IDS = 500


def parse(control: dict[str, Any]) -> tuple[int, list[str]] | None:
    """(status, ids) of a well-formed receipt, else None."""
    receipt = control.get("receipt")
    if not isinstance(receipt, dict):
        return None
    status = KINDS.get(str(receipt.get("type")))
    ids = receipt.get("ids")
    if status is None or not isinstance(ids, list) or len(ids) > MAX_IDS:
        return None
    return status, [i for i in ids if isinstance(i, str) and 0 < len(i) <= 64]


def body(kind: str, ids: list[str]) -> dict[str, Any]:
    return {"receipt": {"type": kind, "ids": ids[:MAX_IDS]}}


def owed_to(message: Message) -> str | None:
    """The account a receipt for this received message goes to, if any."""
    if message.outgoing or message.event is not None or message.franking is None:
        return None
    account = message.franking.get("sender_account")
    return account if isinstance(account, str) else None
