"""The SQLite file behind the jobs' crash-safe stores (the worker's and the requester's).

WAL mode with ``synchronous=FULL``: a committed row is on disk before the store returns, and a
crash leaves every committed row intact. One connection shared by the store's callers, behind a
lock; autocommit, so a store writes its own transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SqliteStore:
    def __init__(self, path: Path | str, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()
