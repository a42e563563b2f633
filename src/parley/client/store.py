"""The encrypted local profile.

``DIR/profile.meta`` (plaintext JSON: format version, Argon2id salt and
parameters) and ``DIR/profile.enc`` (AES-256-GCM of the whole state as JSON,
under a key derived from the passphrase with Argon2id). Files are created
0600 in a 0700 directory and replaced atomically (write, fsync, rename), so a
crash or a wrong passphrase never leaves a corrupt or half-written store.
A lock file serialises commands that share a profile; each command holds it
only around a load-modify-save, so ``receive --follow`` does not block sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from parley.crypto.primitives import aead_decrypt, aead_encrypt
from parley.errors import DecryptionError, ParleyError

FORMAT = 1
# Argon2id, RFC 9106's second recommended option scaled to a CLI that derives
# the key once per command: 64 MiB, 3 passes (~0.2 s here).
ARGON2 = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 1}


class ProfileError(ParleyError):
    code = "profile_error"


class WrongPassphrase(ProfileError):
    code = "wrong_passphrase"


class NoProfile(ProfileError):
    code = "no_profile"


class Profile:
    def __init__(self, directory: Path, passphrase: str) -> None:
        self.dir = directory
        self._passphrase = passphrase.encode()
        self._key: bytes | None = None

    @property
    def meta_path(self) -> Path:
        return self.dir / "profile.meta"

    @property
    def data_path(self) -> Path:
        return self.dir / "profile.enc"

    def exists(self) -> bool:
        return self.meta_path.exists() and self.data_path.exists()

    def _derive(self, meta: dict[str, Any]) -> bytes:
        if self._key is None:
            p = meta["argon2"]
            self._key = hash_secret_raw(
                self._passphrase,
                bytes.fromhex(meta["salt"]),
                p["time_cost"],
                p["memory_cost"],
                p["parallelism"],
                32,
                Type.ID,
            )
        return self._key

    def create(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        meta = {"format": FORMAT, "salt": secrets.token_hex(16), "argon2": ARGON2}
        self._key = None
        _write(self.meta_path, json.dumps(meta).encode())
        self._write_state(meta, state)

    def _meta(self) -> dict[str, Any]:
        if not self.exists():
            raise NoProfile(f"no Parley profile in {self.dir}: run 'parley register' first")
        try:
            meta: dict[str, Any] = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ProfileError(f"unreadable profile metadata in {self.dir}") from exc
        if meta.get("format") != FORMAT:
            raise ProfileError("profile written by an unknown version of Parley")
        return meta

    def load(self) -> dict[str, Any]:
        meta = self._meta()
        blob = self.data_path.read_bytes()
        try:
            plain = aead_decrypt(self._derive(meta), blob[:12], blob[12:], b"parley/profile/v1")
        except DecryptionError as exc:
            self._key = None
            raise WrongPassphrase("wrong passphrase (the profile was not changed)") from exc
        state: dict[str, Any] = json.loads(plain)
        return state

    def save(self, state: dict[str, Any]) -> None:
        self._write_state(self._meta(), state)

    def _write_state(self, meta: dict[str, Any], state: dict[str, Any]) -> None:
        nonce = secrets.token_bytes(12)
        data = aead_encrypt(
            self._derive(meta), nonce, json.dumps(state).encode(), b"parley/profile/v1"
        )
        _write(self.data_path, nonce + data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def set_aside(self) -> Path:
        """Rename the whole profile directory to a new sibling, never deleting it;
        returns the new path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = self.dir.with_name(f"{self.dir.name}.replaced-{stamp}"), 0
        while target.exists():
            n += 1
            target = self.dir.with_name(f"{self.dir.name}.replaced-{stamp}-{n}")
        os.rename(self.dir, target)
        self._key = None
        return target

    def wipe(self) -> None:
        for path in (self.data_path, self.meta_path, self.dir / "lock"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
