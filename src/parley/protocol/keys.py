"""Identity keys and prekeys (PQXDH §2.2 and §3.2).

Identity: an Ed25519 key for signatures and an X25519 key for agreement. pyca
has no XEdDSA, and Parley may not hand-roll curve arithmetic, so the identity
is the pair; its public form is 64 bytes (``IdentityPublic``) and that is what
safety numbers and the PQXDH associated data cover.

Prekey signatures are domain-separated and bind the key id, so a signature
over one prekey can never be replayed as a signature over another kind or id.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.crypto.primitives import DHKeyPair, KemKeyPair, SigningKey, VerifyKey
from parley.crypto.random import Random
from parley.errors import InvalidSignature
from parley.protocol.codec import Writer
from parley.protocol.wire import IdentityPublic, PreKeyBundle

_SPK_LABEL = b"parley/pqxdh/v1/signed-prekey"
_KEM_LABEL = b"parley/pqxdh/v1/kem-prekey"


class IdentityKeyPair:
    __slots__ = ("dh", "public", "signing")

    def __init__(self, signing: SigningKey, dh: DHKeyPair) -> None:
        self.signing = signing
        self.dh = dh
        self.public = IdentityPublic(signing=signing.public, dh=dh.public)

    @classmethod
    def generate(cls, rng: Random) -> IdentityKeyPair:
        return cls(SigningKey.generate(rng), DHKeyPair.generate(rng))

    def private_bytes(self) -> bytes:
        return self.signing.private_bytes() + self.dh.private_bytes()

    @classmethod
    def from_private_bytes(cls, data: bytes) -> IdentityKeyPair:
        return cls(
            SigningKey.from_private_bytes(data[:32]), DHKeyPair.from_private_bytes(data[32:])
        )


def _spk_message(key_id: int, public: bytes) -> bytes:
    return Writer().fixed(_SPK_LABEL, len(_SPK_LABEL)).u32(key_id).fixed(public, 32).to_bytes()


def _kem_message(key_id: int, public: bytes, last_resort: bool) -> bytes:
    w = Writer().fixed(_KEM_LABEL, len(_KEM_LABEL)).u32(key_id).bool(last_resort)
    return w.fixed(public, len(public)).to_bytes()


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    id: int
    key: DHKeyPair
    signature: bytes

    @classmethod
    def generate(cls, identity: IdentityKeyPair, key_id: int, rng: Random) -> SignedPreKey:
        key = DHKeyPair.generate(rng)
        return cls(key_id, key, identity.signing.sign(_spk_message(key_id, key.public)))


@dataclass(frozen=True, slots=True)
class OneTimePreKey:
    id: int
    key: DHKeyPair

    @classmethod
    def generate(cls, key_id: int, rng: Random) -> OneTimePreKey:
        return cls(key_id, DHKeyPair.generate(rng))


@dataclass(frozen=True, slots=True)
class KemPreKey:
    """A signed ML-KEM-768 prekey: one-time, or the last-resort one (reused)."""

    id: int
    key: KemKeyPair
    signature: bytes
    last_resort: bool

    @classmethod
    def generate(
        cls, identity: IdentityKeyPair, key_id: int, rng: Random, *, last_resort: bool = False
    ) -> KemPreKey:
        key = KemKeyPair.generate(rng)
        sig = identity.signing.sign(_kem_message(key_id, key.public, last_resort))
        return cls(key_id, key, sig, last_resort)


def make_bundle(
    identity: IdentityPublic,
    signed_prekey: SignedPreKey,
    kem_prekey: KemPreKey,
    one_time_prekey: OneTimePreKey | None = None,
) -> PreKeyBundle:
    """Assemble a bundle from public parts (the server does this per fetch)."""
    return PreKeyBundle(
        identity=identity,
        signed_prekey_id=signed_prekey.id,
        signed_prekey=signed_prekey.key.public,
        signed_prekey_signature=signed_prekey.signature,
        kem_prekey_id=kem_prekey.id,
        kem_prekey=kem_prekey.key.public,
        kem_prekey_signature=kem_prekey.signature,
        kem_last_resort=kem_prekey.last_resort,
        one_time_prekey_id=None if one_time_prekey is None else one_time_prekey.id,
        one_time_prekey=None if one_time_prekey is None else one_time_prekey.key.public,
    )


def verify_signed_prekey(identity: IdentityPublic, key_id: int, public: bytes, sig: bytes) -> None:
    VerifyKey(identity.signing).verify(sig, _spk_message(key_id, public))


def verify_kem_prekey(
    identity: IdentityPublic, key_id: int, public: bytes, last_resort: bool, sig: bytes
) -> None:
    VerifyKey(identity.signing).verify(sig, _kem_message(key_id, public, last_resort))


def verify_bundle(bundle: PreKeyBundle) -> None:
    """Check both prekey signatures (PQXDH §3.3); raise ``InvalidSignature``."""
    verifier = VerifyKey(bundle.identity.signing)
    try:
        verifier.verify(
            bundle.signed_prekey_signature,
            _spk_message(bundle.signed_prekey_id, bundle.signed_prekey),
        )
        verifier.verify(
            bundle.kem_prekey_signature,
            _kem_message(bundle.kem_prekey_id, bundle.kem_prekey, bundle.kem_last_resort),
        )
    except InvalidSignature as exc:
        raise InvalidSignature("prekey bundle signature does not verify") from exc
