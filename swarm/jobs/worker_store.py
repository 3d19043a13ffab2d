"""The worker's crash-safe record: shards it served and the receipts both sides signed for them.

SQLite in WAL mode with ``synchronous=FULL``: a receipt is on disk before the worker answers that
it countersigned, and a crash leaves every committed row intact. A served shard is recorded when
its result is sent, so a receipt offered later (even after a restart) is checked against what was
actually done: same requester, model, skin, token counts and the price the worker asked.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from swarm.jobs.receipt import Receipt, ReceiptBody, receipt_id
from swarm.jobs.sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    job TEXT NOT NULL, shard INTEGER NOT NULL, requester TEXT NOT NULL, model TEXT NOT NULL,
    skin TEXT, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    price_per_1k INTEGER NOT NULL, PRIMARY KEY (job, shard, requester));
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, shard INTEGER NOT NULL, amount INTEGER NOT NULL,
    receipt BLOB NOT NULL);
"""


class WorkerStore(SqliteStore):
    def __init__(self, path: Path | str):
        super().__init__(path, SCHEMA)

    def record_served(self, job: str, shard: int, requester: str, model: str, skin: str | None,
                      tokens_in: int, tokens_out: int, price_per_1k: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO served VALUES (?,?,?,?,?,?,?,?)",
                             (job, shard, requester, model, skin, tokens_in, tokens_out,
                              price_per_1k))

    def served_matches(self, body: ReceiptBody) -> bool:
        """Whether ``body`` describes a shard this worker served, exactly as served."""
        with self._lock:
            row = self._db.execute(
                "SELECT model, skin, tokens_in, tokens_out, price_per_1k FROM served "
                "WHERE job=? AND shard=? AND requester=?",
                (body.job, body.shard, body.requester)).fetchone()
        return row == (body.model, body.skin, body.tokens_in, body.tokens_out, body.price_per_1k)

    def add_receipt(self, receipt: Receipt) -> str:
        rid = receipt_id(receipt.body)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO receipts VALUES (?,?,?,?,?)",
                             (rid, receipt.body.job, receipt.body.shard, receipt.body.amount,
                              msgspec.json.encode(receipt)))
        return rid

    def receipts(self) -> list[Receipt]:
        with self._lock:
            rows = self._db.execute("SELECT receipt FROM receipts ORDER BY rowid").fetchall()
        return [msgspec.json.decode(r[0], type=Receipt) for r in rows]

    def totals(self) -> tuple[int, int]:
        """(receipts held, micro-gold they are worth)."""
        with self._lock:
            n, amount = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM receipts").fetchone()
        return n, amount
