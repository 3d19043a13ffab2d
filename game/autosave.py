"""The window's save: where the game a player comes back to lives, when it is written, and how a new
game keeps the old one.

``hearth play`` continues ``saves/current.save`` in the data directory. The window writes it every
game hour and when it closes; each write is atomic (``common.files.atomic_write``), so a crash or a
kill mid-write leaves the previous save. Starting over moves the current save into
``saves/backups/`` first, named by the time it was set aside, so no game is ever lost to "New game".
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from common.files import atomic_write, fsync_dir
from common.paths import data_dir
from engine.saves import encode_save
from engine.state import TICKS_PER_HOUR, WorldState

SAVES_DIR = "saves"
CURRENT_SAVE = "current.save"
BACKUPS_DIR = "backups"


def default_save_path() -> Path:
    """The game ``hearth play`` continues: ``<data dir>/saves/current.save``."""
    return data_dir() / SAVES_DIR / CURRENT_SAVE


def set_aside(path: Path) -> Path | None:
    """Move the save at ``path`` into ``backups/`` beside it (a rename, made durable) and return
    where it went; None if there was no save. Never overwrites an earlier backup."""
    path = Path(path)
    if not path.exists():
        return None
    backups = path.parent / BACKUPS_DIR
    backups.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = backups / f"{path.stem}-{stamp}{path.suffix}"
    n = 1
    while dest.exists():
        n += 1
        dest = backups / f"{path.stem}-{stamp}-{n}{path.suffix}"
    os.replace(path, dest)
    fsync_dir(backups)
    fsync_dir(path.parent)
    return dest


class Autosaver:
    """Writes the game to ``path`` once per game hour (``save_if_due``, called between ticks) and
    on demand (``save_now``, on exit).

    The state is encoded on the calling thread, between ticks, so the bytes are one consistent
    moment of the world; the write and its fsyncs happen on a background thread so a slow disk never
    holds up a frame. ``save_now`` waits for any write in flight and writes synchronously."""

    def __init__(self, path: Path, every_ticks: int = TICKS_PER_HOUR):
        self.path = Path(path)
        self.every_ticks = every_ticks
        self._last_slot: int | None = None
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        #: The last write's failure, if any (shown to the player; the game goes on).
        self.error: str | None = None
        #: Ticks of the saves written so far (the latest last).
        self.saved_ticks: list[int] = []

    def start(self, state: WorldState) -> None:
        """Count game hours from ``state``: the first autosave comes at the next hour boundary."""
        self._last_slot = state.tick // self.every_ticks

    def save_if_due(self, state: WorldState) -> bool:
        """Save in the background if a game hour boundary has passed since the last save; returns
        whether a save was started."""
        slot = state.tick // self.every_ticks
        if self._last_slot is None:
            self._last_slot = slot
        if slot == self._last_slot:
            return False
        if self._writer is not None and self._writer.is_alive():
            return False  # the disk is slower than an hour of play: try again next tick
        self._last_slot = slot
        data, tick = encode_save(state), state.tick
        self._writer = threading.Thread(target=self._write, args=(data, tick),
                                        name="hearth-autosave", daemon=True)
        self._writer.start()
        return True

    def save_now(self, state: WorldState) -> None:
        """Write ``state`` now and wait until it is on disk (raises OSError if it cannot be)."""
        if self._writer is not None:
            self._writer.join()
        data = encode_save(state)
        with self._lock:
            atomic_write(self.path, data)
            self.saved_ticks.append(state.tick)
        self._last_slot = state.tick // self.every_ticks

    def _write(self, data: bytes, tick: int) -> None:
        try:
            with self._lock:
                atomic_write(self.path, data)
                self.saved_ticks.append(tick)
            self.error = None
        except OSError as e:
            self.error = f"could not save to {self.path}: {e.strerror or e}"
