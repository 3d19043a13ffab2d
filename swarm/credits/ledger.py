"""The credits ledger: a double-entry book of signed receipts, one SQLite file per client.

Every receipt moves its ``amount`` of micro-gold out of the requester's account and into the
worker's, less the skin fee when the job wore a skin: that fee goes to the creators in the skin's
lineage. Each receipt is recorded in one SQLite transaction (WAL journal, foreign keys on), so a
crash leaves it wholly recorded or not at all, and its entries always sum to zero.

Royalty rule (exact integers): the skin fee is ``floor(amount * SKIN_FEE)``. Each creator in the
lineage gets ``floor(fee * share)`` of it (the shares are the exact fractions the skin store's
``royalty_split`` gives, summing to 1); the units lost to rounding go to the creator of the skin
that was worn (the first of the split). The worker gets ``amount - fee``. So a receipt pays out
exactly its amount, and two ledgers given the same receipt and split write the same entries.

Balances are derivable from the receipts alone: ``audit`` re-verifies every stored receipt,
recomputes its entries from its body and the split stored with it, and compares them (and the
balances) with what the book holds.

Settlement state lives here too: a batch of receipts is written with its signed transaction
*before* the transaction is sent, and marked settled once the chain has it, so a restart at any
point knows exactly which receipts were paid and which transaction may still land.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import msgspec

from swarm.jobs.receipt import MAX_AMOUNT, Receipt, ReceiptError, verify_receipt

#: Part of a receipt's amount paid to the creators of the skin the job wore.
SKIN_FEE = Fraction(1, 10)

#: Account that issues deposits (airdrops, gold that arrived on chain from outside the book):
#: its balance is minus the supply the book has seen come in.
OUTSIDE = "outside"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    signature TEXT NOT NULL UNIQUE,
    tx BLOB NOT NULL,
    last_valid_height INTEGER NOT NULL,
    memo TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('signed', 'settled', 'expired')),
    created REAL NOT NULL,
    settled REAL
);
-- Escrow accounts the owner locked gold in (swarm/credits/escrow.py): written before the
-- transaction that opens one is sent, so a crash never forgets where the gold went.
CREATE TABLE IF NOT EXISTS escrows (
    account TEXT PRIMARY KEY,
    multisig TEXT NOT NULL,
    worker TEXT NOT NULL,
    budget INTEGER NOT NULL CHECK (budget > 0),
    signature TEXT NOT NULL,
    last_valid_height INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('opening', 'open', 'closed', 'failed')),
    created REAL NOT NULL
) WITHOUT ROWID;
-- The job an escrow locks gold for (written in the same transaction as the escrow), so a job
-- run again finds the escrows it already opened instead of locking its budget twice.
CREATE TABLE IF NOT EXISTS escrow_jobs (
    account TEXT PRIMARY KEY REFERENCES escrows(account),
    job TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    requester TEXT NOT NULL,
    worker TEXT NOT NULL,
    skin TEXT,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    recorded REAL NOT NULL,
    batch INTEGER REFERENCES batches(id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS royalty_splits (
    receipt TEXT NOT NULL REFERENCES receipts(id),
    position INTEGER NOT NULL,
    creator TEXT NOT NULL,
    skin TEXT NOT NULL,
    share_num INTEGER NOT NULL CHECK (share_num >= 0),
    share_den INTEGER NOT NULL CHECK (share_den > 0),
    PRIMARY KEY (receipt, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deposits (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    note TEXT NOT NULL,
    recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    receipt TEXT REFERENCES receipts(id),
    deposit TEXT REFERENCES deposits(id),
    account TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('requester', 'worker', 'royalty', 'deposit', 'outside')),
    skin TEXT,
    amount INTEGER NOT NULL,
    CHECK ((receipt IS NULL) != (deposit IS NULL))
);
-- Running balances, kept in the same transaction as the entries (audit checks them against the
-- receipts), so recording a receipt does not sum an account's whole history.
CREATE TABLE IF NOT EXISTS balances (
    account TEXT PRIMARY KEY,
    balance INTEGER NOT NULL
) WITHOUT ROWID;
"""


