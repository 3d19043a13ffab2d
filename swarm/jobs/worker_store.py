"""The worker's crash-safe record: shards it served, other workers' claims it checked, and the
receipts both sides signed for them.

SQLite in WAL mode with ``synchronous=FULL``: a receipt is on disk before the worker answers that
it countersigned, and a crash leaves every committed row intact. A served shard is recorded when
its result is sent, so a receipt offered later (even after a restart) is checked against what was
actually done: same requester, model, skin, token counts and the price the worker asked. A check
is recorded the same way when its verdicts are sent; its receipt has no generated tokens.

Escrows the worker checked on chain are kept with their job, and every release it co-signed is
kept whole (the transaction, its signature and the receipts it pays) before the signature is
sent back: that is how the worker knows, after any restart, which receipts an escrow paid, and
what ``hearth wallet`` turns into settlement of the worker's own ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import msgspec

from swarm.jobs.receipt import Receipt, ReceiptBody, amount_for, receipt_id


@dataclass(frozen=True)
class EscrowRow:
    account: str  # hex, as the protocol carries Solana addresses
    job: str
    requester: str
    multisig: str


@dataclass(frozen=True)
class Release:
    signature: str
    account: str
    tx: bytes  # the whole signed transaction
    receipts: list[str]
from swarm.jobs.sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    job TEXT NOT NULL, shard INTEGER NOT NULL, requester TEXT NOT NULL, model TEXT NOT NULL,
    skin TEXT, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    price_per_1k INTEGER NOT NULL, PRIMARY KEY (job, shard, requester));
CREATE TABLE IF NOT EXISTS checked (
    job TEXT NOT NULL, shard INTEGER NOT NULL, requester TEXT NOT NULL, model TEXT NOT NULL,
    skin TEXT, tokens_in INTEGER NOT NULL, price_per_1k INTEGER NOT NULL,
    PRIMARY KEY (job, shard, requester, price_per_1k));
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, shard INTEGER NOT NULL, amount INTEGER NOT NULL,
    receipt BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS escrows (
    account TEXT PRIMARY KEY, job TEXT NOT NULL, requester TEXT NOT NULL,
    multisig TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    signature TEXT PRIMARY KEY, account TEXT NOT NULL, tx BLOB NOT NULL,
    receipts TEXT NOT NULL);
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

    def record_checked(self, job: str, shard: int, requester: str, model: str,
                       skin: str | None, tokens_in: int, price_per_1k: int) -> None:
        """Claims for ``shard`` were re-scored here (``tokens_in``: prompts plus claimed tokens).
        Checks of one shard for one requester add up, as the requester's receipt for them does."""
        with self._lock:
            self._db.execute("INSERT INTO checked VALUES (?,?,?,?,?,?,?) "
                             "ON CONFLICT (job, shard, requester, price_per_1k) "
                             "DO UPDATE SET tokens_in = tokens_in + excluded.tokens_in",
                             (job, shard, requester, model, skin, tokens_in, price_per_1k))

    def checked_matches(self, body: ReceiptBody) -> bool:
        """Whether ``body`` describes checks this worker ran for that shard: same model, skin
        and price, nothing generated, and no more tokens than it re-scored (a requester that
        never got one of the answers counts fewer)."""
        with self._lock:
            row = self._db.execute(
                "SELECT model, skin, tokens_in FROM checked "
                "WHERE job=? AND shard=? AND requester=? AND price_per_1k=?",
                (body.job, body.shard, body.requester, body.price_per_1k)).fetchone()
        return (body.tokens_out == 0 and row is not None and row[:2] == (body.model, body.skin)
                and 0 < body.tokens_in <= row[2])

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

    def receipts_by_id(self, ids: list[str]) -> list[Receipt | None]:
        with self._lock:
            rows = [self._db.execute("SELECT receipt FROM receipts WHERE id=?", (rid,)).fetchone()
                    for rid in ids]
        return [None if r is None else msgspec.json.decode(r[0], type=Receipt) for r in rows]

    def job_receipts(self, job: str, requester: str) -> list[Receipt]:
        return [r for r in self.receipts() if r.body.job == job and r.body.requester == requester]

    # ---- escrow -------------------------------------------------------------------------------

    def add_escrow(self, escrow: EscrowRow) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO escrows VALUES (?,?,?,?)",
                             (escrow.account, escrow.job, escrow.requester, escrow.multisig))

    def escrow(self, account: str) -> EscrowRow | None:
        with self._lock:
            row = self._db.execute("SELECT account, job, requester, multisig FROM escrows "
                                   "WHERE account=?", (account,)).fetchone()
        return None if row is None else EscrowRow(*row)

    def add_release(self, release: Release) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO releases VALUES (?,?,?,?)",
                             (release.signature, release.account, release.tx,
                              json.dumps(release.receipts)))

    def releases(self, account: str | None = None) -> list[Release]:
        sql, args = "SELECT signature, account, tx, receipts FROM releases", ()
        if account is not None:
            sql, args = sql + " WHERE account=?", (account,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [Release(sig, acct, tx, json.loads(ids)) for sig, acct, tx, ids in rows]

    def served_amount(self, job: str, requester: str) -> int:
        """Micro-gold the shards served for ``job`` are worth at the prices asked."""
        with self._lock:
            rows = self._db.execute("SELECT tokens_in, tokens_out, price_per_1k FROM served "
                                    "WHERE job=? AND requester=?", (job, requester)).fetchall()
        return sum(amount_for(*row) for row in rows)

    def checked_amount(self, job: str, requester: str) -> int:
        """Micro-gold the checks run for ``job`` are worth at the prices asked."""
        with self._lock:
            rows = self._db.execute("SELECT tokens_in, price_per_1k FROM checked "
                                    "WHERE job=? AND requester=?", (job, requester)).fetchall()
        return sum(amount_for(max(t_in, 0), 0, price) for t_in, price in rows)
