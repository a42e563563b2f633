"""The Double Ratchet (Signal, "The Double Ratchet Algorithm", revision 4).

Theory of operation. Each side holds a root key ``rk``, its own ratchet key
pair ``dhs``, the peer's ratchet public key ``dhr``, and a sending and a
receiving chain key. Every message advances a chain with KDF_CK (§5.2:
``mk = HMAC(ck, 0x01)``, ``ck' = HMAC(ck, 0x02)``). A message carrying a new
peer ratchet key triggers a DH ratchet step (§3.5): two KDF_RK steps
(``HKDF(salt=rk, ikm=DH(...))``) give a new receiving chain, a fresh key pair,
and a new sending chain.

ENCRYPT (§3.1 allows any AEAD): AES-256-GCM with key and nonce expanded from
the single-use message key; the associated data is the session AD (from
PQXDH) followed by the envelope prefix (header and franking commitment), so
the header and commitment are authenticated too.

Bounds: at most ``MAX_SKIP`` message keys are skipped for one message, and at
most ``MAX_STORED_SKIPPED`` are kept overall (oldest evicted first). Replays
are refused with ``DuplicateMessage``: a used key is deleted, and a message
behind its chain's counter or on a recently retired chain is a duplicate.

Commit-on-success (as Syndace's python-doubleratchet does): ``decrypt`` builds
every new value in locals and writes the state only after the AEAD tag
verifies, so a forged or corrupted message leaves the state exactly as it was.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from parley.crypto.primitives import (
    DHKeyPair,
    aead_decrypt,
    aead_encrypt,
    hkdf,
    hkdf_expand,
    hmac_sha256,
)
from parley.crypto.random import Random
from parley.errors import (
    DecryptionError,
    DuplicateMessage,
    LocalProtocolError,
    MalformedMessage,
    TooManySkipped,
)
from parley.protocol.codec import Reader, Writer
from parley.protocol.wire import RatchetMessage

MAX_SKIP = 1000
MAX_STORED_SKIPPED = 2000
MAX_RETIRED_CHAINS = 32

_ROOT_INFO = b"parley/ratchet/v1/root"
_MESSAGE_INFO = b"parley/ratchet/v1/message"
_STATE_VERSION = 1

T = TypeVar("T")


def _identity(plaintext: bytes) -> bytes:
    return plaintext


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf(dh_out, rk, _ROOT_INFO, 64)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """Return ``(next_chain_key, message_key)``."""
    return hmac_sha256(ck, b"\x02"), hmac_sha256(ck, b"\x01")


def message_cipher_key(mk: bytes) -> tuple[bytes, bytes]:
    """Expand a message key into an AES-256-GCM key and a 96-bit nonce."""
    out = hkdf_expand(mk, _MESSAGE_INFO, 44)
    return out[:32], out[32:]


@dataclass(slots=True)
class RatchetState:
    """One side of a Double Ratchet session. Mutated only by ``encrypt``/``decrypt``."""

    ad: bytes
    rk: bytes
    dhs: DHKeyPair
    dhr: bytes | None
    cks: bytes | None
    ckr: bytes | None
    ns: int = 0
    nr: int = 0
    pn: int = 0
    skipped: OrderedDict[tuple[bytes, int], bytes] = field(default_factory=OrderedDict)
    retired: list[bytes] = field(default_factory=list)

    # -- construction (§3.3) ------------------------------------------------------

    @classmethod
    def initiator(
        cls, shared_key: bytes, ad: bytes, peer_ratchet_key: bytes, rng: Random
    ) -> RatchetState:
        dhs = DHKeyPair.generate(rng)
        rk, cks = kdf_rk(shared_key, dhs.exchange(peer_ratchet_key))
        return cls(ad=ad, rk=rk, dhs=dhs, dhr=peer_ratchet_key, cks=cks, ckr=None)

    @classmethod
    def responder(cls, shared_key: bytes, ad: bytes, own_ratchet_key: DHKeyPair) -> RatchetState:
        return cls(ad=ad, rk=shared_key, dhs=own_ratchet_key, dhr=None, cks=None, ckr=None)

    # -- sending -------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, commitment: bytes) -> RatchetMessage:
        if self.cks is None:
            raise LocalProtocolError("no sending chain yet: wait for the peer's first message")
        self.cks, mk = kdf_ck(self.cks)
        header = RatchetMessage(self.dhs.public, self.pn, self.ns, commitment, b"")
        self.ns += 1
        key, nonce = message_cipher_key(mk)
        ciphertext = aead_encrypt(key, nonce, plaintext, self.ad + header.prefix())
        return RatchetMessage(header.dh, header.pn, header.n, commitment, ciphertext)

    # -- receiving -------------------------------------------------------------------------

    def decrypt(self, msg: RatchetMessage, rng: Random) -> bytes:
        """Decrypt and advance; on any error the state is unchanged."""
        return self.decrypt_with(msg, rng, _identity)

    def decrypt_with(self, msg: RatchetMessage, rng: Random, check: Callable[[bytes], T]) -> T:
        """Decrypt, run ``check`` on the plaintext, and only then advance the state.

        ``check`` parses and verifies what the AEAD cannot (the franking
        commitment); if it raises, the state is unchanged, as for a bad tag.
        """
        ad = self.ad + msg.prefix()
        slot = (msg.dh, msg.n)
        stored = self.skipped.get(slot)
        if stored is not None:
            result = check(_open(stored, msg.ciphertext, ad))
            del self.skipped[slot]
            return result

        if msg.dh == self.dhr and self.ckr is not None:
            if msg.n < self.nr:
                raise DuplicateMessage("message key already used")
            chain_skipped, ckr = _skip(self.ckr, msg.dh, self.nr, msg.n)
            ckr, mk = kdf_ck(ckr)
            result = check(_open(mk, msg.ciphertext, ad))
            self.ckr, self.nr = ckr, msg.n + 1
            self._store_skipped(chain_skipped)
            return result

        if msg.dh in self.retired:
            raise DuplicateMessage("message from a finished chain, already used or dropped")

        # A new peer ratchet key: a DH ratchet step (§3.5), computed in locals.
        old_skipped: list[tuple[tuple[bytes, int], bytes]] = []
        if self.ckr is not None and self.dhr is not None:
            old_skipped, _ = _skip(self.ckr, self.dhr, self.nr, msg.pn)
        try:
            rk, ckr = kdf_rk(self.rk, self.dhs.exchange(msg.dh))
        except MalformedMessage as exc:
            raise DecryptionError("invalid ratchet key") from exc
        dhs = DHKeyPair.generate(rng)
        rk, cks = kdf_rk(rk, dhs.exchange(msg.dh))
        new_skipped, ckr = _skip(ckr, msg.dh, 0, msg.n)
        ckr, mk = kdf_ck(ckr)
        result = check(_open(mk, msg.ciphertext, ad))

        if self.dhr is not None:
            self.retired.append(self.dhr)
            del self.retired[:-MAX_RETIRED_CHAINS]
        self.pn, self.ns, self.nr = self.ns, 0, msg.n + 1
        self.dhr, self.dhs, self.rk, self.cks, self.ckr = msg.dh, dhs, rk, cks, ckr
        self._store_skipped(old_skipped + new_skipped)
        return result

    def _store_skipped(self, entries: list[tuple[tuple[bytes, int], bytes]]) -> None:
        for slot, mk in entries:
            self.skipped[slot] = mk
        while len(self.skipped) > MAX_STORED_SKIPPED:
            self.skipped.popitem(last=False)

    # -- persistence ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize (secret material: the caller encrypts it at rest)."""
        w = Writer().u8(_STATE_VERSION).var(self.ad, 256).fixed(self.rk, 32)
        w.fixed(self.dhs.private_bytes(), 32)
        for optional in (self.dhr, self.cks, self.ckr):
            if optional is None:
                w.u8(0)
            else:
                w.u8(1).fixed(optional, 32)
        w.u32(self.ns).u32(self.nr).u32(self.pn).u32(len(self.skipped))
        for (dh, n), mk in self.skipped.items():
            w.fixed(dh, 32).u32(n).fixed(mk, 32)
        w.u32(len(self.retired))
        for dh in self.retired:
            w.fixed(dh, 32)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        r = Reader(data)
        if r.u8() != _STATE_VERSION:
            raise MalformedMessage("unknown ratchet state version")
        ad, rk, dhs = r.var(256), r.fixed(32), DHKeyPair.from_private_bytes(r.fixed(32))
        dhr, cks, ckr = (r.fixed(32) if r.bool() else None for _ in range(3))
        ns, nr, pn = r.u32(), r.u32(), r.u32()
        count = r.u32()
        if count > MAX_STORED_SKIPPED:
            raise MalformedMessage("too many skipped keys in stored state")
        skipped: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        for _ in range(count):
            dh, n = r.fixed(32), r.u32()
            skipped[(dh, n)] = r.fixed(32)
        retired_count = r.u32()
        if retired_count > MAX_RETIRED_CHAINS:
            raise MalformedMessage("too many retired chains in stored state")
        retired = [r.fixed(32) for _ in range(retired_count)]
        r.end()
        return cls(ad, rk, dhs, dhr, cks, ckr, ns, nr, pn, skipped, retired)


def _skip(
    ck: bytes, dh: bytes, start: int, until: int
) -> tuple[list[tuple[tuple[bytes, int], bytes]], bytes]:
    """Message keys ``start..until-1`` of a chain, bounded by ``MAX_SKIP`` (§3.5)."""
    if until - start > MAX_SKIP:
        raise TooManySkipped(f"{until - start} skipped messages exceed MAX_SKIP={MAX_SKIP}")
    keys: list[tuple[tuple[bytes, int], bytes]] = []
    for n in range(start, until):
        ck, mk = kdf_ck(ck)
        keys.append(((dh, n), mk))
    return keys, ck


def _open(mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    key, nonce = message_cipher_key(mk)
    return aead_decrypt(key, nonce, ciphertext, ad)
