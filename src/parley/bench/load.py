"""The load generator for ``python -m parley.bench server`` (runs in its own process).

It registers devices, holds one push websocket per device, and drives 1:1 and
group traffic. Envelopes are well-formed Parley ratchet / sender-key
envelopes whose 200-byte ciphertext carries the send time, so receivers can
measure send-to-receive latency without decrypting: the protocol's own cost
is measured by ``bench protocol``; this measures the relay. A message counts
as delivered when the receiver has it and has acknowledged it. It uses
aiohttp, whose client costs far less CPU than httpx: client and server share
this machine's two cores.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import secrets
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from parley.client.api import keys_json
from parley.protocol.keys import IdentityKeyPair, KemPreKey, SignedPreKey
from parley.protocol.wire import RatchetMessage, SenderKeyMessage

_STAMP = struct.Struct(">dQ")
_RATCHET_CT = 2 + 32 + 4 + 4 + 32 + 4
_SENDER_KEY_CT = 2 + 16 + 4 + 32 + 4


class Http:
    def __init__(self, url: str) -> None:
        self.session = aiohttp.ClientSession(
            base_url=url,
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def call(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> Any:
        async with self.session.request(method, path, json=body, headers=headers) as r:
            if r.status >= 400:
                raise RuntimeError(f"{method} {path}: {r.status} {await r.text()}")
            return await r.json() if r.content_type == "application/json" else None


@dataclass
class Dev:
    account_id: str
    credential: str
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    ws: Any = None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_request: int = 0

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send over the push socket and wait for the matching response frame."""
        self.next_request += 1
        frame["request_id"] = self.next_request
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_request] = future
        await self.ws.send_str(json.dumps(frame))
        answer = await future
        if answer["status"] != 200:
            raise RuntimeError(f"send refused: {answer}")
        return answer

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"}


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
    return float(_STAMP.unpack_from(raw, _RATCHET_CT if raw[1] == 1 else _SENDER_KEY_CT)[0])


class Sms:
    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.codes: dict[str, str] = {}

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
                return self.codes.pop(phone)
            await asyncio.sleep(0.01)
        raise RuntimeError(f"no code for {phone}")


async def register(http: Http, sms: Sms, n: int) -> Dev:
    phone = f"+1415{3000000 + n:07d}"
    identity = IdentityKeyPair.generate(secrets.token_bytes)
    keys = keys_json(
        SignedPreKey.generate(identity, 1, secrets.token_bytes),
        KemPreKey.generate(identity, 2, secrets.token_bytes, last_resort=True),
    )
    await http.call("POST", "/v1/registration/code", {"phone": phone})
    body = {
        "phone": phone,
        "code": await sms.code(phone),
        "identity_key": base64.b64encode(identity.public.to_bytes()).decode(),
        "keys": keys,
    }
    r = await http.call("POST", "/v1/registration/verify", body)
    return Dev(r["account_id"], r["credential"])


async def connect(http: Http, dev: Dev) -> None:
    dev.ws = await http.session.ws_connect(
        "/v1/websocket", headers=dev.auth, compress=0, max_msg_size=2**22
    )
    while json.loads(await dev.ws.receive_str())["type"] != "queue_empty":
        pass


async def receive_loop(dev: Dev) -> None:
    async for msg in dev.ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        frame = json.loads(msg.data)
        if frame["type"] == "response":
            dev.pending.pop(frame["request_id"]).set_result(frame)
            continue
        if frame["type"] != "message":
            continue
        dev.latencies.append(time.perf_counter() - _sent_at(frame))
        dev.received += 1
        await dev.ws.send_str(json.dumps({"type": "ack", "ids": [frame["id"]]}))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _settle(receivers: list[Dev], expected: int, start: float) -> dict[str, float]:
    while sum(r.received for r in receivers) < expected and time.perf_counter() - start < 120:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    lat = [x for r in receivers for x in r.latencies]
    return {
        "delivered_per_s": round(sum(r.received for r in receivers) / elapsed, 1),
        "p50_ms": round(_pct(lat, 0.5), 2),
        "p99_ms": round(_pct(lat, 0.99), 2),
        "delivered": sum(r.received for r in receivers),
        "expected": expected,
        "seconds": round(elapsed, 2),
    }


