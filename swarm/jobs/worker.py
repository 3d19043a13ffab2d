"""The worker: accepts shards over ZeroMQ, runs them on an InferenceBackend, answers with the
claimed completions, and countersigns the receipts requesters sign for them.

Two threads: the network loop owns both sockets (ZeroMQ sockets are not thread-safe) and the
compute thread feeds shards to the backend one at a time (the backend batches the requests of a
shard). They meet through a queue the loop drains between polls. While a shard is queued or
running, the loop sends its requester a heartbeat every ``heartbeat_interval`` seconds; a requester
that hears none for its timeout gives the shard to someone else. A frame that is not a message gets
an error reply (or, when even that cannot be delivered, nothing) and the loop goes on.

Escrow (``swarm/jobs/worker_escrow.py``): an assignment (or a check) that names an escrow is
checked on chain before it is accepted, and refused (``escrow``) when the escrow is not what it
claims; with ``require_escrow`` one that names none is refused (``unescrowed``). Without a chain
client the worker cannot check escrows nor co-sign their transactions, so it refuses escrowed
assignments and checks and serves unescrowed ones.

Checks: a requester without the model sends another worker's claims to re-score (``Rescore``).
The worker answers one verdict per claim and records the check in its store (the claims' prompt
and claimed tokens, its own price) like a served shard, so the receipt the requester signs for
the check when the job completes (those tokens in, none out) is countersigned and kept like any
other.

Skins (``swarm/jobs/skin_fetch.py``): with a ``skin_fetcher`` the worker takes a shard whose skin
it lacks when the assignment names the skin's magnet link. A third thread fetches, verifies and
installs the skin while the network loop keeps the shard's heartbeats going, then hands the shard
to the compute thread; a fetch that fails is answered with a ``skin`` error (nothing installed).
Without a fetcher such a shard is refused at once. The compute thread wears one skin per shard
(one ``generate`` call, so the adapter never changes within a batch) and, among the shards
waiting, runs next one with the skin it wears already, so adapters swap between groups of shards
rather than between every shard; a shard passed over ``MAX_PASSED_OVER`` times goes next.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq

from common.identity import Identity
from swarm.jobs import protocol as p
from swarm.jobs import transport
from swarm.jobs.away import AlwaysOpen
from swarm.jobs.backend import Completion, Gate, InferenceBackend, Released
from swarm.jobs.offers import Offer, SignedOffer, sign_offer
from swarm.jobs.receipt import Receipt, ReceiptError, check_tokens, sign_body, verify_receipt
from swarm.jobs.worker_escrow import WorkerEscrow
from swarm.jobs.worker_store import WorkerStore

if TYPE_CHECKING:
    from swarm.jobs.skin_fetch import SkinFetcher

POLL_MS = 20
#: Shards waiting behind the running one; more are refused with ``busy``.
MAX_QUEUED_SHARDS = 4
#: A waiting shard lets shards wearing the current skin go first at most this many times.
MAX_PASSED_OVER = 2


@dataclass
class _Shard:
    peer: bytes
    assign: p.Assign | p.Rescore  # work to do, or another worker's claims to check
    done: int = 0
    cancelled: bool = False
    passed_over: int = 0


@dataclass
class WorkerStats:
    shards_served: int = 0
    tokens_generated: int = 0
    shards_released: int = 0
    shards_checked: int = 0  # other workers' claims re-scored for a requester
    receipts_held: int = 0
    receipts_amount: int = 0  # micro-gold
    frames_refused: int = 0
    skins_fetched: int = 0
    skin_fetches_failed: int = 0
    skin_swaps: int = 0  # times the compute thread changed the skin it wears
    running: list[str] = field(default_factory=list)  # "job:shard" being worked on or queued


def _work_key(msg: p.Assign | p.Rescore, peer: bytes) -> tuple[str, int, bytes, bool]:
    """Which piece of work ``msg`` is: a check of a shard's claims and the shard itself,
    redone here, are two."""
    return msg.job, msg.shard, peer, isinstance(msg, p.Rescore)


class Worker:
    """Serves shards of ``backend.model_id``. ``listen`` is the offer socket's HOST:PORT (what the
    DHT announces and ``--peer`` names); the CURVE jobs socket binds ``jobs_listen`` (default: the
    same host, the next port, or any free port when ``listen`` has port 0). ``advertise_host`` is
    the host written in the offer (default: the listen host, 127.0.0.1 for a wildcard)."""

    def __init__(self, backend: InferenceBackend, identity: Identity, store: WorkerStore, *,
                 listen: str = "127.0.0.1:0", jobs_listen: str | None = None,
                 advertise_host: str | None = None, price_per_1k: int = 100, capacity: int = 8,
                 skins: tuple[str, ...] = (), gate: Gate | None = None,
                 heartbeat_interval: float = 0.5, escrow: WorkerEscrow | None = None,
                 require_escrow: bool = False, skin_fetcher: SkinFetcher | None = None):
        if require_escrow and escrow is None:
            raise ValueError("require_escrow needs a chain to check escrows on")
        self.backend = backend
        self.escrow = escrow
        self.require_escrow = require_escrow
        self.identity = identity
        self.store = store
        self.price_per_1k = price_per_1k
        self.capacity = capacity
        self.skins = tuple(sorted(skins))
        self.skin_fetcher = skin_fetcher
        self.gate = gate or AlwaysOpen()
        self.heartbeat_interval = heartbeat_interval
        host, _, port = listen.rpartition(":")
        self._listen = listen
        self._jobs_listen = jobs_listen or f"{host}:{int(port) + 1 if int(port) else 0}"
        self._advertise = advertise_host or ("127.0.0.1" if host in ("0.0.0.0", "*", "") else host)
        self._model = backend.model_id
        self._ctx = zmq.Context()
        self._work: queue.Queue[_Shard | None] = queue.Queue()
        self._fetches: queue.Queue[_Shard | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[_Shard, p.Msg]] = queue.Queue()
        #: (job, shard, requester's peer id, is a check) -> the work queued or running: a check
        #: of a shard's claims and the shard itself, redone here, are two pieces of work.
        self._shards: dict[tuple[str, int, bytes, bool], _Shard] = {}
        self._stop = threading.Event()
        self._closing = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.stats = WorkerStats()
        self.offer_endpoint = ""
        self.jobs_endpoint = ""
        self._signed: SignedOffer | None = None

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> Worker:
        self._offers = transport.offer_server(self._ctx, self._listen)
        self._jobs = transport.jobs_server(self._ctx, self.identity, self._jobs_listen)
        self.offer_endpoint = self._public(transport.bound_endpoint(self._offers))
        self.jobs_endpoint = self._public(transport.bound_endpoint(self._jobs))
        self.stats.receipts_held, self.stats.receipts_amount = self.store.totals()
        for target in (self._serve, self._compute, self._fetch_skins):
            t = threading.Thread(target=target, daemon=True, name=f"worker-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop serving (safe to call twice, from any thread; a second caller waits for the
        first). The sockets belong to the network thread alone, so the context is destroyed only
        once that thread has left its loop; a shard still computing is abandoned (no receipt)."""
        with self._closing:
            if self._closed:
                return
            self._stop.set()
            self._work.put(None)
            self._fetches.put(None)
            for t in self._threads:
                if t is threading.current_thread():
                    continue
                t.join(None if t.name == "worker-_serve" else 10)
            self._ctx.destroy(0)
            self._closed = True

    def _public(self, bound: str) -> str:
        return f"{self._advertise}:{bound.rpartition(':')[2]}"

    @property
    def curve_key(self) -> bytes:
        return self.identity.curve_keypair()[0]

    def signed_offer(self) -> SignedOffer:
        """The offer as of now (re-signed hourly so it stays fresh)."""
        if self._signed is None or time.time() - self._signed.offer.issued > 3600:
            offer = Offer(worker=self.identity.public_hex, models=[self._model],
                          skins=list(self.skins), price_per_1k=self.price_per_1k,
                          capacity=self.capacity, endpoint=self.jobs_endpoint,
                          curve_key=self.curve_key.hex(), issued=int(time.time()),
                          fetch_skins=self.skin_fetcher is not None)
            self._signed = sign_offer(offer, self.identity)
        return self._signed

    # ---- the network loop ---------------------------------------------------------------------

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._offers, zmq.POLLIN)
        poller.register(self._jobs, zmq.POLLIN)
        next_beat = time.monotonic()
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(POLL_MS))
            except zmq.ZMQError:
                break
            if self._offers in ready:
                self._drain(self._offers, self._on_offer_frame)
            if self._jobs in ready:
                self._drain(self._jobs, self._on_jobs_frame)
            self._flush_outbox()
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + self.heartbeat_interval

    def _drain(self, sock: zmq.Socket, handle) -> None:
        for _ in range(100):  # bounded, so one flood cannot starve the other socket
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:  # a ROUTER frame is [peer, message]; anything else is noise
                self.stats.frames_refused += 1
                continue
            handle(frames[0], frames[1])

    def _on_offer_frame(self, peer: bytes, frame: bytes) -> None:
        try:
            msg = p.decode_to_worker(frame, p.MAX_HELLO_BYTES)
        except p.ProtocolError as e:
            self.stats.frames_refused += 1
            transport.reply(self._offers, peer, p.Error(code=p.MALFORMED, message=str(e)))
            return
        if isinstance(msg, p.Hello):
            transport.reply(self._offers, peer, p.OfferReply(signed=self.signed_offer()))
        else:
            transport.reply(self._offers, peer, p.Error(
                code=p.MALFORMED, message="the offer socket answers hellos only"))

    def _on_jobs_frame(self, peer: bytes, frame: bytes) -> None:
        try:
            msg = p.decode_to_worker(frame)
        except p.ProtocolError as e:
            self.stats.frames_refused += 1
            transport.reply(self._jobs, peer, p.Error(code=p.MALFORMED, message=str(e)))
            return
        if isinstance(msg, p.Hello):
            transport.reply(self._jobs, peer, p.OfferReply(signed=self.signed_offer()))
        elif isinstance(msg, (p.Assign, p.Rescore)):
            self._on_assign(peer, msg)
        elif isinstance(msg, p.Cancel):
            for key, shard in list(self._shards.items()):
                if key[:2] == (msg.job, msg.shard) and key[2] == peer:
                    shard.cancelled = True
                    del self._shards[key]
        elif isinstance(msg, p.SignReceipt):
            transport.reply(self._jobs, peer, self._countersign(msg))
        elif isinstance(msg, (p.CosignRelease, p.CosignRefund)):
            if self.escrow is None:
                answer = p.Error(code=p.ESCROW, message="this worker has no chain to check "
                                                        "escrows on", job=msg.job)
            elif isinstance(msg, p.CosignRelease):
                answer = self.escrow.cosign_release(msg)
            else:
                answer = self.escrow.cosign_refund(msg)
            transport.reply(self._jobs, peer, answer)

    def _on_assign(self, peer: bytes, msg: p.Assign | p.Rescore) -> None:
        key = _work_key(msg, peer)
        refuse = self._refusal(msg)
        if refuse is not None:
            transport.reply(self._jobs, peer, p.Error(code=refuse[0], message=refuse[1],
                                                      job=msg.job, shard=msg.shard))
            return
        if key not in self._shards:  # a repeated assign is acknowledged, not run twice
            if len(self._shards) > MAX_QUEUED_SHARDS:
                transport.reply(self._jobs, peer, p.Error(
                    code=p.BUSY, message="too many shards queued", job=msg.job, shard=msg.shard))
                return
            shard = _Shard(peer, msg)
            self._shards[key] = shard
            if msg.skin is not None and msg.skin not in self.skins:
                self._fetches.put(shard)  # _refusal let it through: it names a magnet to fetch
            else:
                self._work.put(shard)
        transport.reply(self._jobs, peer, p.Accepted(job=msg.job, shard=msg.shard))

    def _refusal(self, msg: p.Assign | p.Rescore) -> tuple[str, str] | None:
        if self.gate.paused():
            return p.PAUSED, "serving is paused on this machine"
        if msg.model != self._model:
            return p.UNSERVED, f"model {msg.model[:12]} is not served here"
        if msg.skin is not None and msg.skin not in self.skins:
            if msg.skin_magnet is None:
                return p.UNSERVED, f"skin {msg.skin[:12]} is not served here"
            if self.skin_fetcher is None:
                return p.SKIN, (f"skin {msg.skin[:12]} is not installed here and this worker "
                                f"does not fetch skins (fetch_skins = false)")
        if isinstance(msg, p.Rescore):
            if len(msg.claims) != len(msg.items):
                return p.MALFORMED, "one claim per item is needed"
        elif msg.price_per_1k < self.price_per_1k:
            return p.UNSERVED, f"the price is {self.price_per_1k} per 1k tokens"
        if msg.requester == self.identity.public_hex:
            return p.UNSERVED, "a worker does not serve its own jobs"
        if msg.escrow is None and self.require_escrow:
            return p.UNESCROWED, "this worker works only for gold locked in escrow"
        if msg.escrow is not None:
            if self.escrow is None:  # working unchecked, it could never co-sign its pay
                return p.ESCROW, "this worker has no chain to check the escrow on"
            problem = self.escrow.check_assign(msg, self.price_per_1k)
            if problem is not None:
                return p.ESCROW, problem
        return None

    def _countersign(self, msg: p.SignReceipt) -> p.Msg:
        body = msg.body
        where = {"job": body.job, "shard": body.shard}
        if body.worker != self.identity.public_hex or not (self.store.served_matches(body)
                                                           or self.store.checked_matches(body)):
            return p.Error(code=p.BAD_RECEIPT, message="the receipt is not for work done here",
                           **where)
        receipt = Receipt(body=body, requester_sig=msg.requester_sig,
                          worker_sig=sign_body(body, self.identity))
        try:
            verify_receipt(receipt)
        except ReceiptError as e:
            return p.Error(code=p.BAD_RECEIPT, message=str(e), **where)
        self.store.add_receipt(receipt)
        self.stats.receipts_held, self.stats.receipts_amount = self.store.totals()
        return p.Countersigned(receipt=receipt)

    def _flush_outbox(self) -> None:
        while True:
            try:
                shard, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            a = shard.assign
            self._shards.pop(_work_key(a, shard.peer), None)
            if not shard.cancelled:
                transport.reply(self._jobs, shard.peer, msg)

    def _beat(self) -> None:
        paused = self.gate.paused()
        for key, shard in list(self._shards.items()):
            beat = p.Heartbeat(job=key[0], shard=key[1], done=shard.done, paused=paused)
            if not transport.reply(self._jobs, shard.peer, beat):
                shard.cancelled = True  # the requester is gone: nobody to deliver to
                del self._shards[key]
        self.stats.running = [f"{k[0][:8]}:{k[1]}" for k in self._shards]

    # ---- the skin fetch thread ----------------------------------------------------------------

    def _fetch_skins(self) -> None:
        while not self._stop.is_set():
            shard = self._fetches.get()
            if shard is None:
                return
            a = shard.assign
            if shard.cancelled:
                continue
            if a.skin not in self.skins:  # an earlier shard may have fetched it meanwhile
                try:
                    self.skin_fetcher.fetch(a.skin, a.skin_magnet, a.skin_peers)
                except Exception as e:  # any failure is this shard's, never the worker's
                    self.stats.skin_fetches_failed += 1
                    self._outbox.put((shard, p.Error(
                        code=p.SKIN, message=f"skin {a.skin[:12]} was not fetched: "
                                             f"{e}"[:p.MAX_TEXT], job=a.job, shard=a.shard)))
                    continue
                self.skins = tuple(sorted({*self.skins, a.skin}))
                self._signed = None  # the next offer lists the new skin
                self.stats.skins_fetched += 1
            self._work.put(shard)

    # ---- the compute thread -------------------------------------------------------------------

    def _compute(self) -> None:
        waiting: list[_Shard] = []
        wearing: str | None = None
        while not self._stop.is_set():
            block = not waiting
            while True:  # take everything queued, so the choice sees every waiting shard
                try:
                    shard = self._work.get(block=block)
                except queue.Empty:
                    break
                if shard is None:
                    return
                waiting.append(shard)
                block = False
            shard = next_shard(waiting, wearing)
            waiting.remove(shard)
            if shard.cancelled:
                continue
            if shard.assign.skin != wearing:
                self.stats.skin_swaps += 1
                wearing = shard.assign.skin
            self._outbox.put((shard, self._run(shard)))

    def _run(self, shard: _Shard) -> p.Msg:
        a = shard.assign
        if isinstance(a, p.Rescore):
            return self._rescore(shard, a)

        def progress(_: Completion) -> None:
            shard.done += 1
        try:
            done = self.backend.generate(a.items, a.skin, gate=self.gate, on_done=progress)
        except Released:
            self.stats.shards_released += 1
            return p.ShardReleased(job=a.job, shard=a.shard)
        except Exception as e:  # the backend's failure is this shard's failure, not the worker's
            return p.Error(code=p.FAILED, message=f"{type(e).__name__}: {e}"[:p.MAX_TEXT],
                           job=a.job, shard=a.shard)
        tokens_in = sum(c.prompt_tokens for c in done)
        tokens_out = sum(len(c.tokens) for c in done)
        self.store.record_served(a.job, a.shard, a.requester, a.model, a.skin, tokens_in,
                                 tokens_out, a.price_per_1k)
        self.stats.shards_served += 1
        self.stats.tokens_generated += tokens_out
        return p.Result(job=a.job, shard=a.shard, completions=done)

    def _rescore(self, shard: _Shard, a: p.Rescore) -> p.Msg:
        verdicts = []
        try:
            for item, claim in zip(a.items, a.claims):
                verdicts.append(self.backend.rescore(item, claim, a.skin))
                shard.done += 1
        except Exception as e:
            return p.Error(code=p.FAILED, message=f"{type(e).__name__}: {e}"[:p.MAX_TEXT],
                           job=a.job, shard=a.shard)
        # the check is work too: recorded so the requester's receipt for it can be countersigned
        self.store.record_checked(a.job, a.shard, a.requester, a.model, a.skin,
                                  check_tokens(a.claims), self.price_per_1k)
        self.stats.shards_checked += 1
        return p.Rescored(job=a.job, shard=a.shard, verdicts=verdicts)


def next_shard(waiting: list[_Shard], wearing: str | None) -> _Shard:
    """The oldest waiting shard that wears ``wearing``, unless the oldest of all has been passed
    over ``MAX_PASSED_OVER`` times already (or none wears it): that one then."""
    oldest = waiting[0]
    same = next((s for s in waiting if s.assign.skin == wearing), None)
    if same is None or same is oldest or oldest.passed_over >= MAX_PASSED_OVER:
        return oldest
    for s in waiting[:waiting.index(same)]:
        s.passed_over += 1
    return same
