"""A creator's identity: one ed25519 key pair that signs every skin the creator publishes.

The 32-byte private seed lives at ``<hearth home>/identity/creator.ed25519`` (mode 0600). It is
made on first use and never overwritten: it is written to a temp file and hard-linked into place,
so two processes starting at once end up with the same key, and a crash never leaves half a key.
There is no recovery: a lost key means new skins carry a new creator id.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from common.files import fsync_dir
from common.paths import data_dir
from npc.skins.manifest import SkinError

KEY_FILE = "creator.ed25519"
SEED_BYTES = 32


@dataclass(frozen=True)
class Identity:
    signing_key: SigningKey
    public_hex: str
    path: Path

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte signature over ``data``."""
        return self.signing_key.sign(data).signature


def identity_path(home: Path | None = None) -> Path:
    return (home or data_dir()) / "identity" / KEY_FILE


def _from_seed(seed: bytes, path: Path) -> Identity:
    key = SigningKey(seed)
    return Identity(signing_key=key, public_hex=key.verify_key.encode().hex(), path=path)


def _read(path: Path) -> Identity:
    try:
        seed = path.read_bytes()
    except OSError as e:
        raise SkinError(f"{path}: cannot read the creator key ({e.strerror})") from None
    if len(seed) != SEED_BYTES:
        raise SkinError(f"{path}: not a creator key ({len(seed)} bytes, expected {SEED_BYTES}); "
                        f"move it aside to make a new identity")
    return _from_seed(seed, path)


def load_or_create_identity(home: Path | None = None) -> Identity:
    path = identity_path(home)
    if path.exists():
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".creator.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(SigningKey.generate()))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made the key first: keep theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return _read(path)
