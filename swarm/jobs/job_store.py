"""The requester's crash-safe record of its jobs: shards accepted (with their results), checks
other workers ran for it, receipts, and fraud records against workers caught cheating.

SQLite in WAL mode with ``synchronous=FULL``. A shard's results and its acceptance are written in
one transaction, so a requester killed at any point resumes knowing exactly which shards it holds
and never buys them again. Fraud records outlive the job: a caught worker is refused from then on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from swarm.jobs.backend import Completion
from swarm.jobs.receipt import Receipt, receipt_id
from swarm.jobs.sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, skin TEXT, input TEXT NOT NULL,
    output TEXT NOT NULL, requests INTEGER NOT NULL, shards INTEGER NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    job TEXT NOT NULL, shard INTEGER NOT NULL, worker TEXT NOT NULL, verified INTEGER NOT NULL,
    forfeit INTEGER NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
    price_per_1k INTEGER NOT NULL, PRIMARY KEY (job, shard));
CREATE TABLE IF NOT EXISTS results (
    job TEXT NOT NULL, custom_id TEXT NOT NULL, shard INTEGER NOT NULL,
    completion BLOB NOT NULL, PRIMARY KEY (job, custom_id));
CREATE TABLE IF NOT EXISTS frauds (
    worker TEXT NOT NULL, job TEXT NOT NULL, shard INTEGER NOT NULL, record BLOB NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checks (
    job TEXT NOT NULL, shard INTEGER NOT NULL, checker TEXT NOT NULL,
    tokens_in INTEGER NOT NULL, price_per_1k INTEGER NOT NULL,
    PRIMARY KEY (job, shard, checker, price_per_1k));
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, shard INTEGER NOT NULL, worker TEXT NOT NULL,
    amount INTEGER NOT NULL, receipt BLOB NOT NULL);
"""

RUNNING = "running"
FINISHED = "finished"


@dataclass(frozen=True)
class JobRow:
    id: str
    model: str
    skin: str | None
    input: str
    output: str
    requests: int
    shards: int
    state: str
    created: float
    updated: float
    accepted: int  # shards accepted
    receipts: int
    paid: int  # micro-gold in receipts


@dataclass(frozen=True)
class AcceptedShard:
    shard: int
    worker: str
    verified: bool
    forfeit: bool
    tokens_in: int
    tokens_out: int
    price_per_1k: int


@dataclass(frozen=True)
class CheckRow:
    shard: int
    checker: str
    tokens_in: int
    price_per_1k: int


