"""Saves: a versioned msgpack file written atomically (temp file, fsync, rename, fsync dir).

A crash at any moment leaves either the old save or the new one on disk, never a torn file.
Loading validates the format, the version and the state hash, and names what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.files import atomic_write
from engine.hashing import state_hash
from engine.state import WorldState

SAVE_FORMAT = "hearth-save"
SAVE_VERSION = 1


class SaveError(Exception):
    """A save file cannot be used; the message says why (and the file is left untouched)."""


class SaveFile(msgspec.Struct):
    format: str
    version: int
    state_hash: str
    state: WorldState


class _Header(msgspec.Struct):
    format: str
    version: int


_enc = msgspec.msgpack.Encoder()
_header_dec = msgspec.msgpack.Decoder(_Header)
_save_dec = msgspec.msgpack.Decoder(SaveFile)


def encode_save(state: WorldState) -> bytes:
    return _enc.encode(SaveFile(format=SAVE_FORMAT, version=SAVE_VERSION,
                                state_hash=state_hash(state), state=state))


def save_game(path: Path | str, state: WorldState) -> None:
    atomic_write(path, encode_save(state))


def decode_save(data: bytes, name: str = "save") -> WorldState:
    if not data:
        raise SaveError(f"{name}: file is empty")
    try:
        header = _header_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SaveError(f"{name}: not a Hearth save or corrupt ({e})") from None
    if header.format != SAVE_FORMAT:
        raise SaveError(f"{name}: not a Hearth save (format {header.format!r})")
    if header.version > SAVE_VERSION:
        raise SaveError(f"{name}: save version {header.version} is newer than this Hearth "
                        f"understands (up to {SAVE_VERSION}); update Hearth to load it")
    if header.version < 1:
        raise SaveError(f"{name}: invalid save version {header.version}")
    try:
        save = _save_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SaveError(f"{name}: corrupt save ({e})") from None
    actual = state_hash(save.state)
    if actual != save.state_hash:
        raise SaveError(f"{name}: corrupt save (state hash {actual[:16]}… does not match "
                        f"recorded {save.state_hash[:16]}…)")
    return save.state


def load_game(path: Path | str) -> WorldState:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SaveError(f"{path}: cannot read save ({e.strerror})") from None
    return decode_save(data, str(path))
