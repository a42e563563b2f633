"""PQXDH key agreement (Signal, "The PQXDH Key Agreement Protocol", revision 3).

Parameters (§2.1): curve X25519, hash SHA-256, pqkem ML-KEM-768 (FIPS 203),
info "Parley_CURVE25519_SHA-256_ML-KEM-768".

Alice (initiator, §3.3), given Bob's verified bundle:
    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)   (only when the bundle has a one-time prekey)
    (CT, SS) = PQKEM-ENC(PQPK_B)
    SK = KDF(DH1 || DH2 || DH3 [|| DH4] || SS)
    AD = Encode(IK_A) || Encode(IK_B)
KDF (§2.5): HKDF with IKM = F || KM, F = 32 0xFF bytes, salt = 32 zero bytes,
info as above, 32 bytes of output.

Encode(IK) is the 64-byte identity (Ed25519 || X25519): see ``keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.crypto.primitives import DHKeyPair, KemKeyPair, hkdf, kem_encapsulate
from parley.crypto.random import Random
from parley.protocol.keys import IdentityKeyPair, verify_bundle
from parley.protocol.wire import IdentityPublic, PreKeyBundle

INFO = b"Parley_CURVE25519_SHA-256_ML-KEM-768"
_F = b"\xff" * 32
_SALT = b"\x00" * 32


def kdf(key_material: bytes) -> bytes:
    """PQXDH §2.5 KDF over the concatenated DH outputs and KEM secret."""
    return hkdf(_F + key_material, _SALT, INFO, 32)


def associated_data(initiator: IdentityPublic, responder: IdentityPublic) -> bytes:
    return initiator.to_bytes() + responder.to_bytes()


@dataclass(frozen=True, slots=True)
class Initiation:
    """Alice's result: the shared key and what Bob needs to derive it too."""

    shared_key: bytes
    associated_data: bytes
    base_key: bytes
    kem_ciphertext: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int
    responder_ratchet_key: bytes


def initiate(identity: IdentityKeyPair, bundle: PreKeyBundle, rng: Random) -> Initiation:
    """Alice's side: verify the bundle, then derive SK (raises ``InvalidSignature``)."""
    verify_bundle(bundle)
    ephemeral = DHKeyPair.generate(rng)
    dh1 = identity.dh.exchange(bundle.signed_prekey)
    dh2 = ephemeral.exchange(bundle.identity.dh)
    dh3 = ephemeral.exchange(bundle.signed_prekey)
    km = dh1 + dh2 + dh3
    if bundle.one_time_prekey is not None:
        km += ephemeral.exchange(bundle.one_time_prekey)
    shared_secret, ciphertext = kem_encapsulate(bundle.kem_prekey)
    return Initiation(
        shared_key=kdf(km + shared_secret),
        associated_data=associated_data(identity.public, bundle.identity),
        base_key=ephemeral.public,
        kem_ciphertext=ciphertext,
        signed_prekey_id=bundle.signed_prekey_id,
        one_time_prekey_id=bundle.one_time_prekey_id,
        kem_prekey_id=bundle.kem_prekey_id,
        responder_ratchet_key=bundle.signed_prekey,
    )


def respond(
    identity: IdentityKeyPair,
    initiator: IdentityPublic,
    base_key: bytes,
    kem_ciphertext: bytes,
    signed_prekey: DHKeyPair,
    one_time_prekey: DHKeyPair | None,
    kem_prekey: KemKeyPair,
) -> tuple[bytes, bytes]:
    """Bob's side (§3.4): return ``(SK, AD)``. The caller deletes the one-time keys
    only after the first message authenticates under SK."""
    dh1 = signed_prekey.exchange(initiator.dh)
    dh2 = identity.dh.exchange(base_key)
    dh3 = signed_prekey.exchange(base_key)
    km = dh1 + dh2 + dh3
    if one_time_prekey is not None:
        km += one_time_prekey.exchange(base_key)
    shared_secret = kem_prekey.decapsulate(kem_ciphertext)
    return kdf(km + shared_secret), associated_data(initiator, identity.public)
