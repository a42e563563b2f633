"""The load generator for ``python -m parley.bench server`` (runs in its own process).

It registers devices, holds one push websocket per device, and drives 1:1 and
group traffic. Envelopes are well-formed Parley ratchet / sender-key
envelopes whose 200-byte ciphertext carries the send time, so receivers can
measure send-to-receive latency without decrypting: the protocol's own cost
is measured by ``bench protocol``; this measures the relay. A message counts
as delivered when the receiver has it and has acknowledged it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from parley.client.api import keys_json
from parley.protocol.keys import IdentityKeyPair, KemPreKey, SignedPreKey
from parley.protocol.wire import RatchetMessage, SenderKeyMessage

_STAMP = struct.Struct(">dQ")


@dataclass
class Dev:
    account_id: str
    credential: str
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    ws: Any = None


def _payload(seq: int) -> bytes:
    return _STAMP.pack(time.perf_counter(), seq) + secrets.token_bytes(200 - _STAMP.size)


def direct_envelope(seq: int) -> str:
    msg = RatchetMessage(secrets.token_bytes(32), 0, seq, secrets.token_bytes(32), _payload(seq))
    return base64.b64encode(msg.to_bytes()).decode()


def group_envelope(seq: int) -> str:
    msg = SenderKeyMessage(
        secrets.token_bytes(16),
        seq,
        secrets.token_bytes(32),
        _payload(seq),
        secrets.token_bytes(64),
    )
    return base64.b64encode(msg.to_bytes()).decode()


def _sent_at(frame: dict[str, Any]) -> float:
    raw = base64.b64decode(frame["envelope"])
    # ciphertext sits after the fixed prefix and its u32 length
    offset = 2 + 32 + 4 + 4 + 32 + 4 if raw[1] == 1 else 2 + 16 + 4 + 32 + 4
    return float(_STAMP.unpack_from(raw, offset)[0])


class Sms:
    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.codes = path, 0, {}

    async def code(self, phone: str) -> str:
        for _ in range(400):
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(self.offset)
                    for line in f:
                        p, c = line.split()
                        self.codes[p] = c
                    self.offset = f.tell()
            if phone in self.codes:
                return str(self.codes.pop(phone))
            await asyncio.sleep(0.01)
        raise RuntimeError(f"no code for {phone}")


async def register(http: httpx.AsyncClient, sms: Sms, n: int) -> Dev:
    phone = f"+1415{3000000 + n:07d}"
    identity = IdentityKeyPair.generate(secrets.token_bytes)
    keys = keys_json(
        SignedPreKey.generate(identity, 1, secrets.token_bytes),
        KemPreKey.generate(identity, 2, secrets.token_bytes, last_resort=True),
    )
    (await http.post("/v1/registration/code", json={"phone": phone})).raise_for_status()
    body = {
        "phone": phone,
        "code": await sms.code(phone),
        "identity_key": base64.b64encode(identity.public.to_bytes()).decode(),
        "keys": keys,
    }
    r = await http.post("/v1/registration/verify", json=body)
    r.raise_for_status()
    return Dev(r.json()["account_id"], r.json()["credential"])


async def connect(url: str, dev: Dev) -> None:
    dev.ws = await websockets.connect(
        url.replace("http", "ws") + "/v1/websocket",
        additional_headers={"authorization": f"Bearer {dev.credential}"},
        max_queue=None,
    )
    while json.loads(await dev.ws.recv())["type"] != "queue_empty":
        pass


async def receive_loop(dev: Dev) -> None:
    try:
        async for raw in dev.ws:
            frame = json.loads(raw)
            if frame["type"] != "message":
                continue
            dev.latencies.append(time.perf_counter() - _sent_at(frame))
            dev.received += 1
            await dev.ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
    except websockets.ConnectionClosed:
        pass


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def one_to_one(
    http: httpx.AsyncClient,
    pairs: list[tuple[Dev, Dev]],
    per_sender: int,
    in_flight: int,
    rate: float | None,
) -> dict[str, float]:
    receivers = [r for _, r in pairs]
    for r in receivers:
        r.latencies.clear()
        r.received = 0
    expected = len(pairs) * per_sender
    start = time.perf_counter()
    interval = len(pairs) / rate if rate else 0.0

    async def sender(s: Dev, r: Dev, index: int) -> None:
        headers = {"authorization": f"Bearer {s.credential}"}
        sem = asyncio.Semaphore(in_flight)

        async def one(seq: int) -> None:
            async with sem:
                body = {
                    "client_id": f"{index}-{seq}",
                    "messages": [{"device_id": 1, "envelope": direct_envelope(seq)}],
                }
                resp = await http.put(f"/v1/messages/{r.account_id}", json=body, headers=headers)
                resp.raise_for_status()

        tasks = []
        for seq in range(per_sender):
            if interval:
                await asyncio.sleep(
                    max(
                        0.0,
                        start
                        + seq * interval
                        + index * interval / len(pairs)
                        - time.perf_counter(),
                    )
                )
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)

    await asyncio.gather(*[sender(s, r, i) for i, (s, r) in enumerate(pairs)])
    while sum(r.received for r in receivers) < expected and time.perf_counter() - start < 120:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    lat = [x for r in receivers for x in r.latencies]
    return {
        "delivered_per_s": round(sum(r.received for r in receivers) / elapsed, 1),
        "p50_ms": round(_pct(lat, 0.5), 2),
        "p99_ms": round(_pct(lat, 0.99), 2),
        "messages": expected,
        "seconds": round(elapsed, 2),
    }


async def group(http: httpx.AsyncClient, members: list[Dev], messages: int) -> dict[str, float]:
    owner = members[0]
    headers = {"authorization": f"Bearer {owner.credential}"}
    r = await http.post(
        "/v1/groups", json={"members": [m.account_id for m in members[1:]]}, headers=headers
    )
    r.raise_for_status()
    gid = r.json()["group_id"]
    receivers = members[1:]
    for m in receivers:
        m.latencies.clear()
        m.received = 0
    expected = messages * len(receivers)
    start = time.perf_counter()
    for seq in range(messages):
        resp = await http.put(
            f"/v1/groups/{gid}/messages",
            json={"client_id": f"g{seq}", "envelope": group_envelope(seq)},
            headers=headers,
        )
        resp.raise_for_status()
    while sum(m.received for m in receivers) < expected and time.perf_counter() - start < 120:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    lat = [x for m in receivers for x in m.latencies]
    return {
        "delivered_per_s": round(sum(m.received for m in receivers) / elapsed, 1),
        "p50_ms": round(_pct(lat, 0.5), 2),
        "p99_ms": round(_pct(lat, 0.99), 2),
        "messages": messages,
        "recipients": len(receivers),
        "seconds": round(elapsed, 2),
    }


async def main(
    url: str, sms_path: str, connections: int, pairs: int, per_sender: int, group_messages: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        sms = Sms(Path(sms_path))
        devices: list[Dev] = []
        for batch in range(0, connections, 50):
            devices += await asyncio.gather(
                *[register(http, sms, n) for n in range(batch, min(connections, batch + 50))]
            )
        for batch in range(0, connections, 100):
            await asyncio.gather(*[connect(url, d) for d in devices[batch : batch + 100]])
        readers = [asyncio.create_task(receive_loop(d)) for d in devices]
        held = sum(1 for d in devices if d.ws is not None)
        sys.stderr.write(f"registered and connected {held} devices\n")
        prs = [(devices[2 * i], devices[2 * i + 1]) for i in range(pairs)]
        results: dict[str, Any] = {"connections_held": held}
        results["one_to_one"] = await one_to_one(http, prs, per_sender, 16, None)
        results["one_to_one_at_1000_per_s"] = await one_to_one(
            http, prs, max(1, 1000 * 5 // pairs), 16, 1000.0
        )
        results["group_100"] = await group(http, devices[:101], group_messages)
        for d in devices:
            await d.ws.close()
        for t in readers:
            t.cancel()
        return results


if __name__ == "__main__":
    url, sms_path, connections, pairs, per_sender, group_messages = (
        sys.argv[1],
        sys.argv[2],
        *map(int, sys.argv[3:7]),
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.stdout.write(
        json.dumps(asyncio.run(main(url, sms_path, connections, pairs, per_sender, group_messages)))
        + "\n"
    )