async def one_to_one(
    pairs: list[tuple[Dev, Dev]], per_sender: int, in_flight: int, rate: float | None
) -> dict[str, float]:
    receivers = [r for _, r in pairs]
    for r in receivers:
        r.latencies.clear()
        r.received = 0
    run_id = secrets.token_hex(4)
    start = time.perf_counter()
    interval = len(pairs) / rate if rate else 0.0

    async def sender(s: Dev, r: Dev, index: int) -> None:
        sem = asyncio.Semaphore(in_flight)

        async def one(seq: int) -> None:
            async with sem:
                await s.request(
                    {
                        "type": "send",
                        "to": r.account_id,
                        "client_id": f"{run_id}-{index}-{seq}",
                        "messages": [{"device_id": 1, "envelope": direct_envelope(seq)}],
                    }
                )

        tasks = []
        for seq in range(per_sender):
            if interval:
                due = start + (seq + index / len(pairs)) * interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)

    await asyncio.gather(*[sender(s, r, i) for i, (s, r) in enumerate(pairs)])
    result = await _settle(receivers, len(pairs) * per_sender, start)
    if rate:
        result["offered_per_s"] = rate
    return result


async def group(http: Http, members: list[Dev], messages: int) -> dict[str, float]:
    owner, receivers = members[0], members[1:]
    gid = (
        await http.call(
            "POST", "/v1/groups", {"members": [m.account_id for m in receivers]}, owner.auth
        )
    )["group_id"]
    for m in receivers:
        m.latencies.clear()
        m.received = 0
    start = time.perf_counter()
    for seq in range(messages):
        await owner.request(
            {
                "type": "send_group",
                "group": gid,
                "client_id": f"g{gid}-{seq}",
                "envelope": group_envelope(seq),
            }
        )
    result = await _settle(receivers, messages * len(receivers), start)
    result["recipients"] = len(receivers)
    return result


async def main(
    url: str, sms_path: str, connections: int, pairs: int, per_sender: int, group_messages: int
) -> dict[str, Any]:
    http = Http(url)
    try:
        sms = Sms(Path(sms_path))
        devices: list[Dev] = []
        for batch in range(0, connections, 50):
            devices += await asyncio.gather(
                *[register(http, sms, n) for n in range(batch, min(connections, batch + 50))]
            )
        for batch in range(0, connections, 100):
            await asyncio.gather(*[connect(http, d) for d in devices[batch : batch + 100]])
        readers = [asyncio.create_task(receive_loop(d)) for d in devices]
        gc.collect()
        gc.freeze()  # the generator's own GC pauses would show up as latency
        await asyncio.sleep(0.5)
        held = sum(1 for d in devices if d.ws is not None and not d.ws.closed)
        sys.stderr.write(f"registered and connected {held} devices\n")
        prs = [(devices[2 * i], devices[2 * i + 1]) for i in range(pairs)]
        results: dict[str, Any] = {"connections_held": held}
        results["one_to_one"] = await one_to_one(prs, per_sender, 8, None)
        results["one_to_one_at_1000_per_s"] = await one_to_one(
            prs, max(1, 5000 // pairs), 8, 1000.0
        )
        results["group_100"] = await group(http, devices[:101], group_messages)
        for d in devices:
            await d.ws.close()
        for t in readers:
            t.cancel()
        return results
    finally:
        await http.session.close()


if __name__ == "__main__":
    url, sms_path = sys.argv[1], sys.argv[2]
    connections, pairs, per_sender, group_messages = map(int, sys.argv[3:7])
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.stdout.write(
        json.dumps(asyncio.run(main(url, sms_path, connections, pairs, per_sender, group_messages)))
        + "\n"
    )
