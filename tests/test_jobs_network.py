"""Requester and workers over real ZeroMQ CURVE sockets on 127.0.0.1, with the deterministic test
backend (tests/jobs_backend.py) standing in for the model engine."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable

import msgspec
import pytest
import zmq

from common.identity import load_or_create_identity
from jobs_backend import CHEATS, HashBackend
from jobs_fuzz import fuzz_frames
from swarm.jobs import protocol as p
from swarm.jobs import transport
from swarm.jobs.away import SwitchGate
from swarm.jobs.backend import ChatMessage, WorkItem
from swarm.jobs.batchfile import parse_batch
from swarm.jobs.fraud import SignedFraud, verify_fraud
from swarm.jobs.job_store import FINISHED, JobStore
from swarm.jobs.offers import Offer, sign_offer
from swarm.jobs.receipt import verify_receipt
from swarm.jobs.requester import JobError, Requester, job_id
from swarm.jobs.worker import Worker
from swarm.jobs.worker_store import WorkerStore

MODEL = HashBackend().model_id


def batch_bytes(n: int) -> bytes:
    rng = random.Random(n)
    lines = []
    for k in range(n):
        body = {"model": "gpt-4o-mini", "max_tokens": rng.randrange(4, 24),
                "messages": [{"role": "user", "content": f"request {k}: {rng.random()}"}]}
        if k % 3 == 0:
            body.update(temperature=0.8, top_p=0.9, seed=k)
        else:
            body["temperature"] = 0
        lines.append(json.dumps({"custom_id": f"req-{k}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))
    return "\n".join(lines).encode()


def items_of(n: int) -> list[WorkItem]:
    return [ln.item for ln in parse_batch(batch_bytes(n))]


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []

    def start(name: str, backend: HashBackend | None = None, **kw) -> Worker:
        w = Worker(backend or HashBackend(), load_or_create_identity(tmp_path / name),
                   WorkerStore(tmp_path / f"{name}.sqlite"), **kw).start()
        started.append(w)
        return w
    yield start
    for w in started:
        w.close()


@pytest.fixture
def requester(tmp_path):
    def make(**kw) -> Requester:
        # generous: on a loaded machine a live worker dropped for silence would change the
        # outcome; the tests about silence set their own, shorter timeout
        kw.setdefault("heartbeat_timeout", 5.0)
        return Requester(load_or_create_identity(tmp_path / "requester"),
                         JobStore(tmp_path / "requester.sqlite"), HashBackend(), **kw)
    return make


class AfterItems(HashBackend):
    """A HashBackend like ``backend`` (same salt, pace and cheat) that runs an action once, right
    after the ``n``-th item of the next shard it generates (``then``): an event placed mid-shard
    by the work done, not by the clock."""

    def __init__(self, backend: HashBackend):
        super().__init__(backend.salt, backend.step_seconds, backend.cheat)
        self._planned: tuple[int, Callable[[], None]] | None = None

    def then(self, n: int, action: Callable[[], None]) -> None:
        self._planned = (n, action)

    def generate(self, items, skin=None, *, gate=None, on_done=None):
        planned, self._planned = self._planned, None
        if planned is None:
            return super().generate(items, skin, gate=gate, on_done=on_done)
        n, action = planned
        count = 0

        def done(c) -> None:
            nonlocal count
            if on_done is not None:
                on_done(c)
            count += 1
            if count == n:
                action()
        return super().generate(items, skin, gate=gate, on_done=done)


def check_all(items, outcome):
    """Every result is what the model gives (re-scored here, independently of the requester)."""
    truth = HashBackend()
    assert set(outcome.completions) == {i.custom_id for i in items}
    for item in items:
        assert truth.rescore(item, outcome.completions[item.custom_id]).ok, item.custom_id


def test_three_workers_complete_a_200_request_job_with_receipts(workers, requester):
    ws = [workers(f"w{i}") for i in range(3)]
    items = items_of(200)
    req = requester()
    job = job_id(batch_bytes(200), MODEL, None)
    outcome = req.run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    check_all(items, outcome)
    assert outcome.shards == 3 and outcome.caught == [] and outcome.reassigned == 0
    assert outcome.verified_shards >= 3  # the first result of every worker is re-scored
    # No worker saw more than one shard of the job.
    assert [w.stats.shards_served for w in ws] == [1, 1, 1]
    # A receipt per shard, signed by both sides, held by both sides, for what was served.
    assert outcome.receipts == 3
    for w in ws:
        (receipt,) = w.store.receipts()
        assert verify_receipt(receipt)
        assert receipt.body.worker == w.identity.public_hex and receipt.body.job == job
        assert receipt.body.tokens_out == w.stats.tokens_generated
    assert outcome.paid == sum(r.body.amount for w in ws for r in w.store.receipts())
    assert req.store.job(job).state == FINISHED


@pytest.mark.parametrize("cheat", CHEATS)
def test_a_cheating_worker_is_caught_paid_nothing_and_its_shard_redone(workers, requester,
                                                                       cheat):
    honest = [workers(f"w{i}") for i in range(2)]
    cheater = workers("cheater", HashBackend(cheat=cheat))
    items = items_of(30)
    req = requester(verify_fraction=0.0)  # even so, every worker's first result is checked
    outcome = req.run(job_id(b"c" + cheat.encode(), MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [*honest, cheater]])
    check_all(items, outcome)
    assert outcome.caught == [cheater.identity.public_hex] and outcome.reassigned >= 1
    ((worker, _job, _shard, blob),) = req.store.frauds()
    record = msgspec.json.decode(blob, type=SignedFraud)
    assert worker == cheater.identity.public_hex and verify_fraud(record)
    assert record.record.reason
    assert cheater.store.receipts() == []  # paid nothing
    # Refused from then on: its offer is no longer usable.
    assert req.usable_offers([cheater.signed_offer()], MODEL, None) == []


def test_a_cheat_caught_on_a_later_shard_forfeits_the_whole_job(workers, requester):
    """A worker honest on its first (checked) shard and cheating afterwards loses the pay for
    both; its unchecked shards are redone."""
    class Turncoat(HashBackend):
        def generate(self, items, skin=None, **kw):
            self.cheat = "one_token" if self.generated_items else None
            return super().generate(items, skin, **kw)
    honest = workers("honest")
    turncoat = workers("turncoat", Turncoat())
    items = items_of(40)
    req = requester(verify_fraction=1.0, shard_items=5)
    outcome = req.run(job_id(b"turncoat", MODEL, None), MODEL, None, items,
                      [honest.signed_offer(), turncoat.signed_offer()])
    check_all(items, outcome)
    assert outcome.caught == [turncoat.identity.public_hex]
    assert turncoat.store.receipts() == [] and turncoat.stats.shards_served >= 2
    assert len(honest.store.receipts()) == outcome.receipts
    assert all(s.worker == honest.identity.public_hex or s.forfeit
               for s in req.store.accepted(outcome.job).values())


def test_a_worker_that_goes_silent_mid_shard_loses_the_shard(workers, requester):
    """A worker stops (its sockets close mid-shard): no heartbeat, the shard is reassigned after
    the timeout, the job completes, no receipt for the unfinished work."""
    slow_backend = AfterItems(HashBackend(step_seconds=0.05))
    slow = workers("slow", slow_backend, heartbeat_interval=0.1)
    # Stopped after its second item of the shard's ten, so it always goes silent mid-shard.
    slow_backend.then(2, lambda: threading.Thread(target=slow.close).start())
    # Live workers beat well within the timeout, so only the silent one loses its shard.
    fast = [workers(f"w{i}", heartbeat_interval=0.1) for i in range(2)]
    items = items_of(30)
    req = requester(heartbeat_timeout=0.6)
    t0 = time.monotonic()
    outcome = req.run(job_id(b"silent", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [slow, *fast]])
    check_all(items, outcome)
    assert outcome.reassigned == 1 and time.monotonic() - t0 >= 0.6
    assert slow.store.receipts() == []
    assert sum(len(w.store.receipts()) for w in fast) == outcome.receipts == 3


def test_a_paused_worker_resumes_or_releases_its_shard(workers, requester):
    gate = SwitchGate(release_after=0.4)
    backend = AfterItems(HashBackend(step_seconds=0.01))
    paused = workers("paused", backend, gate=gate, heartbeat_interval=0.1)
    other = workers("other")
    items = items_of(20)
    req = requester(heartbeat_timeout=1.0)

    def pause_after(n: int, resume_after: float | None) -> None:
        """Pause serving after the worker's ``n``-th item of its next shard (mid-shard however
        fast the machine is), and resume ``resume_after`` seconds later (never, for None)."""
        def pause() -> None:
            gate.set_serving(False)
            if resume_after is not None:
                threading.Timer(resume_after, gate.set_serving, (True,)).start()
        backend.then(n, pause)
    # Paused mid-shard for less than release_after: the heartbeats say so, the shard is kept,
    # the worker finishes it when serving resumes.
    pause_after(5, 0.2)
    outcome = req.run(job_id(b"resume", MODEL, None), MODEL, None, items,
                      [paused.signed_offer()])
    check_all(items, outcome)
    assert outcome.reassigned == 0 and paused.stats.shards_released == 0
    # Paused past release_after: the shard goes back and another worker does it.
    pause_after(5, None)
    outcome = req.run(job_id(b"release", MODEL, None), MODEL, None, items,
                      [paused.signed_offer(), other.signed_offer()])
    check_all(items, outcome)
    assert paused.stats.shards_released == 1 and outcome.reassigned >= 1
    # While paused, a worker takes no new shards.
    outcome = req.run(job_id(b"refused", MODEL, None), MODEL, None, items,
                      [paused.signed_offer(), other.signed_offer()])
    check_all(items, outcome)
    assert paused.stats.shards_served == 1 and other.stats.shards_served == 4


class _Killed(Exception):
    pass


def test_a_restarted_requester_resumes_without_buying_twice(workers, requester, tmp_path):
    ws = [workers(f"w{i}") for i in range(3)]
    items = items_of(60)
    job = job_id(b"resume-me", MODEL, None)
    offers = [w.signed_offer() for w in ws]

    def die_after_first(progress):
        if progress.accepted >= 1:
            raise _Killed
    with pytest.raises(_Killed):
        requester(shard_items=10).run(job, MODEL, None, items, offers, progress=die_after_first)
    held = JobStore(tmp_path / "requester.sqlite").accepted(job)
    assert 1 <= len(held) < 6
    generated = -1
    while generated != sum(w.backend.generated_items for w in ws):  # shards in flight finish
        generated = sum(w.backend.generated_items for w in ws)
        time.sleep(0.1)
    outcome = requester(shard_items=10).run(job, MODEL, None, items, offers)
    check_all(items, outcome)
    again = sum(w.backend.generated_items for w in ws) - generated
    # Only shards not held were bought again (a shard in flight at the kill is redone).
    assert again == len(items) - 10 * len(held)
    after = JobStore(tmp_path / "requester.sqlite").accepted(job)
    assert all(after[index] == shard for index, shard in held.items())
    assert outcome.receipts == 6


def test_max_price_is_never_exceeded(workers, requester):
    dear = workers("dear", price_per_1k=500)
    cheap = workers("cheap", price_per_1k=50)
    items = items_of(10)
    outcome = requester(max_price=100).run(job_id(b"price", MODEL, None), MODEL, None, items,
                                           [dear.signed_offer(), cheap.signed_offer()])
    check_all(items, outcome)
    assert dear.stats.shards_served == 0
    assert all(r.body.price_per_1k == 50 for r in cheap.store.receipts())
    with pytest.raises(JobError, match="no trusted worker"):
        requester(max_price=10).run(job_id(b"price2", MODEL, None), MODEL, None, items,
                                    [dear.signed_offer(), cheap.signed_offer()])


# ---- a scripted worker: duplicate, late and unasked-for results; fuzzed frames ------------------

class ScriptedWorker:
    """A worker run by the test: a real CURVE ROUTER answering with whatever the test sends."""

    def __init__(self, tmp_path, name="scripted"):
        self.identity = load_or_create_identity(tmp_path / name)
        self.ctx = zmq.Context()
        self.sock = transport.jobs_server(self.ctx, self.identity, "127.0.0.1:0")
        self.endpoint = transport.bound_endpoint(self.sock)
        offer = Offer(worker=self.identity.public_hex, models=[MODEL], skins=[], price_per_1k=1,
                      capacity=1, endpoint=self.endpoint,
                      curve_key=self.identity.curve_keypair()[0].hex(), issued=int(time.time()))
        self.offer = sign_offer(offer, self.identity)

    def recv(self, timeout=5.0):
        assert self.sock.poll(int(timeout * 1000)), "nothing from the requester"
        peer, frame = self.sock.recv_multipart()
        return peer, p.decode_to_worker(frame)

    def close(self):
        self.ctx.destroy(0)


def test_duplicate_late_and_unasked_results_are_ignored(tmp_path, requester):
    w = ScriptedWorker(tmp_path)
    items = items_of(6)
    job = job_id(b"dups", MODEL, None)
    outcome = {}

    def run():
        outcome["o"] = requester(receipt_timeout=0.2).run(job, MODEL, None, items, [w.offer])
    t = threading.Thread(target=run)
    t.start()
    try:
        peer, assign = w.recv()
        assert isinstance(assign, p.Assign) and assign.shard == 0
        done = HashBackend().generate(assign.items)
        wrong = HashBackend(cheat="random").generate(assign.items)
        w.sock.send_multipart([peer, p.encode(p.Result(job=job, shard=3, completions=wrong))])
        w.sock.send_multipart([peer, p.encode(p.Result(job="f" * 64, shard=0,
                                                       completions=wrong))])
        w.sock.send_multipart([peer, p.encode(p.Result(job=job, shard=0, completions=done))])
        w.sock.send_multipart([peer, p.encode(p.Result(job=job, shard=0, completions=wrong))])
        peer, sign = w.recv()
        assert isinstance(sign, p.SignReceipt)
    finally:
        t.join(15)
        w.close()
    o = outcome["o"]
    check_all(items, o)
    assert o.caught == [] and o.ignored_results == 3


REQUESTER_TAGS = ["offer", "accepted", "heartbeat", "result", "released", "countersigned", "error",
                  "hello", "zzz"]
REQUESTER_FIELDS = ["job", "shard", "completions", "code", "message", "done", "receipt", "signed",
                    "paused"]
WORKER_TAGS = ["hello", "assign", "cancel", "sign", "nope"]
WORKER_FIELDS = ["requester", "job", "shard", "items", "body", "model", "skin", "price_per_1k",
                 "requester_sig"]


def test_fuzzed_frames_at_a_requester_are_dropped_and_the_job_completes(tmp_path, requester):
    w = ScriptedWorker(tmp_path)
    items = items_of(4)
    job = job_id(b"fuzz", MODEL, None)
    outcome = {}
    t = threading.Thread(target=lambda: outcome.update(o=requester(heartbeat_timeout=10, receipt_timeout=0.2).run(
        job, MODEL, None, items, [w.offer])))
    t.start()
    try:
        peer, assign = w.recv()
        done = HashBackend().generate(assign.items)
        # Mutations of real messages of another job: a frame that decodes into a claim about
        # this shard would be a real claim, not noise.
        other = "a" * 64
        valid = [p.encode(m) for m in (
            p.Accepted(job=other, shard=0), p.Heartbeat(job=other, shard=0, done=1),
            p.Error(code="x", message="y", job=other, shard=0),
            p.Result(job=other, shard=0, completions=done[:1]))]
        noise = fuzz_frames(random.Random(1), valid, REQUESTER_TAGS, REQUESTER_FIELDS, 10_000)
        for i, frame in enumerate(noise):
            w.sock.send_multipart([peer, frame])
            if i % 500 == 0:  # a live worker's heartbeats go on meanwhile
                w.sock.send_multipart([peer, p.encode(p.Heartbeat(job=job, shard=0, done=0))])
        w.sock.send_multipart([peer, p.encode(p.Result(job=job, shard=0, completions=done))])
        peer, sign = w.recv(20)  # the receipt: the requester kept serving through the noise
        assert isinstance(sign, p.SignReceipt)
    finally:
        t.join(30)
        w.close()
    o = outcome["o"]
    check_all(items, o)
    assert o.reassigned == 0 and o.caught == []


def test_fuzzed_frames_at_a_worker_get_errors_and_it_keeps_serving(workers, tmp_path):
    w = workers("fuzzed")
    ident = load_or_create_identity(tmp_path / "fuzzer")
    ctx = zmq.Context()
    jobs = transport.jobs_client(ctx, ident, w.curve_key, w.jobs_endpoint)
    offers = transport.offer_client(ctx, w.offer_endpoint)
    valid = [p.encode(m) for m in (
        p.Assign(job="a" * 64, shard=0, requester=ident.public_hex, model=MODEL, skin=None,
                 price_per_1k=1000, items=items_of(1)),
        p.Hello(requester=ident.public_hex), p.Cancel(job="a" * 64, shard=0))]
    noise = fuzz_frames(random.Random(2), valid, WORKER_TAGS, WORKER_FIELDS, 10_000)
    replies = 0
    try:
        for i, frame in enumerate(noise):
            (jobs if i % 2 else offers).send(frame)
            for sock in (jobs, offers):  # read replies as they come, so no queue fills
                while sock.poll(0):
                    sock.recv()
                    replies += 1
        # Still serving: a hello on each socket is answered with the signed offer.
        for sock in (offers, jobs):
            transport.send(sock, p.Hello(requester=ident.public_hex))
            got = None
            deadline = time.monotonic() + 20
            while got is None and time.monotonic() < deadline:
                if sock.poll(200):
                    msg = p.decode_to_requester(sock.recv())
                    got = msg if isinstance(msg, p.OfferReply) else None
                    replies += 1
            assert got is not None and got.signed == w.signed_offer()
    finally:
        ctx.destroy(0)
    assert w.stats.frames_refused > 5000 and replies > 5000


# ---- a requester without the model: a second worker checks ---------------------------------------

@pytest.mark.parametrize("cheat", ["one_token", "short"])
def test_without_the_model_a_second_worker_checks_and_catches_a_cheat(workers, tmp_path, cheat):
    honest = [workers(f"w{i}") for i in range(2)]
    cheater = workers("cheater", HashBackend(cheat=cheat))
    items = items_of(30)
    req = Requester(load_or_create_identity(tmp_path / "requester"),
                    JobStore(tmp_path / "requester.sqlite"), None, heartbeat_timeout=1.5)
    outcome = req.run(job_id(b"second" + cheat.encode(), MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [*honest, cheater]])
    check_all(items, outcome)
    assert outcome.caught == [cheater.identity.public_hex] and outcome.verified_shards >= 2
    ((_, _, _, blob),) = req.store.frauds()
    record = msgspec.json.decode(blob, type=SignedFraud).record
    assert "re-scored by worker" in record.reason
    # The checks ran on the workers: every shard's claims at least once, the cheat's by an
    # honest worker.
    assert sum(w.backend.rescored_items for w in [*honest, cheater]) >= len(items)
    assert sum(w.backend.rescored_items for w in honest) >= 10
    assert cheater.store.receipts() == []


def test_without_the_model_and_without_a_second_worker_the_job_stops(workers, tmp_path):
    only = workers("only")
    req = Requester(load_or_create_identity(tmp_path / "requester"),
                    JobStore(tmp_path / "requester.sqlite"), None)
    with pytest.raises(JobError, match="no second worker"):
        req.run(job_id(b"alone", MODEL, None), MODEL, None, items_of(5), [only.signed_offer()])