class LedgerError(ValueError):
    """A receipt, deposit or query the ledger refuses; the message names the problem."""


#: One creator's cut of a skin fee, as the skin store gives it: (creator key hex, skin id, share).
RoyaltyShare = tuple[str, str, Fraction]


@dataclass(frozen=True)
class Entry:
    account: str
    role: str
    amount: int
    skin: str | None = None


@dataclass(frozen=True)
class Batch:
    id: int
    signature: str
    tx: bytes
    last_valid_height: int
    memo: str
    status: str


@dataclass(frozen=True)
class AuditReport:
    receipts: int
    deposits: int
    problems: list[str]
    balances: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


_KEY = re.compile(r"[0-9a-f]{64}")


def _is_key(text: str) -> bool:
    return isinstance(text, str) and _KEY.fullmatch(text) is not None


def check_split(skin: str | None, split: Sequence[RoyaltyShare] | None) -> list[RoyaltyShare]:
    """The split a receipt's skin needs, checked: none without a skin; with one, creator keys,
    skin ids and shares that sum to exactly 1, starting at the skin worn."""
    if skin is None:
        if split:
            raise LedgerError("a royalty split was given for a receipt that wore no skin")
        return []
    if not split:
        raise LedgerError(f"the receipt wore skin {skin[:12]}…: its royalty split is needed")
    out = []
    for creator, skin_id, share in split:
        if not _is_key(creator):
            raise LedgerError(f"royalty creator {creator!r} is not an ed25519 key (64 hex digits)")
        if not _is_key(skin_id):
            raise LedgerError(f"royalty skin {skin_id!r} is not a skin id")
        share = Fraction(share)
        if share < 0:
            raise LedgerError(f"royalty share {share} for {creator[:12]}… is negative")
        out.append((creator, skin_id, share))
    if out[0][1] != skin:
        raise LedgerError(f"the royalty split starts at skin {out[0][1][:12]}…, not the skin worn "
                          f"({skin[:12]}…)")
    total = sum((s for _, _, s in out), Fraction(0))
    if total != 1:
        raise LedgerError(f"royalty shares sum to {total}, not 1")
    return out


def skin_fee(amount: int) -> int:
    """The part of a receipt's amount that goes to the creators of the skin the job wore."""
    return amount * SKIN_FEE.numerator // SKIN_FEE.denominator


def worker_share(body) -> int:
    """What a receipt pays its worker: the amount, less the skin fee when the job wore a skin
    (what a worker can check without knowing the skin's lineage)."""
    return body.amount - (skin_fee(body.amount) if body.skin is not None else 0)