class JobStore(SqliteStore):
    def __init__(self, path: Path | str):
        super().__init__(path, SCHEMA)

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- jobs ---------------------------------------------------------------------------------

    def open_job(self, job: str, model: str, skin: str | None, input: str, output: str,
                 requests: int, shards: int) -> JobRow:
        """The job's row, created if new. A job resumed keeps its shard plan."""
        now = time.time()
        self._tx([("INSERT OR IGNORE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (job, model, skin, input, output, requests, shards, RUNNING, now, now))])
        return self.job(job)

    def set_state(self, job: str, state: str) -> None:
        self._tx([("UPDATE jobs SET state=?, updated=? WHERE id=?", (state, time.time(), job))])

    def job(self, job: str) -> JobRow | None:
        rows = self.jobs(job)
        return rows[0] if rows else None

    def jobs(self, only: str | None = None) -> list[JobRow]:
        sql = ("SELECT j.id, j.model, j.skin, j.input, j.output, j.requests, j.shards, j.state, "
               "j.created, j.updated, "
               "(SELECT COUNT(*) FROM shards s WHERE s.job=j.id), "
               "(SELECT COUNT(*) FROM receipts r WHERE r.job=j.id), "
               "(SELECT COALESCE(SUM(amount),0) FROM receipts r WHERE r.job=j.id) FROM jobs j")
        args: tuple = ()
        if only is not None:
            sql, args = sql + " WHERE j.id=?", (only,)
        return [JobRow(*r) for r in self._all(sql + " ORDER BY j.created", args)]

    # ---- shards and results -------------------------------------------------------------------

    def accept_shard(self, job: str, shard: int, worker: str, verified: bool,
                     completions: list[Completion], price_per_1k: int) -> None:
        tokens_in = sum(c.prompt_tokens for c in completions)
        tokens_out = sum(len(c.tokens) for c in completions)
        statements = [("INSERT INTO shards VALUES (?,?,?,?,0,?,?,?)",
                       (job, shard, worker, int(verified), tokens_in, tokens_out, price_per_1k))]
        statements += [("INSERT INTO results VALUES (?,?,?,?)",
                        (job, c.custom_id, shard, msgspec.msgpack.encode(c))) for c in completions]
        statements.append(("UPDATE jobs SET updated=? WHERE id=?", (time.time(), job)))
        self._tx(statements)

    def accepted(self, job: str) -> dict[int, AcceptedShard]:
        rows = self._all("SELECT shard, worker, verified, forfeit, tokens_in, tokens_out, "
                         "price_per_1k FROM shards WHERE job=?", (job,))
        return {r[0]: AcceptedShard(r[0], r[1], bool(r[2]), bool(r[3]), r[4], r[5], r[6])
                for r in rows}

    def forfeit_worker(self, job: str, worker: str) -> list[int]:
        """A worker caught cheating in ``job``: its unverified shards are dropped (to be redone)
        and its verified ones kept but unpaid. Returns the dropped shards."""
        dropped = [r[0] for r in self._all(
            "SELECT shard FROM shards WHERE job=? AND worker=? AND verified=0", (job, worker))]
        statements = [("DELETE FROM results WHERE job=? AND shard=?", (job, s)) for s in dropped]
        statements += [("DELETE FROM shards WHERE job=? AND shard=?", (job, s)) for s in dropped]
        statements.append(("UPDATE shards SET forfeit=1 WHERE job=? AND worker=?", (job, worker)))
        self._tx(statements)
        return dropped

    def results(self, job: str) -> dict[str, Completion]:
        rows = self._all("SELECT completion FROM results WHERE job=?", (job,))
        out = {}
        for (blob,) in rows:
            c = msgspec.msgpack.decode(blob, type=Completion)
            out[c.custom_id] = c
        return out

    # ---- checks run by other workers ----------------------------------------------------------

    def add_check(self, job: str, shard: int, checker: str, tokens_in: int,
                  price_per_1k: int) -> None:
        """``checker`` re-scored claims for ``shard`` (``tokens_in`` tokens: the prompts and the
        claimed tokens); it is owed a receipt. Checks of one shard by one checker add up to one
        receipt (all of a job's receipts are signed once it is complete, after every check)."""
        self._tx([("INSERT INTO checks VALUES (?,?,?,?,?) "
                   "ON CONFLICT (job, shard, checker, price_per_1k) "
                   "DO UPDATE SET tokens_in = tokens_in + excluded.tokens_in",
                   (job, shard, checker, tokens_in, price_per_1k))])

    def checks(self, job: str) -> list[CheckRow]:
        return [CheckRow(*r) for r in self._all(
            "SELECT shard, checker, tokens_in, price_per_1k FROM checks WHERE job=? "
            "ORDER BY rowid", (job,))]

    # ---- frauds and receipts ------------------------------------------------------------------

    def add_fraud(self, worker: str, job: str, shard: int, record: bytes) -> None:
        self._tx([("INSERT INTO frauds VALUES (?,?,?,?,?)",
                   (worker, job, shard, record, time.time()))])

    def frauds(self) -> list[tuple[str, str, int, bytes]]:
        return self._all("SELECT worker, job, shard, record FROM frauds ORDER BY rowid")

    def caught(self) -> set[str]:
        return {r[0] for r in self._all("SELECT DISTINCT worker FROM frauds")}

    def add_receipt(self, receipt: Receipt) -> str:
        rid = receipt_id(receipt.body)
        self._tx([("INSERT OR IGNORE INTO receipts VALUES (?,?,?,?,?,?)",
                   (rid, receipt.body.job, receipt.body.shard, receipt.body.worker,
                    receipt.body.amount, msgspec.json.encode(receipt)))])
        return rid

    def receipts(self, job: str | None = None) -> list[Receipt]:
        sql, args = "SELECT receipt FROM receipts", ()
        if job is not None:
            sql, args = sql + " WHERE job=?", (job,)
        return [msgspec.json.decode(r[0], type=Receipt) for r in self._all(sql, args)]
