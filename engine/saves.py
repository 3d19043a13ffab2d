"""Saves: a versioned msgpack file written atomically (temp file, fsync, rename, fsync dir).

A crash at any moment leaves either the old save or the new one on disk, never a torn file.
Loading validates the format, the version and the state hash, and names what is wrong.

A save from an older version is upgraded on load by the steps in ``UPGRADES`` (one per version,
each turning the raw state of version N into that of N + 1); a save no step can bring up to date,
or one whose world no longer fits this Hearth's, is refused with ``OLD_SAVE_ADVICE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import blake3
import msgspec

from common.files import atomic_write
from engine.hashing import state_hash
from engine.state import WorldState

SAVE_FORMAT = "hearth-save"
SAVE_VERSION = 2
#: What a player does with a save this Hearth cannot read: start over, keeping it as a backup.
OLD_SAVE_ADVICE = ("start a new game with `hearth play --new-game` (the old save is kept as a "
                   "backup), or open it with the Hearth that wrote it")



def _add_village_quests(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: a world had one quest. A game of the shipped village gains the quests the
    village has since (not started); a game of any other world is kept as it was."""
    from engine.world import load_world  # the shipped world data, read only when upgrading

    if raw.get("quests"):
        return raw
    village = load_world()
    first = raw.get("quest") or {}
    if raw.get("world_name") != village.world_name or first.get("id") != village.quest.id:
        return raw
    npcs = {n.get("id") for n in raw.get("npcs", ())}
    items = set(raw.get("items", {}))
    fits = [q for q in village.quests or ()
            if q.giver in npcs and all((s.npc is None or s.npc in npcs)
                                       and (s.item is None or s.item in items) for s in q.steps)]
    if fits:
        raw["quests"] = msgspec.to_builtins(fits)
    return raw


#: version -> a function turning the raw (msgpack-decoded) state of that version into the next.
#: A change to the world state that old saves cannot be read as adds a step here and bumps
#: ``SAVE_VERSION``.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _add_village_quests}


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


class _RawSave(msgspec.Struct):
    """A save whose state is not yet read as this Hearth's ``WorldState``."""
    format: str
    version: int
    state_hash: str
    state: dict[str, Any]


_enc = msgspec.msgpack.Encoder()
_canonical = msgspec.msgpack.Encoder(order="sorted")
_header_dec = msgspec.msgpack.Decoder(_Header)
_raw_dec = msgspec.msgpack.Decoder(_RawSave)


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
        raw = _raw_dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SaveError(f"{name}: corrupt save ({e})") from None
    # The hash covers the state exactly as written (canonical msgpack of what was saved), so it is
    # checked before any upgrade and whatever version wrote it.
    actual = blake3.blake3(_canonical.encode(raw.state)).hexdigest()
    if actual != raw.state_hash:
        raise SaveError(f"{name}: corrupt save (state hash {actual[:16]}… does not match "
                        f"recorded {raw.state_hash[:16]}…)")
    state = raw.state
    for version in range(header.version, SAVE_VERSION):
        upgrade = UPGRADES.get(version)
        if upgrade is None:
            raise SaveError(f"{name}: written by an older Hearth (save version {header.version}; "
                            f"this one reads version {SAVE_VERSION}): {OLD_SAVE_ADVICE}")
        state = upgrade(state)
    try:
        return msgspec.convert(state, WorldState)
    except msgspec.ValidationError as e:
        raise SaveError(f"{name}: the world in this save does not fit this Hearth's "
                        f"(save version {header.version}: {e}): {OLD_SAVE_ADVICE}") from None


def load_game(path: Path | str) -> WorldState:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SaveError(f"{path}: cannot read save ({e.strerror})") from None
    return decode_save(data, str(path))
