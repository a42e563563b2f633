"""Protocol benchmark: Parley's core side by side with vodozemac (Olm/Megolm).

All figures are measured in one process, 200-byte messages, in interleaved
rounds (Parley round 1, vodozemac round 1, Parley round 2, ...; at least 5,
``ROUNDS``) so that a slow patch of the machine hits both sides alike:
- ``one_direction_per_s``: encrypt + decrypt pairs per second, one sender, in order;
- ``ping_pong_per_s``: round trips per second (A->B then B->A), so every
  message carries a new ratchet key and costs a DH ratchet step;
- ``group_per_s``: one group message encrypted, signed, verified and
  decrypted by one receiver, per second;
- ``pqxdh_setups_per_s`` (Parley only; Olm has no PQ set-up): initiate from a
  fresh bundle (two signature checks, four X25519, ML-KEM-768 encapsulation),
  encrypt the first message, and accept it on the other side.
Parley's messages include franking (a fresh key, a commitment and its check),
which Olm/Megolm do not do. ``floor_us`` gives the primitives' cost on this
machine, which bounds what any Python implementation on pyca can reach.

Keys: ``parley`` and ``vodozemac`` hold each metric's median over the rounds;
``ratio`` the median of the per-round ratios (parley / vodozemac),
``ratio_min`` and ``ratio_max`` their range; ``rounds`` the per-round figures
(``{"parley", "vodozemac", "ratio"}`` each); ``rounds_run`` their number.
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

from parley.crypto.primitives import DHKeyPair, SigningKey, VerifyKey
from parley.protocol import session as sessions
from parley.protocol.keys import (
    IdentityKeyPair,
    KemPreKey,
    OneTimePreKey,
    SignedPreKey,
    make_bundle,
)
from parley.protocol.sender_keys import GroupSession
from parley.protocol.wire import Content, PreKeyMessage

TEXT = "x" * 200
PLAIN = TEXT.encode()
rng = secrets.token_bytes
ROUNDS = 5
COMPARED = ("one_direction", "ping_pong", "group")


def _rate(fn: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - start)


def _content() -> Content:
    return Content(rng(32), 1_790_000_000_000, TEXT)


def _parley_pair() -> tuple[sessions.Session, sessions.Session]:
    alice, bob = IdentityKeyPair.generate(rng), IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(bob, 1, rng)
    kem = KemPreKey.generate(bob, 2, rng, last_resort=True)
    a = sessions.initiate(alice, make_bundle(bob.public, spk, kem), rng)
    first = a.encrypt(_content(), "alice", "dm")
    assert isinstance(first, PreKeyMessage)
    b, _ = sessions.accept(bob, first, spk.key, None, kem.key, "alice", "dm", rng)
    a.decrypt(b.encrypt(_content(), "bob", "dm"), "bob", "dm", rng)
    return a, b


def parley_one_direction(count: int) -> float:
    a, b = _parley_pair()

    def step() -> None:
        b.decrypt(a.encrypt(_content(), "alice", "dm"), "alice", "dm", rng)

    return _rate(step, count)


def parley_ping_pong(count: int) -> float:
    a, b = _parley_pair()

    def step() -> None:
        b.decrypt(a.encrypt(_content(), "alice", "dm"), "alice", "dm", rng)
        a.decrypt(b.encrypt(_content(), "bob", "dm"), "bob", "dm", rng)

    return _rate(step, count)


def parley_group(count: int) -> float:
    gid = b"bench-group-0001"
    sender, receiver = GroupSession(gid, "a", rng), GroupSession(gid, "b", rng)
    sender.add_members(["b"])
    receiver.add_members(["a"])
    receiver.process_distribution("a", sender.outbound.distribution())

    def step() -> None:
        receiver.decrypt("a", sender.encrypt(_content()))

    return _rate(step, count)


def parley_pqxdh(count: int) -> float:
    alice = IdentityKeyPair.generate(rng)
    bob = IdentityKeyPair.generate(rng)
    spk = SignedPreKey.generate(bob, 1, rng)
    # Fresh one-time keys per set-up, made before timing (as uploaded to a server).
    keys = [
        (OneTimePreKey.generate(10 + i, rng), KemPreKey.generate(bob, 10 + i, rng))
        for i in range(count)
    ]
    bundles = iter([(make_bundle(bob.public, spk, kem, opk), opk, kem) for opk, kem in keys])

    def step() -> None:
        bundle, opk, kem = next(bundles)
        a = sessions.initiate(alice, bundle, rng)
        first = a.encrypt(_content(), "alice", "dm")
        assert isinstance(first, PreKeyMessage)
        sessions.accept(bob, first, spk.key, opk.key, kem.key, "alice", "dm", rng)

    return _rate(step, count)


def vodozemac_rates(count: int) -> dict[str, float] | None:
    try:
        import vodozemac as vz
    except ImportError:
        return None
    a, b = vz.Account(), vz.Account()
    b.generate_one_time_keys(1)
    s = a.create_outbound_session(b.curve25519_key, next(iter(b.one_time_keys.values())))
    first = s.encrypt(PLAIN).to_pre_key()
    assert first is not None
    bs, _ = b.create_inbound_session(a.curve25519_key, first)
    s.decrypt(bs.encrypt(PLAIN))

    def one() -> None:
        bs.decrypt(s.encrypt(PLAIN))

    def pong() -> None:
        bs.decrypt(s.encrypt(PLAIN))
        s.decrypt(bs.encrypt(PLAIN))

    group = vz.GroupSession()
    inbound = vz.InboundGroupSession(group.session_key)

    def grp() -> None:
        inbound.decrypt(group.encrypt(PLAIN))

    return {
        "one_direction_per_s": _rate(one, count),
        "ping_pong_per_s": _rate(pong, count // 4),
        "group_per_s": _rate(grp, count),
    }


def floor_us(count: int) -> dict[str, float]:
    dh, peer = DHKeyPair.generate(rng), DHKeyPair.generate(rng).public
    sk = SigningKey.generate(rng)
    vk, sig = VerifyKey(sk.public), sk.sign(PLAIN)
    n = max(count // 4, 100)
    return {
        "x25519_exchange": 1e6 / _rate(lambda: dh.exchange(peer), n),
        "x25519_keygen": 1e6 / _rate(lambda: DHKeyPair.generate(rng), n),
        "ed25519_sign": 1e6 / _rate(lambda: sk.sign(PLAIN), n),
        "ed25519_verify": 1e6 / _rate(lambda: vk.verify(sig, PLAIN), n),
    }


def parley_rates(n: int) -> dict[str, float]:
    return {
        "one_direction_per_s": parley_one_direction(n),
        "ping_pong_per_s": parley_ping_pong(n // 4),
        "group_per_s": parley_group(n // 2),
        "pqxdh_setups_per_s": parley_pqxdh(n // 10),
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(*, quick: bool = False, rounds: int = ROUNDS) -> dict[str, Any]:
    rounds = max(rounds, ROUNDS)
    n = 1_000 if quick else 10_000
    per_round: list[dict[str, Any]] = []
    for _ in range(rounds):
        parley = parley_rates(n)
        vz = vodozemac_rates(n)
        ratio = (
            None if vz is None else {k: parley[f"{k}_per_s"] / vz[f"{k}_per_s"] for k in COMPARED}
        )
        per_round.append({"parley": parley, "vodozemac": vz, "ratio": ratio})
    parley_median = {
        k: _median([r["parley"][k] for r in per_round]) for k in per_round[0]["parley"]
    }
    have_vz = per_round[0]["vodozemac"] is not None
    vz_median = (
        {k: _median([r["vodozemac"][k] for r in per_round]) for k in per_round[0]["vodozemac"]}
        if have_vz
        else None
    )
    ratios = {k: [r["ratio"][k] for r in per_round] for k in COMPARED} if have_vz else None
    return {
        "parley": {k: round(v, 1) for k, v in parley_median.items()},
        "vodozemac": None if vz_median is None else {k: round(v, 1) for k, v in vz_median.items()},
        "ratio": None if ratios is None else {k: round(_median(v), 3) for k, v in ratios.items()},
        "ratio_min": None if ratios is None else {k: round(min(v), 3) for k, v in ratios.items()},
        "ratio_max": None if ratios is None else {k: round(max(v), 3) for k, v in ratios.items()},
        "rounds_run": rounds,
        "rounds": [
            {
                side: None
                if r[side] is None
                else {k: round(v, 3 if side == "ratio" else 1) for k, v in r[side].items()}
                for side in ("parley", "vodozemac", "ratio")
            }
            for r in per_round
        ],
        "iterations_per_round": n,
        "targets": {
            "one_direction": 0.5,
            "ping_pong": 0.8,
            "group": 0.8,
            "pqxdh_setups_per_s": 2000,
        },
        "floor_us": {k: round(v, 2) for k, v in floor_us(n).items()},
        "message_bytes": len(PLAIN),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
