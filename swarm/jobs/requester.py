"""The requester: splits a job into shards, hands them to workers, checks a sample of the work by
re-scoring it, and co-signs a receipt for every shard it accepts.

One thread runs the network (a CURVE DEALER per worker, polled together); one re-scores claims on
the requester's own model so checking never stalls the heartbeats. By default no worker sees more
than one shard of a job; a shard to be redone goes to a worker that has not seen the job if one is
left, else to any worker still trusted. A shard is reassigned when its worker's heartbeats stop for
``heartbeat_timeout`` seconds, when the worker gives it back, or when its claim fails re-scoring.

Checking: every worker's first result in a job is re-scored, and so is a random ``verify_fraction``
of all shards. A worker caught cheating gets a signed fraud record, is refused from then on, its
unchecked shards of the job are redone elsewhere, and it is paid nothing for the job: receipts are
signed only when the job is complete, and never for a caught worker.

A requester without the model has other workers (never the claimant) re-score claims. One
checker's acceptance stands; one checker's rejection convicts nobody until a second, different
checker rejects the claims too, and the fraud record then carries both verdicts. When the second
checker accepts, the two disagree and one of them lies: nobody is convicted, the claims are set
aside unpaid and the shard redone by another worker, and neither checker is asked to check again
in the job. A rejection nobody is left to confirm is set aside the same way. A check is work,
and paid: when the job completes the checker gets a receipt for each check it answered (the
claims' prompt and claimed tokens as tokens in, none out, at its offer price), co-signed like a
shard's, unless it was caught cheating.

Everything accepted is in the job store before it counts, so a killed requester that runs the job
again buys only the shards it did not hold. Results from anyone but the shard's current worker,
and any result for a shard already accepted, are ignored.

With ``escrow`` funds (``swarm/jobs/job_escrow.py``) a shard (or claims to check) is sent only
once gold covering it is locked for its worker, the assignment names that escrow so the worker
can check it on chain, and when the job completes each worker's receipts, for shards and checks,
are paid out of its escrow (the worker co-signs) and the rest is returned. A requester that
cannot lock the budget is refused before anything is sent.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import msgspec
import zmq
from solders.message import Message
from solders.signature import Signature

from common.identity import Identity
from swarm.credits.chain import ChainError
from swarm.credits.escrow import EscrowError
from swarm.credits.ledger import LedgerError
from swarm.jobs import protocol as p
from swarm.jobs import transport
from swarm.jobs.backend import Completion, InferenceBackend, WorkItem
from swarm.jobs.fraud import CheckerVerdict, FraudRecord, sign_fraud
from swarm.jobs.job_escrow import (
    DEFAULT_BUDGET_FACTOR, EscrowFunds, JobEscrow, hex_address, max_cost,
)
from swarm.jobs.job_store import FINISHED, JobStore
from swarm.jobs.offers import Offer, OfferError, SignedOffer, verify_offer
from swarm.jobs.receipt import (
    Receipt, ReceiptBody, ReceiptError, amount_for, check_tokens, receipt_id, sign_body,
    verify_receipt,
)

POLL_MS = 20
DEFAULT_VERIFY_FRACTION = 0.10
DEFAULT_HEARTBEAT_TIMEOUT = 5.0
FINISH_REASONS = ("stop", "length")

PENDING, ASSIGNED, VERIFYING, ACCEPTED = "pending", "assigned", "verifying", "accepted"


class JobError(Exception):
    """The job cannot go on (no worker left, no model to check with...). What was accepted so
    far stays in the job store, and running the job again resumes it."""


def job_id(data: bytes, model: str, skin: str | None) -> str:
    """A job is its input file, model and skin: the same three resume the same job."""
    return blake3.blake3(b"hearth-job-v1\x00" + model.encode() + b"\x00"
                         + (skin or "").encode() + b"\x00" + data).hexdigest()


def check_cost(claims: list[Completion], price_per_1k: int) -> int:
    """What re-scoring ``claims`` earns a checker."""
    return amount_for(check_tokens(claims), 0, price_per_1k)


def plan_shards(items: list[WorkItem], count: int) -> list[list[WorkItem]]:
    """``items`` in ``count`` contiguous shards whose sizes differ by at most one."""
    count = max(1, min(count, len(items)))
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


@dataclass
class Progress:
    shards: int
    accepted: int
    verifying: int
    reassigned: int
    caught: int
    workers: int  # workers in use now
    tokens_out: int
    elapsed: float


@dataclass
class JobOutcome:
    job: str
    completions: dict[str, Completion]
    shards: int
    verified_shards: int
    reassigned: int
    ignored_results: int  # duplicate, late or unasked-for results
    caught: list[str]  # workers caught cheating in this job
    receipts: int
    paid: int  # micro-gold in co-signed receipts for this job
    budget: int = 0  # micro-gold the job could lock in escrow (0: no escrow)
    released: int = 0  # micro-gold paid out of escrow in this run
    refunded: int = 0  # micro-gold returned from escrow in this run
    escrows_open: int = 0  # escrows still holding gold: their workers must co-sign later
    escrow_problems: list[str] = field(default_factory=list)
    disputes: int = 0  # claims two checking workers disagreed on (set aside, shard redone)


@dataclass
class _Link:
    offer: Offer
    sock: zmq.Socket
    shard: int | None = None
    had_shard: bool = False
    verified: bool = False  # a result of this worker was re-scored in this job
    usable: bool = True


@dataclass
class _Slot:
    index: int
    items: list[WorkItem]
    status: str = PENDING
    worker: str | None = None
    deadline: float = 0.0
    ids: frozenset[str] = field(default_factory=frozenset)
    checker: str | None = None  # the second worker re-scoring this shard's claims
    claims: list[Completion] = field(default_factory=list)
    #: A checking worker's rejection of the claims, awaiting a second checker's confirmation:
    #: (checker, item, claim, verdict).
    rejection: tuple | None = None
    #: Workers whose claims for this shard were set aside unresolved: not given it again.
    set_aside: set[str] = field(default_factory=set)


class Requester:
    """Runs jobs for ``identity``, recording them in ``store``. ``verifier`` is the model the
    requester re-scores claims with (its ``model_id`` must be the job's model); with None, a
    second worker (never the claimant) re-scores them, which is only as trustworthy as that
    worker."""

    def __init__(self, identity: Identity, store: JobStore, verifier: InferenceBackend | None, *,
                 verify_fraction: float = DEFAULT_VERIFY_FRACTION,
                 heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                 max_price: int | None = None, max_workers: int | None = None,
                 shard_items: int | None = None, receipt_timeout: float = 5.0,
                 rng: random.Random | None = None, escrow: EscrowFunds | None = None):
        if not 0.0 <= verify_fraction <= 1.0:
            raise ValueError("verify_fraction is a fraction from 0 to 1")
        self.identity = identity
        self.store = store
        self.verifier = verifier
        self.verify_fraction = verify_fraction
        self.heartbeat_timeout = heartbeat_timeout
        self.max_price = max_price
        self.max_workers = max_workers
        self.shard_items = shard_items
        self.receipt_timeout = receipt_timeout
        self.rng = rng or random.Random()
        self.escrow = escrow

    # ---- choosing workers ---------------------------------------------------------------------

    def usable_offers(self, offers: list[SignedOffer], model: str, skin: str | None,
                      skin_fetchable: bool = False) -> list[Offer]:
        """Offers whose signature checks, that serve ``model`` (and ``skin``, or with
        ``skin_fetchable`` fetch skins they lack) at no more than ``max_price``, from workers
        never caught cheating: those with the skin first, then cheapest first, one per worker."""
        caught = self.store.caught()
        seen: dict[str, Offer] = {}
        for signed in offers:
            try:
                offer = verify_offer(signed)
            except OfferError:
                continue
            lacks_skin = skin is not None and skin not in offer.skins
            if (model not in offer.models or (lacks_skin and not (skin_fetchable
                                                                  and offer.fetch_skins))
                    or offer.worker in caught or offer.worker == self.identity.public_hex
                    or (self.max_price is not None and offer.price_per_1k > self.max_price)):
                continue
            seen.setdefault(offer.worker, offer)
        ranked = sorted(seen.values(), key=lambda o: (skin is not None and skin not in o.skins,
                                                      o.price_per_1k, o.worker))
        return ranked[: self.max_workers] if self.max_workers else ranked

    # ---- the job ------------------------------------------------------------------------------

    def run(self, job: str, model: str, skin: str | None, items: list[WorkItem],
            offers: list[SignedOffer], *, input_name: str = "", output_name: str = "",
            progress: Callable[[Progress], None] | None = None,
            timeout: float | None = None, budget: int | None = None,
            skin_magnet: str | None = None, skin_peers: list[str] = ()) -> JobOutcome:
        """Complete ``items`` (the job's valid requests, in input order) on the offered workers.
        Raises JobError when no trusted worker is left or ``timeout`` passes first. With escrow
        funds, ``budget`` (default: ``default_budget``) is the most the job locks; EscrowError
        before anything is sent when the wallet cannot lock it. ``skin_magnet`` (with peers
        that seed it, ``skin_peers``) lets workers that lack ``skin`` fetch it."""
        if self.verifier is not None and self.verifier.model_id != model:
            raise JobError(f"the model here ({self.verifier.model_id[:12]}) is not the job's "
                           f"model ({model[:12]}): results could not be checked")
        usable = self.usable_offers(offers, model, skin, skin_fetchable=skin_magnet is not None)
        accepted = self.store.accepted(job) if items else {}
        row = self.store.job(job)
        if row is None:
            count = (math.ceil(len(items) / self.shard_items) if self.shard_items
                     else max(1, len(usable)))
            row = self.store.open_job(job, model, skin, input_name, output_name, len(items),
                                      max(1, min(count, len(items))) if items else 0)
        job_escrow = None
        if self.escrow is not None and items:
            job_escrow = JobEscrow(self.escrow, job, budget or self.default_budget(items, usable))
            try:
                job_escrow.recover()
                if len(accepted) < row.shards:  # shards are still to be sent: gold is needed
                    job_escrow.check_funds()
            except ChainError as e:
                raise EscrowError(f"the chain cannot be used for escrow: {e}") from None
        run = _Run(self, job, model, skin, plan_shards(items, row.shards) if items else [],
                   accepted, usable, progress, timeout, job_escrow)
        if skin is not None and skin_magnet is not None:
            run.skin_magnet, run.skin_peers = skin_magnet, list(skin_peers)
        return run.go()

    @staticmethod
    def default_budget(items: list[WorkItem], offers: list[Offer]) -> int:
        """Twice the most ``items`` can cost at the dearest usable offer: room to redo every
        shard once after a worker vanishes with the gold locked for it."""
        price = max((o.price_per_1k for o in offers), default=0)
        return max(1, DEFAULT_BUDGET_FACTOR * max_cost(items, price))


class _Run:
    """One run of one job (a resumed job is a new run over the same store)."""

    def __init__(self, req: Requester, job: str, model: str, skin: str | None,
                 shards: list[list[WorkItem]], accepted: dict, offers: list[Offer],
                 progress, timeout, escrow: JobEscrow | None = None):
        self.req, self.job, self.model, self.skin = req, job, model, skin
        self.escrow = escrow
        self.skin_magnet: str | None = None  # where workers without the skin fetch it
        self.skin_peers: list[str] = []
        self.refusals: dict[str, str] = {}  # worker -> why it last refused a shard
        self.slots = [_Slot(i, items, ids=frozenset(it.custom_id for it in items))
                      for i, items in enumerate(shards)]
        for i in accepted:
            if i < len(self.slots):
                self.slots[i].status = ACCEPTED
        n = len(self.slots)
        self.sampled = set(req.rng.sample(range(n), math.ceil(req.verify_fraction * n))) if n else set()
        self.offers = offers
        self.progress, self.timeout = progress, timeout
        self.ctx = zmq.Context()
        self.links: dict[str, _Link] = {}
        self.by_sock: dict[zmq.Socket, str] = {}
        self.poller = zmq.Poller()
        self.checks: queue.Queue = queue.Queue()
        self.verdicts: queue.Queue = queue.Queue()
        self.reassigned = self.ignored = self.verified_shards = 0
        self.caught: list[str] = []
        self.disputed: set[str] = set()  # checkers that contradicted another: not asked again
        self.disputes = 0
        self.tokens_out = 0
        self.pending: dict[str, ReceiptBody] = {}  # receipt id -> body sent for countersigning
        self.started = time.monotonic()

    def go(self) -> JobOutcome:
        checker = threading.Thread(target=self._check_loop, daemon=True, name="job-checker")
        checker.start()
        try:
            for offer in self.offers:
                self._connect(offer)
            while any(s.status != ACCEPTED for s in self.slots):
                self._step()
            receipts, paid = self._sign_receipts()
            outcome = JobOutcome(self.job, self.req.store.results(self.job), len(self.slots),
                                 self.verified_shards, self.reassigned, self.ignored,
                                 self.caught, receipts, paid, disputes=self.disputes)
            if self.escrow is not None:
                self._settle_escrows(outcome)
            self.req.store.set_state(self.job, FINISHED)
            return outcome
        finally:
            self.checks.put(None)
            checker.join(5)
            self.ctx.destroy(0)

    def _connect(self, offer: Offer) -> None:
        sock = transport.jobs_client(self.ctx, self.req.identity, bytes.fromhex(offer.curve_key),
                                     offer.endpoint)
        self.links[offer.worker] = _Link(offer, sock)
        self.by_sock[sock] = offer.worker
        self.poller.register(sock, zmq.POLLIN)

    def _drop(self, worker: str) -> None:
        link = self.links[worker]
        link.usable = False
        link.shard = None

    def _step(self) -> None:
        now = time.monotonic()
        if self.timeout is not None and now - self.started > self.timeout:
            raise JobError(f"the job did not finish within {self.timeout:.0f} s")
        self._assign(now)
        busy = any(s.status in (ASSIGNED, VERIFYING) for s in self.slots)
        if not busy:
            left = sum(s.status != ACCEPTED for s in self.slots)
            why = "; ".join(f"{w[:12]}: {m}" for w, m in list(self.refusals.items())[-3:])
            raise JobError(f"no trusted worker is left to serve {left} unfinished shard(s) "
                           f"({len(self.caught)} caught cheating, "
                           f"{sum(not l.usable for l in self.links.values())} unavailable"
                           + (f"; refusals: {why}" if why else "") + ")")
        for sock, _ in self.poller.poll(POLL_MS):
            worker = self.by_sock[sock]
            for _ in range(100):
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = p.decode_to_requester(frame)
                except p.ProtocolError:
                    continue  # a malformed frame is dropped; the worker's heartbeats decide
                self._on_message(worker, msg)
        while True:
            try:
                self._on_verdict(*self.verdicts.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        for slot in self.slots:
            if slot.status == VERIFYING and slot.checker is not None and now > slot.deadline:
                self._drop(slot.checker)
                self._ask_checker(slot)
            if slot.status == ASSIGNED and now > slot.deadline:
                transport.send(self.links[slot.worker].sock, p.Cancel(job=self.job,
                                                                      shard=slot.index))
                self._drop(slot.worker)
                self._requeue(slot)
        if self.progress is not None:
            self.progress(self._progress())

    def _progress(self) -> Progress:
        return Progress(len(self.slots), sum(s.status == ACCEPTED for s in self.slots),
                        sum(s.status == VERIFYING for s in self.slots), self.reassigned,
                        len(self.caught), sum(l.shard is not None for l in self.links.values()),
                        self.tokens_out, time.monotonic() - self.started)

    def _requeue(self, slot: _Slot) -> None:
        slot.status, slot.worker, slot.checker, slot.claims = PENDING, None, None, []
        slot.rejection = None
        self.reassigned += 1

    def _set_aside(self, slot: _Slot) -> None:
        """Neither accept nor convict the slot's claims (checkers disagreed, or no second checker
        could confirm a rejection): they are not paid, the shard goes to another worker, and
        the claimant's next result is checked again."""
        slot.set_aside.add(slot.worker)
        self.links[slot.worker].verified = False
        self._requeue(slot)

    def _assign(self, now: float) -> None:
        for slot in self.slots:
            if slot.status != PENDING:
                continue
            idle = [l for l in self.links.values() if l.usable and l.shard is None
                    and l.offer.worker not in slot.set_aside]
            fresh = [l for l in idle if not l.had_shard]
            pick = (fresh or idle or [None])[0]
            if pick is None:
                continue
            terms = self._lock_for(pick, slot) if self.escrow is not None else None
            msg = p.Assign(job=self.job, shard=slot.index, requester=self.req.identity.public_hex,
                           model=self.model, skin=self.skin, price_per_1k=pick.offer.price_per_1k,
                           items=slot.items, escrow=terms, skin_magnet=self.skin_magnet,
                           skin_peers=self.skin_peers)
            if not transport.send(pick.sock, msg):
                self._drop(pick.offer.worker)
                continue
            pick.shard, pick.had_shard = slot.index, True
            slot.status, slot.worker = ASSIGNED, pick.offer.worker
            slot.deadline = now + self.req.heartbeat_timeout

    def _lock_for(self, link: _Link, slot: _Slot | None = None, *,
                  check: list[Completion] = ()) -> p.EscrowTerms | None:
        """Lock what ``link``'s worker can earn in this job with ``slot`` (or the check of
        ``check``, claims to re-score) added: its accepted shards and finished checks at their
        cost, the shards it holds and ``slot`` at their most, the checks it runs at their
        cost."""
        worker, price = link.offer.worker, link.offer.price_per_1k
        store = self.req.store
        needed = sum(amount_for(s.tokens_in, s.tokens_out, s.price_per_1k)
                     for s in store.accepted(self.job).values()
                     if s.worker == worker and not s.forfeit)
        needed += sum(amount_for(c.tokens_in, 0, c.price_per_1k)
                      for c in store.checks(self.job) if c.checker == worker)
        needed += sum(max_cost(s.items, price) for s in self.slots
                      if s.status in (ASSIGNED, VERIFYING) and s.worker == worker)
        needed += sum(check_cost(s.claims, price) for s in self.slots
                      if s.status == VERIFYING and s.checker == worker)
        if slot is None:
            needed += check_cost(check, price)
            return self._terms(worker, needed, needed)
        needed += max_cost(slot.items, price)
        # its even share of the shards still waiting, locked now if the budget allows
        waiting = [s for s in self.slots if s.status == PENDING and s is not slot]
        usable = sum(l.usable for l in self.links.values())
        share = math.ceil(len(waiting) / max(1, usable))
        return self._terms(worker, needed,
                           needed + sum(max_cost(s.items, price) for s in waiting[:share]))

    def _terms(self, worker: str, needed: int, wanted: int) -> p.EscrowTerms | None:
        try:
            return self.escrow.terms_for(worker, needed, wanted)
        except (EscrowError, ChainError, LedgerError) as e:
            raise JobError(f"cannot lock gold for worker {worker[:12]}: {e}") from None

    def _current(self, worker: str, shard: int | None) -> _Slot | None:
        """The slot ``shard`` if ``worker`` is the one working on it now, else None."""
        if shard is None or not 0 <= shard < len(self.slots):
            return None
        slot = self.slots[shard]
        return slot if slot.status == ASSIGNED and slot.worker == worker else None

    def _checking(self, worker: str, shard: int | None) -> _Slot | None:
        """The slot ``shard`` if ``worker`` is re-scoring it for us now, else None."""
        if shard is None or not 0 <= shard < len(self.slots):
            return None
        slot = self.slots[shard]
        return slot if slot.status == VERIFYING and slot.checker == worker else None

    def _on_message(self, worker: str, msg) -> None:
        link = self.links[worker]
        if isinstance(msg, (p.Accepted, p.Heartbeat)):
            slot = self._current(worker, msg.shard) if msg.job == self.job else None
            slot = slot or (self._checking(worker, msg.shard) if msg.job == self.job else None)
            if slot is not None:
                slot.deadline = time.monotonic() + self.req.heartbeat_timeout
        elif isinstance(msg, p.Rescored):
            slot = self._checking(worker, msg.shard) if msg.job == self.job else None
            if slot is None:
                self.ignored += 1
                return
            self._on_rescored(slot, worker, msg.verdicts)
        elif isinstance(msg, p.Result):
            slot = self._current(worker, msg.shard) if msg.job == self.job else None
            if slot is None:
                self.ignored += 1
                return
            link.shard = None
            self._on_result(slot, worker, msg.completions)
        elif isinstance(msg, (p.ShardReleased, p.Error)):
            slot = self._current(worker, msg.shard) if msg.job == self.job else None
            if slot is not None:
                if isinstance(msg, p.Error):
                    self.refusals[worker] = f"{msg.code}: {msg.message}"
                self._drop(worker)  # paused, busy or failing: not this job's worker any more
                self._requeue(slot)
            checked = self._checking(worker, msg.shard) if msg.job == self.job else None
            if checked is not None:
                self._drop(worker)
                self._ask_checker(checked)
        elif isinstance(msg, p.Countersigned):
            self._on_countersigned(worker, msg.receipt)

    # ---- results and checking -----------------------------------------------------------------

    def _on_result(self, slot: _Slot, worker: str, completions: list[Completion]) -> None:
        problem = self._shape_problem(slot, completions)
        if problem is not None:
            self._convict(slot, worker, None, None, None, problem)
            return
        link = self.links[worker]
        if slot.index in self.sampled or not link.verified:
            link.verified = True
            slot.status = VERIFYING
            if self.req.verifier is not None:
                self.checks.put((slot.index, worker, slot.items, completions))
            else:
                slot.claims = completions
                self._ask_checker(slot)
        else:
            self._accept(slot, worker, completions, verified=False)

    def _ask_checker(self, slot: _Slot) -> None:
        """Send the slot's claims to another worker to re-score: an idle one if any, never the
        claimant, never a checker caught contradicting another, and to confirm a rejection
        never the worker that rejected. With none left to check the claims at all, the job
        cannot be checked, so it stops (resumably); with none left to confirm a rejection, the
        claims are set aside and the shard redone."""
        claimant = slot.worker
        rejecter = slot.rejection[0] if slot.rejection is not None else None
        others = [l for l in self.links.values() if l.usable
                  and l.offer.worker not in (claimant, rejecter)
                  and l.offer.worker not in self.disputed]
        others.sort(key=lambda l: l.shard is not None)
        by_id = {c.custom_id: c for c in slot.claims}
        claims = [by_id[it.custom_id] for it in slot.items]
        for link in others:
            terms = (self._lock_for(link, check=claims) if self.escrow is not None else None)
            msg = p.Rescore(job=self.job, shard=slot.index, requester=self.req.identity.public_hex,
                            model=self.model, skin=self.skin, items=slot.items, claims=claims,
                            escrow=terms, skin_magnet=self.skin_magnet,
                            skin_peers=self.skin_peers)
            if transport.send(link.sock, msg):
                slot.checker = link.offer.worker
                slot.deadline = time.monotonic() + self.req.heartbeat_timeout
                return
            self._drop(link.offer.worker)
        if rejecter is not None:
            self._set_aside(slot)
            return
        raise JobError("no second worker is left to check results with, and this machine "
                       "has no copy of the model")

    def _on_rescored(self, slot: _Slot, checker: str, verdicts) -> None:
        if len(verdicts) != len(slot.items):
            self._drop(checker)
            self._ask_checker(slot)
            return
        # whatever its verdict, the check is work done: the checker is owed a receipt for it
        self.req.store.add_check(self.job, slot.index, checker, check_tokens(slot.claims),
                                 self.links[checker].offer.price_per_1k)
        by_id = {c.custom_id: c for c in slot.claims}
        failure = next(((checker, item, by_id[item.custom_id], verdict)
                        for item, verdict in zip(slot.items, verdicts) if not verdict.ok), None)
        slot.checker = None
        first, slot.rejection = slot.rejection, None
        if first is None and failure is None:
            self._on_verdict(slot.index, slot.worker, slot.claims, None)
        elif first is None:  # one checker's word convicts nobody: ask another to confirm
            slot.rejection = failure
            self._ask_checker(slot)
        elif failure is None:  # the checkers disagree, so one of them lies: trust neither
            self.disputed |= {first[0], checker}
            self.disputes += 1
            self._set_aside(slot)
            for other in self.slots:  # checks they are still running go to someone else
                if other.status == VERIFYING and other.checker in self.disputed:
                    self._ask_checker(other)
        else:
            _, item, claim, verdict = first
            checks = [CheckerVerdict(w, it.custom_id, v) for w, it, _, v in (first, failure)]
            self._convict(slot, slot.worker, item, claim, verdict.first_mismatch,
                          f"re-scored by workers {first[0]} and {checker}: {verdict.reason}",
                          checks)

    @staticmethod
    def _shape_problem(slot: _Slot, completions: list[Completion]) -> str | None:
        by_id = {it.custom_id: it for it in slot.items}
        ids = [c.custom_id for c in completions]
        if len(ids) != len(set(ids)) or set(ids) != slot.ids:
            return "the result does not answer exactly the shard's requests"
        for c in completions:
            if c.finish_reason not in FINISH_REASONS:
                return f"{c.custom_id}: finish reason {c.finish_reason!r}"
            if len(c.tokens) > by_id[c.custom_id].max_tokens:
                return f"{c.custom_id}: more tokens than max_tokens"
            if c.prompt_tokens < 0:
                return f"{c.custom_id}: negative prompt tokens"
        return None

    def _check_loop(self) -> None:
        while True:
            task = self.checks.get()
            if task is None:
                return
            index, worker, items, completions = task
            by_id = {c.custom_id: c for c in completions}
            failure = None
            try:
                for item in items:
                    verdict = self.req.verifier.rescore(item, by_id[item.custom_id], self.skin)
                    if not verdict.ok:
                        failure = (item, by_id[item.custom_id], verdict)
                        break
            except Exception as e:  # the checker failing is not the worker's fault: redo
                failure = ("error", f"{type(e).__name__}: {e}")
            self.verdicts.put((index, worker, completions, failure))

    def _on_verdict(self, index: int, worker: str, completions, failure) -> None:
        slot = self.slots[index]
        if slot.status != VERIFYING or slot.worker != worker:
            return  # the worker was caught on another shard meanwhile: this result is void
        if failure is None:
            self.verified_shards += 1
            self._accept(slot, worker, completions, verified=True)
        elif failure[0] == "error":
            raise JobError(f"re-scoring failed: {failure[1]}")
        else:
            item, claim, verdict = failure
            self._convict(slot, worker, item, claim, verdict.first_mismatch, verdict.reason)

    def _accept(self, slot: _Slot, worker: str, completions: list[Completion],
                verified: bool) -> None:
        self.req.store.accept_shard(self.job, slot.index, worker, verified, completions,
                                    self.links[worker].offer.price_per_1k)
        slot.status, slot.worker = ACCEPTED, worker
        self.tokens_out += sum(len(c.tokens) for c in completions)

    def _convict(self, slot: _Slot, worker: str, item, claim, mismatch, reason: str,
                 checks: list[CheckerVerdict] = ()) -> None:
        record = FraudRecord(requester=self.req.identity.public_hex, worker=worker, job=self.job,
                             shard=slot.index, model=self.model, skin=self.skin, item=item,
                             claim=claim, first_mismatch=mismatch, reason=reason,
                             created=int(time.time()), checks=list(checks))
        signed = sign_fraud(record, self.req.identity)
        self.req.store.add_fraud(worker, self.job, slot.index, msgspec.json.encode(signed))
        self.caught.append(worker)
        self._drop(worker)
        self._requeue(slot)
        for index in self.req.store.forfeit_worker(self.job, worker):
            other = self.slots[index]
            if other.status == ACCEPTED:
                self._requeue(other)
        for other in self.slots:  # whatever else they are doing or did for this job is void
            if other.rejection is not None and other.rejection[0] == worker:
                other.rejection = None  # a cheat's rejection needs no confirming: it is void
            if other.status in (ASSIGNED, VERIFYING) and other.worker == worker:
                transport.send(self.links[worker].sock, p.Cancel(job=self.job, shard=other.index))
                self._requeue(other)
            elif other.status == VERIFYING and other.checker == worker:
                self._ask_checker(other)  # a cheat's verdict on others is worth nothing

    # ---- receipts -----------------------------------------------------------------------------

    def _owed(self) -> list[ReceiptBody]:
        """The receipt bodies this job owes: one per accepted shard, unless its worker was
        caught cheating (in this job or before), and one per shard another worker checked
        (however often), unless that checker was caught. A check's receipt counts the prompts
        and claimed tokens re-scored as tokens in and nothing out, at the checker's price; a
        receipt's id is its body's hash, so it is told apart from the checker's receipt for
        serving the same shard by what that shard generated."""
        store = self.req.store
        caught = store.caught()
        rows = [(index, s.worker, s.tokens_in, s.tokens_out, s.price_per_1k)
                for index, s in store.accepted(self.job).items()
                if not s.forfeit and s.worker not in caught]
        rows += [(c.shard, c.checker, c.tokens_in, 0, c.price_per_1k)
                 for c in store.checks(self.job) if c.checker not in caught]
        return [ReceiptBody(job=self.job, shard=index, requester=self.req.identity.public_hex,
                            worker=worker, model=self.model, skin=self.skin, tokens_in=t_in,
                            tokens_out=t_out, price_per_1k=price,
                            amount=amount_for(t_in, t_out, price))
                for index, worker, t_in, t_out, price in rows]

    def _sign_receipts(self) -> tuple[int, int]:
        """Co-sign every receipt the job owes (``_owed``) and does not hold yet; wait (bounded)
        for the workers to countersign."""
        store = self.req.store
        done = {receipt_id(r.body) for r in store.receipts(self.job)}
        for body in self._owed():
            rid = receipt_id(body)
            link = self.links.get(body.worker)
            if rid in done or link is None:
                continue  # held already, or that worker is not reachable: a later run signs it
            msg = p.SignReceipt(body=body, requester_sig=sign_body(body, self.req.identity))
            if transport.send(link.sock, msg):
                self.pending[rid] = body
        deadline = time.monotonic() + self.req.receipt_timeout
        while self.pending and time.monotonic() < deadline:
            for sock, _ in self.poller.poll(POLL_MS):
                try:
                    msg = p.decode_to_requester(sock.recv(zmq.NOBLOCK))
                except (p.ProtocolError, zmq.Again):
                    continue
                if isinstance(msg, p.Countersigned):
                    self._on_countersigned(self.by_sock[sock], msg.receipt)
        receipts = store.receipts(self.job)
        return len(receipts), sum(r.body.amount for r in receipts)

    # ---- escrow -------------------------------------------------------------------------------

    def _settle_escrows(self, outcome: JobOutcome) -> None:
        """Pay each worker's receipts out of its escrow and return the rest. An escrow is left
        open (for a later run) when its worker is not reachable or is owed a receipt (for a
        shard or a check) not held yet; a refusal or chain failure is reported, never
        half-done."""
        store = self.req.store
        outcome.budget = self.escrow.budget
        receipts, owed = store.receipts(self.job), self._owed()
        for row in self.escrow.rows():
            worker = row["worker"]
            mine = [r for r in receipts if r.body.worker == worker]
            to_pay = {receipt_id(b) for b in owed if b.worker == worker}
            link = self.links.get(worker)
            if link is None or to_pay - {receipt_id(r.body) for r in mine}:
                outcome.escrows_open += 1
                continue
            try:
                released, refunded = self.escrow.settle_worker(
                    worker, mine, lambda m, sig, ids, row=row: self._cosign(link, row, m, sig,
                                                                            ids))
            except (EscrowError, ChainError, LedgerError) as e:
                outcome.escrows_open += 1
                outcome.escrow_problems.append(f"worker {worker[:12]}: {e}")
                continue
            outcome.released += released
            outcome.refunded += refunded

    def _cosign(self, link: _Link, row: dict, message: Message, theirs: Signature,
                receipts: list[str]) -> Signature:
        """Ask ``link``'s worker to co-sign an escrow release (``receipts`` given) or refund,
        waiting at most ``receipt_timeout`` for its answer."""
        account = hex_address(row["account"])
        common = dict(job=self.job, account=account, message=bytes(message),
                      requester_sig=bytes(theirs).hex())
        msg = (p.CosignRelease(receipts=receipts, **common) if receipts
               else p.CosignRefund(requester=self.req.identity.public_hex,
                                   multisig=hex_address(row["multisig"]), **common))
        if not transport.send(link.sock, msg):
            raise EscrowError(f"worker {link.offer.worker[:12]} cannot be reached")
        deadline = time.monotonic() + self.req.receipt_timeout
        while time.monotonic() < deadline:
            if not link.sock.poll(POLL_MS):
                continue
            try:
                answer = p.decode_to_requester(link.sock.recv(zmq.NOBLOCK))
            except (p.ProtocolError, zmq.Again):
                continue
            if isinstance(answer, p.Cosigned) and (answer.job, answer.account) == (self.job,
                                                                                   account):
                return Signature.from_bytes(bytes.fromhex(answer.signature))
            if isinstance(answer, p.Error) and answer.code == p.ESCROW and answer.job == self.job:
                raise EscrowError(f"worker {link.offer.worker[:12]} refused to co-sign: "
                                  f"{answer.message}")
        raise EscrowError(f"worker {link.offer.worker[:12]} did not co-sign within "
                          f"{self.req.receipt_timeout:.0f} s")

    def _on_countersigned(self, worker: str, receipt: Receipt) -> None:
        key = receipt_id(receipt.body)
        body = self.pending.get(key)
        if body is None or receipt.body != body or body.worker != worker:
            return
        try:
            verify_receipt(receipt)
        except ReceiptError:
            return
        self.req.store.add_receipt(receipt)
        del self.pending[key]
