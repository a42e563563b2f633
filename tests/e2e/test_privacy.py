"""Never a plaintext on the server: canaries planted in a session of traffic must not
appear anywhere under the data directory, in the database, or in the server's logs."""

from __future__ import annotations

import base64
import secrets
import subprocess

from parley.client.api import b64e
from parley.protocol import attachments
from parley.protocol.wire import AttachmentPointer

from .conftest import register
from .server import POSTGRES_ADMIN_URL, ServerProcess


def _stored_bytes(server: ServerProcess) -> bytes:
    """Everything the server wrote: every file under the data dir, its logs, and for
    PostgreSQL a full dump of its database."""
    blobs = [p.read_bytes() for p in server.data_dir.rglob("*") if p.is_file()]
    blobs += [p.read_bytes() for p in server.log_files]
    if server.database_url.startswith("postgresql"):
        name = server.database_url.rsplit("/", 1)[1]
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        blobs.append(
            subprocess.run(["pg_dump", f"{base}/{name}"], capture_output=True, check=True).stdout
        )
    return b"\n".join(blobs)


async def test_no_plaintext_code_key_or_credential_reaches_the_server(
    server: ServerProcess,
) -> None:
    alice, bob = await register(server), await register(server)
    text_canary = "CANARY-TEXT-" + secrets.token_hex(8)
    file_canary = ("CANARY-FILE-" + secrets.token_hex(8)).encode()
    group_canary = "CANARY-GROUP-" + secrets.token_hex(8)

    enc = attachments.encrypt(file_canary * 10, secrets.token_bytes)
    up = await alice.api.call("POST", "/v1/attachments", content=enc.blob)
    pointer = AttachmentPointer(
        up["id"], enc.key, enc.digest, len(enc.blob), "text/plain", "canary.txt"
    )
    await alice.send_content(bob.account_id, alice.content(text_canary, (pointer,)))
    gid = await alice.create_group([bob.account_id])
    await alice.send_group(gid, group_canary)
    async with bob.api.websocket() as ws:
        got = await bob.receive(ws)
    texts = [m.content.text for m in got]
    assert text_canary in texts and group_canary in texts  # the traffic really happened
    received = next(m for m in got if m.content.text == text_canary)
    blob = await bob.api.call("GET", f"/v1/attachments/{received.content.attachments[0].id}")
    assert (
        attachments.decrypt(
            received.content.attachments[0].key, received.content.attachments[0].digest, blob
        )
        == file_canary * 10
    )

    phone = (await alice.api.call("GET", "/v1/accounts/me"))["phone"]
    codes = [line.split()[1] for line in server.sms_file.read_text().splitlines()]
    tokens = [m.api.credential.split(".", 2)[2] for m in (alice, bob) if m.api.credential]
    server.stop()  # flush everything to disk first
    stored = _stored_bytes(server)
    forbidden = {
        "message text": text_canary.encode(),
        "group text": group_canary.encode(),
        "attachment plaintext": file_canary,
        "attachment key": enc.key,
        "attachment key (base64)": b64e(enc.key).encode(),
        **{f"registration code {c}": f"code is {c}".encode() for c in codes},
        **{f"registration code {c} (bare)": f" {c}\n".encode() for c in codes},
        **{f"credential {i}": t.encode() for i, t in enumerate(tokens)},
        **{
            f"credential {i} (decoded)": base64.urlsafe_b64decode(t + "==")
            for i, t in enumerate(tokens)
        },
    }
    leaks = [name for name, needle in forbidden.items() if needle in stored]
    assert not leaks, f"found on the server: {leaks}"
    # A positive control: what the server does keep (the phone number) is found,
    # so the scan really reads the stored data.
    assert phone.encode() in stored