def entries_for(receipt: Receipt, split: Sequence[RoyaltyShare]) -> list[Entry]:
    """The entries one receipt writes (see the module docstring for the rounding rule)."""
    body = receipt.body
    amount = body.amount
    entries = [Entry(body.requester, "requester", -amount)]
    if not split:
        return entries + [Entry(body.worker, "worker", amount)]
    fee = skin_fee(amount)
    cuts = [fee * s.numerator // s.denominator for _, _, s in split]
    cuts[0] += fee - sum(cuts)
    entries.append(Entry(body.worker, "worker", amount - fee))
    entries += [Entry(creator, "royalty", cut, skin_id)
                for (creator, skin_id, _), cut in zip(split, cuts, strict=True)]
    return entries


class Ledger:
    """One client's book. ``owner`` is this client's key (hex): a receipt that does not involve
    it is refused, and it is the one account the ledger will not let go below zero (the others'
    balances here are what they owe us or we owe them, which can be either sign)."""

    def __init__(self, path: Path | str, owner: str):
        if not _is_key(owner):
            raise LedgerError(f"ledger owner {owner!r} is not an ed25519 key")
        self.path = Path(path)
        self.owner = owner
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # Receipts commit with synchronous=NORMAL: a killed process never loses a committed
            # one, and a power cut may lose the last few but never leaves the book inconsistent
            # (both parties hold every receipt signed and recording is idempotent, so they can be
            # given again). Settlement state is different — a transaction must be on disk before
            # it is sent — so those commits are made with synchronous=FULL (see _durably).
            self.db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (which fsync) every ~16 MB of log rather than every 4 MB.
            self.db.execute("PRAGMA wal_autocheckpoint=4000")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: not a usable ledger ({e})") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------------

    def record(self, receipt: Receipt, split: Sequence[RoyaltyShare] | None = None) -> bool:
        """Record one receipt in one transaction. Returns True if it was new, False if the same
        receipt (same id, same split) was already recorded and not yet settled. Raises
        LedgerError (bad signature, foreign parties, overflow, already settled, ...)."""
        try:
            rid = verify_receipt(receipt)
        except ReceiptError as e:
            raise LedgerError(f"receipt refused: {e}") from None
        body = receipt.body
        split = check_split(body.skin, split)
        entries = entries_for(receipt, split)
        parties = {e.account for e in entries}
        if self.owner not in parties:
            raise LedgerError(f"receipt {rid[:12]}… is between {body.requester[:12]}… and "
                              f"{body.worker[:12]}…; this ledger belongs to {self.owner[:12]}…")
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                db.execute("INSERT INTO receipts (id, body, requester, worker, skin, amount, "
                           "recorded) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (rid, msgspec.json.encode(receipt), body.requester, body.worker,
                            body.skin, body.amount, time.time()))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                self._check_duplicate(rid, split)
                return False
            held = dict(db.execute(
                f"SELECT account, balance FROM balances WHERE account IN "
                f"({','.join('?' * len(parties))})", tuple(parties)))
            for e in entries:
                bal = held.get(e.account, 0)
                held[e.account] = bal + e.amount
                if bal + e.amount > MAX_AMOUNT:
                    raise LedgerError(f"receipt {rid[:12]}… would overflow the balance of "
                                      f"{e.account[:12]}…")
                if e.account == self.owner and bal + e.amount < 0:
                    raise LedgerError(f"receipt {rid[:12]}… needs {-e.amount} micro-gold from "
                                      f"{e.account[:12]}…, which has {bal} on this ledger")
            if split:
                db.executemany("INSERT INTO royalty_splits VALUES (?, ?, ?, ?, ?, ?)",
                               [(rid, i, c, s, f.numerator, f.denominator)
                                for i, (c, s, f) in enumerate(split)])
            db.executemany("INSERT INTO entries (receipt, account, role, skin, amount) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(rid, e.account, e.role, e.skin, e.amount) for e in entries])
            self._add_to_balances((e.account, e.amount) for e in entries)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    def _check_duplicate(self, rid: str, split: list[RoyaltyShare]) -> None:
        """A receipt already in the book: fine if unsettled and recorded with the same split."""
        row = self.db.execute("SELECT b.status, b.signature FROM receipts r LEFT JOIN batches b "
                              "ON b.id = r.batch WHERE r.id = ?", (rid,)).fetchone()
        if row[0] == "settled":
            raise LedgerError(f"receipt {rid[:12]}… is already settled (transaction {row[1]})")
        if self._stored_split(rid) != split:
            raise LedgerError(f"receipt {rid[:12]}… was recorded with a different royalty split")

    def deposit(self, deposit_id: str, account: str, amount: int, note: str) -> bool:
        """Gold that reached ``account`` from outside the book (an airdrop, a purchase): the
        OUTSIDE account pays it. Idempotent on ``deposit_id``; returns True if new."""
        if not _is_key(account):
            raise LedgerError(f"deposit account {account!r} is not an ed25519 key")
        if not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
            raise LedgerError(f"deposit amount {amount!r} must be a whole number from 1 to "
                              f"{MAX_AMOUNT}")
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT account, amount FROM deposits WHERE id = ?",
                             (deposit_id,)).fetchone()
            if row is not None:
                db.execute("ROLLBACK")
                if tuple(row) != (account, amount):
                    raise LedgerError(f"deposit {deposit_id!r} was recorded with other values")
                return False
            if self._balance(account) + amount > MAX_AMOUNT:
                raise LedgerError(f"deposit {deposit_id!r} would overflow {account[:12]}…")
            db.execute("INSERT INTO deposits VALUES (?, ?, ?, ?, ?)",
                       (deposit_id, account, amount, note, time.time()))
            db.executemany("INSERT INTO entries (deposit, account, role, amount) "
                           "VALUES (?, ?, ?, ?)",
                           [(deposit_id, account, "deposit", amount),
                            (deposit_id, OUTSIDE, "outside", -amount)])
            self._add_to_balances([(account, amount), (OUTSIDE, -amount)])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    # ---- settlement state ----------------------------------------------------------------------

    def pending_to_pay(self, limit: int | None = None, *,
                       escrowed: bool = True) -> list[tuple[Receipt, list[RoyaltyShare]]]:
        """The owner's receipts as requester that no live batch covers, oldest first. With
        ``escrowed=False``, not those of a job whose escrow for that worker is still open: the
        escrow pays them (settlement leaves them alone, so they are never paid twice)."""
        sql = ("SELECT r.id, r.body FROM receipts r LEFT JOIN batches b ON b.id = r.batch "
               "WHERE r.requester = ? AND (r.batch IS NULL OR b.status = 'expired')")
        if not escrowed:
            sql += (" AND NOT EXISTS (SELECT 1 FROM escrows e JOIN escrow_jobs j ON "
                    "j.account = e.account WHERE e.status IN ('opening', 'open') AND "
                    "e.worker = r.worker AND j.job = json_extract(r.body, '$.body.job'))")
        sql += " ORDER BY r.recorded, r.id"
        rows = self.db.execute(sql + (f" LIMIT {int(limit)}" if limit else ""),
                               (self.owner,)).fetchall()
        return [(msgspec.json.decode(body, type=Receipt), self._stored_split(rid))
                for rid, body in rows]

    def add_batch(self, signature: str, tx: bytes, last_valid_height: int, memo: str,
                  receipt_ids: Iterable[str]) -> int:
        """Write a signed, not yet sent, transaction and claim its receipts for it (one SQLite
        transaction). Raises if a receipt is unknown or already in a live batch."""
        ids = list(receipt_ids)
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute("INSERT INTO batches (signature, tx, last_valid_height, memo, status,"
                             " created) VALUES (?, ?, ?, ?, 'signed', ?)",
                             (signature, tx, last_valid_height, memo, time.time()))
            batch = cur.lastrowid
            for rid in ids:
                n = db.execute("UPDATE receipts SET batch = ? WHERE id = ? AND (batch IS NULL OR "
                               "batch IN (SELECT id FROM batches WHERE status = 'expired'))",
                               (batch, rid)).rowcount
                if n != 1:
                    raise LedgerError(f"receipt {rid[:12]}… is unknown or already being settled")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return batch

    def record_paid(self, signature: str, tx: bytes, memo: str, receipt_ids: list[str]) -> int:
        """Someone else's settlement that paid receipts this ledger holds (checked by the caller
        against the chain): the batch is written settled at once. Returns how many receipts it
        newly marked; a batch already known changes nothing."""
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM batches WHERE signature = ?", (signature,)).fetchone():
                db.execute("ROLLBACK")
                return 0
            batch = db.execute("INSERT INTO batches (signature, tx, last_valid_height, memo, "
                               "status, created, settled) VALUES (?, ?, 0, ?, 'settled', ?, ?)",
                               (signature, tx, memo, time.time(), time.time())).lastrowid
            marked = 0
            for rid in receipt_ids:
                marked += db.execute("UPDATE receipts SET batch = ? WHERE id = ? AND batch IS "
                                     "NULL AND requester != ?", (batch, rid, self.owner)).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return marked

    def settled_batches(self) -> list[tuple[Batch, list[str]]]:
        """The settled batches this ledger paid, with their receipt ids (for settlement notices)."""
        out = []
        for batch in self.batches():
            if batch.status == "settled":
                ids = [r for r, in self.db.execute(
                    "SELECT id FROM receipts WHERE batch = ? AND requester = ? ORDER BY id",
                    (batch.id, self.owner))]
                if ids:
                    out.append((batch, ids))
        return out

    def add_escrow(self, account: str, multisig: str, worker: str, budget: int, signature: str,
                   last_valid_height: int, job: str | None = None) -> None:
        """An escrow whose opening transaction is signed and about to be sent (and the job it
        locks gold for, in the same transaction)."""
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO escrows VALUES (?, ?, ?, ?, ?, ?, 'opening', ?)",
                       (account, multisig, worker, budget, signature, last_valid_height,
                        time.time()))
            if job is not None:
                db.execute("INSERT INTO escrow_jobs VALUES (?, ?)", (account, job))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")

    def set_escrow(self, account: str, status: str) -> None:
        if status not in ("open", "closed", "failed"):
            raise LedgerError(f"unknown escrow status {status!r}")
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("UPDATE escrows SET status = ? WHERE account = ?", (status, account))
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def escrows(self, *statuses: str, job: str | None = None) -> list[dict]:
        """The owner's escrows (those in ``statuses``, or all; those of ``job``, or all), oldest
        first."""
        sql = ("SELECT e.account, e.multisig, e.worker, e.budget, e.signature, "
               "e.last_valid_height, e.status, j.job FROM escrows e LEFT JOIN escrow_jobs j "
               "ON j.account = e.account")
        args: tuple = ()
        if job is not None:
            sql, args = sql + " WHERE j.job = ?", (job,)
        keys = ("account", "multisig", "worker", "budget", "signature", "last_valid_height",
                "status", "job")
        rows = self.db.execute(sql + " ORDER BY e.created, e.account", args)
        return [dict(zip(keys, row)) for row in rows if not statuses or row[6] in statuses]

    def set_escrow_budget(self, account: str, budget: int) -> None:
        """What an escrow was topped up to (the chain holds the gold; this is for the record)."""
        self.db.execute("UPDATE escrows SET budget = ? WHERE account = ?", (budget, account))

    def receipt_settlement(self, rid: str) -> str | None:
        """The signature of the transaction that paid a receipt, None while it is unpaid."""
        row = self.db.execute("SELECT b.signature FROM receipts r JOIN batches b ON "
                              "b.id = r.batch WHERE r.id = ? AND b.status = 'settled'",
                              (rid,)).fetchone()
        return row[0] if row else None

    def open_batches(self) -> list[Batch]:
        """Batches signed (perhaps sent) but not yet known to have landed or expired."""
        return [self._batch(row) for row in self.db.execute(
            "SELECT id, signature, tx, last_valid_height, memo, status FROM batches "
            "WHERE status = 'signed' ORDER BY id")]

    def batches(self) -> list[Batch]:
        return [self._batch(row) for row in self.db.execute(
            "SELECT id, signature, tx, last_valid_height, memo, status FROM batches ORDER BY id")]

    def mark_batch(self, batch_id: int, status: str) -> None:
        """``settled`` (the chain executed it) or ``expired`` (it can never execute: its receipts
        become payable again)."""
        if status not in ("settled", "expired"):
            raise LedgerError(f"unknown batch status {status!r}")
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute("UPDATE batches SET status = ?, settled = ? WHERE id = ? AND "
                            "status = 'signed'", (status, time.time(), batch_id))
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    # ---- reading -------------------------------------------------------------------------------

    def balance(self, account: str | None = None) -> int:
        return self._balance(account or self.owner)

    def settled_balance(self, account: str | None = None) -> int:
        """What the chain should hold for ``account``: deposits plus settled receipts."""
        account = account or self.owner
        row = self.db.execute(
            "SELECT COALESCE(SUM(e.amount), 0) FROM entries e LEFT JOIN receipts r ON "
            "r.id = e.receipt LEFT JOIN batches b ON b.id = r.batch WHERE e.account = ? AND "
            "(e.deposit IS NOT NULL OR b.status = 'settled')", (account,)).fetchone()
        return row[0]

    def pending_incoming(self, account: str | None = None) -> int:
        """What unsettled receipts owe ``account`` when someone else pays them. This ledger only
        learns of its own settlements, so another payer's settlement shows on chain first: the
        chain should then hold between ``settled_balance`` and that plus this."""
        account = account or self.owner
        row = self.db.execute(
            "SELECT COALESCE(SUM(e.amount), 0) FROM entries e JOIN receipts r ON r.id = e.receipt "
            "LEFT JOIN batches b ON b.id = r.batch WHERE e.account = ? AND e.amount > 0 AND "
            "r.requester != ? AND (b.status IS NULL OR b.status != 'settled')",
            (account, account)).fetchone()
        return row[0]

    def balances(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT account, balance FROM balances WHERE balance != 0 "
                                    "ORDER BY account"))

    def pending(self) -> list[tuple[str, Receipt, str | None]]:
        """Unsettled receipts: (id, receipt, signature of the batch it is in, if any)."""
        rows = self.db.execute(
            "SELECT r.id, r.body, b.signature FROM receipts r LEFT JOIN batches b ON "
            "b.id = r.batch WHERE b.status IS NULL OR b.status != 'settled' "
            "ORDER BY r.recorded, r.id").fetchall()
        return [(rid, msgspec.json.decode(body, type=Receipt), sig) for rid, body, sig in rows]

    def history(self, account: str | None = None, limit: int = 50) -> list[dict]:
        """The latest entries of ``account``, newest first."""
        account = account or self.owner
        rows = self.db.execute(
            "SELECT COALESCE(e.receipt, e.deposit), e.role, e.amount, e.skin, "
            "COALESCE(r.recorded, d.recorded), b.status, b.signature, d.note FROM entries e "
            "LEFT JOIN receipts r ON r.id = e.receipt LEFT JOIN deposits d ON d.id = e.deposit "
            "LEFT JOIN batches b ON b.id = r.batch WHERE e.account = ? ORDER BY e.id DESC LIMIT ?",
            (account, limit)).fetchall()
        return [dict(ref=ref, role=role, amount=amount, skin=skin, time=t,
                     settled=(status == "settled") if ref and role != "deposit" else True,
                     signature=sig, note=note)
                for ref, role, amount, skin, t, status, sig, note in rows]

    def earned_since(self, since: float, account: str | None = None) -> int:
        """Micro-gold ``account`` earned (as worker or creator) from receipts recorded at or
        after ``since`` (a Unix time): what the game reports as earned while the player was
        away."""
        account = account or self.owner
        return self.db.execute(
            "SELECT COALESCE(SUM(e.amount), 0) FROM entries e JOIN receipts r ON r.id = e.receipt "
            "WHERE e.account = ? AND e.role IN ('worker', 'royalty') AND r.recorded >= ?",
            (account, since)).fetchone()[0]

    def royalties_from(self, skin_id: str) -> dict[str, tuple[int, int]]:
        """What each creator earned from jobs that wore ``skin_id``, as far as this ledger's
        receipts go: creator -> (settled, pending) micro-gold."""
        out: dict[str, list[int]] = {}
        for creator, amount, status in self.db.execute(
                "SELECT e.account, e.amount, b.status FROM entries e JOIN receipts r ON "
                "r.id = e.receipt LEFT JOIN batches b ON b.id = r.batch WHERE r.skin = ? AND "
                "e.role = 'royalty'", (skin_id,)):
            slot = out.setdefault(creator, [0, 0])
            slot[0 if status == "settled" else 1] += amount
        return {creator: (settled, pending) for creator, (settled, pending) in out.items()}

    def receipt_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]

    def receipts_by_id(self, ids: list[str]) -> list[tuple[Receipt, list[RoyaltyShare]] | None]:
        """The stored receipt (and its split) for each id, None where this ledger has none."""
        out = []
        for rid in ids:
            row = self.db.execute("SELECT body FROM receipts WHERE id = ?", (rid,)).fetchone()
            out.append(None if row is None else (msgspec.json.decode(row[0], type=Receipt),
                                                 self._stored_split(rid)))
        return out

    def batch_receipts(self, batch_id: int) -> list[tuple[Receipt, list[RoyaltyShare]]]:
        rows = self.db.execute("SELECT id, body FROM receipts WHERE batch = ? ORDER BY id",
                               (batch_id,)).fetchall()
        return [(msgspec.json.decode(body, type=Receipt), self._stored_split(rid))
                for rid, body in rows]

    def audit(self) -> AuditReport:
        """Recompute every balance from the stored receipts and deposits alone and compare."""
        problems: list[str] = []
        expected: dict[str, int] = {}
        stored: dict[str, list[tuple]] = {}
        for rid, account, role, skin, amount in self.db.execute(
                "SELECT receipt, account, role, skin, amount FROM entries WHERE receipt IS NOT "
                "NULL ORDER BY id"):
            stored.setdefault(rid, []).append((account, role, amount, skin))
        receipts = 0
        for rid, blob in self.db.execute("SELECT id, body FROM receipts ORDER BY id").fetchall():
            receipts += 1
            try:
                receipt = msgspec.json.decode(blob, type=Receipt)
                if verify_receipt(receipt) != rid:
                    problems.append(f"receipt {rid[:12]}… is stored under the wrong id")
                    continue
                split = check_split(receipt.body.skin, self._stored_split(rid))
            except (msgspec.DecodeError, ReceiptError, LedgerError) as e:
                problems.append(f"receipt {rid[:12]}… no longer verifies: {e}")
                continue
            want = entries_for(receipt, split)
            for e in want:
                expected[e.account] = expected.get(e.account, 0) + e.amount
            if sorted((e.account, e.role, e.amount, e.skin) for e in want) != sorted(
                    stored.get(rid, [])):
                problems.append(f"receipt {rid[:12]}…: its entries differ from what it says")
        deposits = 0
        for did, account, amount in self.db.execute("SELECT id, account, amount FROM deposits"):
            deposits += 1
            expected[account] = expected.get(account, 0) + amount
            expected[OUTSIDE] = expected.get(OUTSIDE, 0) - amount
        booked = self.balances()
        summed = dict(self.db.execute("SELECT account, SUM(amount) FROM entries GROUP BY account"))
        for account in sorted(set(summed) | set(booked)):
            if summed.get(account, 0) != booked.get(account, 0):
                problems.append(f"{account[:12]}…: the running balance {booked.get(account, 0)} "
                                f"differs from its entries ({summed.get(account, 0)})")
        for account in sorted(set(expected) | set(booked)):
            if expected.get(account, 0) != booked.get(account, 0):
                problems.append(f"{account[:12]}…: the book says {booked.get(account, 0)}, its "
                                f"receipts give {expected.get(account, 0)}")
        if sum(booked.values()) != 0:
            problems.append(f"the entries sum to {sum(booked.values())}, not 0")
        if booked.get(self.owner, 0) < 0:
            problems.append(f"the owner's balance is negative ({booked[self.owner]})")
        return AuditReport(receipts, deposits, problems, booked)

    # ---- internals -----------------------------------------------------------------------------

    def _balance(self, account: str) -> int:
        row = self.db.execute("SELECT balance FROM balances WHERE account = ?",
                              (account,)).fetchone()
        return row[0] if row else 0

    def _add_to_balances(self, changes: Iterable[tuple[str, int]]) -> None:
        self.db.executemany("INSERT INTO balances VALUES (?, ?) ON CONFLICT(account) DO UPDATE "
                            "SET balance = balance + excluded.balance", list(changes))

    def _stored_split(self, rid: str) -> list[RoyaltyShare]:
        return [(c, s, Fraction(n, d)) for c, s, n, d in self.db.execute(
            "SELECT creator, skin, share_num, share_den FROM royalty_splits WHERE receipt = ? "
            "ORDER BY position", (rid,))]

    @staticmethod
    def _batch(row) -> Batch:
        return Batch(*row)
