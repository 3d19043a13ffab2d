"""A user's identity: one ed25519 key pair that signs the skins they publish, the offers and
receipts of the jobs they serve or submit, and their credit transfers.

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


class IdentityError(ValueError):
    """The identity key cannot be read or is not a key."""

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

    @property
    def public_bytes(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def curve_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) raw 32-byte Curve25519 keys derived from the ed25519 key, for
        encrypted transport (ZeroMQ CURVE): a peer that knows our ed25519 public key knows
        our transport key too, so a signed offer names both at once."""
        secret = self.signing_key.to_curve25519_private_key()
        return bytes(secret.public_key), bytes(secret)


def curve_public_from_ed25519(public: bytes) -> bytes:
    """The raw Curve25519 public key that belongs to an ed25519 public key."""
    from nacl.signing import VerifyKey

    return bytes(VerifyKey(public).to_curve25519_public_key())


def verify_signature(public: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public``'s ed25519 signature over ``data``."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(public).verify(data, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def identity_path(home: Path | None = None) -> Path:
    return (home or data_dir()) / "identity" / KEY_FILE


def _from_seed(seed: bytes, path: Path) -> Identity:
    key = SigningKey(seed)
    return Identity(signing_key=key, public_hex=key.verify_key.encode().hex(), path=path)


def _read(path: Path) -> Identity:
    try:
        seed = path.read_bytes()
    except OSError as e:
        raise IdentityError(f"{path}: cannot read the creator key ({e.strerror})") from None
    if len(seed) != SEED_BYTES:
        raise IdentityError(f"{path}: not a creator key ({len(seed)} bytes, expected {SEED_BYTES}); "
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
