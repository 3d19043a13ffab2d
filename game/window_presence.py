"""The game window's claim on the CPU, seen from other processes.

While the player is at the window (input within worker.toml's ``idle_seconds``, window not
minimised) the window touches ``window-present`` in the data directory about once a second; when
the player is away it removes it. ``hearth serve`` runs in its own process and reads the file
through ``WindowPresenceGate``: local generation pauses between decode steps while the file is
fresh, the same rule that pauses serving jobs from the window. A window that crashed leaves a
file that goes stale within ``STALE_AFTER`` seconds, so serving never waits for a dead window."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from common.paths import data_dir

PRESENCE_FILE = "window-present"
#: A presence mark older than this is from a window that is gone.
STALE_AFTER = 3.0
#: How often the gate looks at the file (paused() is called every decode step).
CHECK_EVERY = 0.25


def presence_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / PRESENCE_FILE


def mark(present: bool, root: Path | None = None) -> None:
    """The window says whether the player is at it (touch or remove the mark; never raises)."""
    path = presence_path(root)
    try:
        if present:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


class WindowPresenceGate:
    """A ``swarm.jobs.backend.Gate``: paused while the window's presence mark is fresh. Paused
    work is never released (an interactive client may cancel it instead)."""

    #: The engine's abort flag asks this often: the file is read every CHECK_EVERY anyway.
    poll_s = 0.02

    def __init__(self, root: Path | None = None, clock=time.time):
        self.path = presence_path(root)
        self.clock = clock
        self._checked = float("-inf")
        self._paused = False
        self._lock = threading.Lock()

    def paused(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY:
            with self._lock:
                self._checked = now
                try:
                    self._paused = self.clock() - self.path.stat().st_mtime < STALE_AFTER
                except OSError:
                    self._paused = False
        return self._paused

    def wait_resumed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.paused() and time.monotonic() < deadline:
            time.sleep(CHECK_EVERY)
        return True
