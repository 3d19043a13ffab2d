"""A requester without the model has other workers check claims: a rejection convicts only when a
second checker confirms it, checkers that disagree are both set aside, and a checker is paid for
its checks with a receipt. Real ZeroMQ CURVE sockets on 127.0.0.1; the deterministic test backend
(tests/jobs_backend.py) stands in for the model engine, except in the test marked ``model``."""

from __future__ import annotations

import time

import msgspec
import pytest
import zmq

from common.identity import load_or_create_identity
from jobs_backend import HashBackend
from swarm.jobs import protocol as p
from swarm.jobs import transport
from swarm.jobs.backend import ChatMessage, Verdict, WorkItem
from swarm.jobs.fraud import FraudRecord, SignedFraud, sign_fraud, verify_fraud
from swarm.jobs.job_store import JobStore
from swarm.jobs.receipt import amount_for, verify_receipt
from swarm.jobs.requester import Requester, job_id
from test_jobs_escrow import market  # noqa: F401 (fixture)
from test_jobs_network import MODEL, check_all, items_of, workers  # noqa: F401 (fixture)


class Lying:
    """A backend that serves honestly and checks honestly, then says every claim it checked is
    wrong: a stand-in only for the lie itself."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def generate(self, items, skin=None, **kw):
        return self.inner.generate(items, skin, **kw)

    def rescore(self, item, claim, skin=None):
        self.inner.rescore(item, claim, skin)
        return Verdict(False, 0, 0, "token 0: claimed something else")


class OneTokenChanged(Lying):
    """A backend that generates honestly, then claims one token it did not generate."""

    def generate(self, items, skin=None, **kw):
        out = []
        for c in self.inner.generate(items, skin, **kw):
            if c.tokens:
                i = len(c.tokens) // 2
                t = c.tokens[i]
                c = msgspec.structs.replace(c, tokens=[*c.tokens[:i], t - 1 if t else 1,
                                                       *c.tokens[i + 1:]])
            out.append(c)
        return out

    def rescore(self, item, claim, skin=None):
        return self.inner.rescore(item, claim, skin)


def no_model_requester(tmp_path, **kw) -> Requester:
    # generous: on a loaded machine a worker dropped for silence would change who checks what
    kw.setdefault("heartbeat_timeout", 5.0)
    return Requester(load_or_create_identity(tmp_path / "requester"),
                     JobStore(tmp_path / "requester.sqlite"), None, **kw)


def check_receipts(worker) -> list:
    """The receipts ``worker`` holds for checks (no generated tokens), each verified."""
    held = worker.store.receipts()
    for r in held:
        verify_receipt(r)
    return [r for r in held if r.body.tokens_out == 0]


def claimed_tokens(outcome, items) -> int:
    """What re-scoring ``items``' accepted claims takes: their prompts and claimed tokens."""
    return sum(outcome.completions[it.custom_id].prompt_tokens
               + len(outcome.completions[it.custom_id].tokens) for it in items)


def frauds(req: Requester) -> list[SignedFraud]:
    return [msgspec.json.decode(blob, type=SignedFraud) for *_, blob in req.store.frauds()]


def test_honest_checks_are_paid_with_receipts_both_sides_sign(workers, tmp_path):
    claimant = workers("claimant", price_per_1k=50)
    checkers = [workers(f"c{i}", price_per_1k=70 + i) for i in range(2)]
    items = items_of(4)
    req = no_model_requester(tmp_path, shard_items=4, verify_fraction=1.0)
    outcome = req.run(job_id(b"paid checks", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [claimant, *checkers]])
    check_all(items, outcome)
    assert outcome.caught == [] and outcome.verified_shards == 1 and outcome.receipts == 2
    (served,) = claimant.store.receipts()
    assert verify_receipt(served) and served.body.tokens_out > 0 and served.body.shard == 0
    # One checker's acceptance stands: exactly one checked, and holds a receipt for the check.
    (checker,) = [w for w in checkers if w.stats.shards_checked]
    (receipt,) = check_receipts(checker)
    body = receipt.body
    assert (body.shard, body.worker, body.tokens_out) == (0, checker.identity.public_hex, 0)
    assert body.tokens_in == claimed_tokens(outcome, items) > served.body.tokens_in
    assert body.price_per_1k == checker.price_per_1k
    assert body.amount == amount_for(body.tokens_in, 0, checker.price_per_1k) > 0
    assert {r.body for r in req.store.receipts(outcome.job)} == {served.body, body}
    assert outcome.paid == served.body.amount + body.amount
    assert claimant.store.totals() == (1, served.body.amount)


def test_a_cheat_is_convicted_only_when_a_second_checker_confirms(workers, tmp_path):
    # The cheat is the cheapest, so it is given a shard first; the two honest workers check it.
    cheater = workers("cheater", HashBackend(cheat="one_token"), price_per_1k=50)
    honest = [workers(f"h{i}", price_per_1k=60 + i) for i in range(2)]
    items = items_of(9)
    req = no_model_requester(tmp_path, shard_items=3, verify_fraction=0.0)
    outcome = req.run(job_id(b"confirmed", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [cheater, *honest]])
    check_all(items, outcome)
    assert outcome.caught == [cheater.identity.public_hex] and outcome.disputes == 0
    (signed,) = frauds(req)
    assert verify_fraud(signed)
    record = signed.record
    checkers = {w.identity.public_hex for w in honest}
    assert len(record.checks) == 2 and {c.checker for c in record.checks} == checkers
    assert all(not c.verdict.ok for c in record.checks)
    assert record.claim is not None and record.first_mismatch is not None
    assert cheater.store.receipts() == []
    # Both checkers are paid for checking the cheat's shard.
    for w in honest:
        assert record.shard in {r.body.shard for r in check_receipts(w)}


def test_a_lying_checker_frames_nobody_and_the_shard_is_redone(workers, tmp_path):
    # The liar takes shard 0 and is idle (first in line to check) when the slow honest worker's
    # claims for shard 1 come in; a third worker's acceptance contradicts the liar's rejection.
    liar = workers("liar", Lying(HashBackend()), price_per_1k=50)
    slow = workers("slow", HashBackend(step_seconds=0.1), price_per_1k=60)
    third = workers("third", price_per_1k=70)
    items = items_of(6)
    req = no_model_requester(tmp_path, shard_items=3, verify_fraction=0.0)
    outcome = req.run(job_id(b"framed", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [liar, slow, third]])
    check_all(items, outcome)
    assert outcome.caught == [] and req.store.frauds() == []
    assert outcome.disputes == 1 and outcome.reassigned >= 1
    assert liar.backend.rescored_items > 0
    # The disputed claims were not paid: the shard was accepted from someone else.
    accepted = req.store.accepted(outcome.job)
    assert {s.worker for s in accepted.values()} == {liar.identity.public_hex,
                                                     third.identity.public_hex}
    assert accepted[1].worker == third.identity.public_hex
    # The slow worker's disputed claims earned nothing; it then checked the redone shard.
    assert [r.body.shard for r in slow.store.receipts()] == [1]
    assert [r.body.shard for r in check_receipts(slow)] == [1]
    # The third worker checked the disputed shard 1 and then served it: it holds a receipt for
    # each, the check's apart from the shard's. Both checks in the dispute are paid (the
    # requester cannot tell which checker lied).
    served = [r for r in third.store.receipts() if r.body.tokens_out > 0]
    assert [r.body.shard for r in served] == [1]
    assert 1 in {r.body.shard for r in check_receipts(third)}
    assert 1 in {r.body.shard for r in check_receipts(liar)}


def test_a_rejection_nobody_can_confirm_convicts_nobody(workers, tmp_path):
    claimant = workers("claimant", price_per_1k=50)
    liar = workers("liar", Lying(HashBackend()), price_per_1k=60)
    items = items_of(3)
    req = no_model_requester(tmp_path, shard_items=3, verify_fraction=0.0)
    outcome = req.run(job_id(b"unconfirmed", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [claimant, liar]], timeout=60)
    check_all(items, outcome)
    assert outcome.caught == [] and req.store.frauds() == [] and outcome.disputes == 0
    # The claimant's set-aside claims went unpaid; the liar redid the shard and the claimant
    # checked it.
    (shard,) = req.store.accepted(outcome.job).values()
    assert shard.worker == liar.identity.public_hex
    assert claimant.backend.rescored_items == len(items)


def test_with_escrow_a_checker_is_paid_for_its_checks_out_of_its_escrow(market):
    from test_jobs_escrow import check_books
    m = market
    ws = [m.worker("w0"), m.worker("w1")]
    req = m.requester(shard_items=2, verify_fraction=1.0)
    req.verifier = None  # no copy of the model here: the two workers check each other
    items = items_of(4)
    outcome = req.run(job_id(b"escrowed checks", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in ws])
    check_all(items, outcome)
    assert outcome.escrows_open == 0 and outcome.escrow_problems == []
    receipts = req.store.receipts(outcome.job)
    assert len(receipts) == 4 and sum(r.body.tokens_out == 0 for r in receipts) == 2
    assert outcome.released == sum(r.body.amount for r in receipts)
    check_books(m, ws, receipts)


def test_with_escrow_gold_is_locked_for_a_checker_before_it_checks(market):
    from test_jobs_escrow import check_books
    m = market
    claimant, checker = m.worker("claimant", price_per_1k=50), m.worker("checker",
                                                                        price_per_1k=80)
    steps: list = []
    req = m.requester(steps, shard_items=4, verify_fraction=1.0)
    req.verifier = None
    items = items_of(4)
    outcome = req.run(job_id(b"escrowed checker", MODEL, None), MODEL, None, items,
                      [w.signed_offer() for w in [claimant, checker]])
    check_all(items, outcome)
    assert outcome.escrows_open == 0 and outcome.escrow_problems == []
    locked = [info["worker"] for name, info in steps if name == "locked"]
    assert locked == [claimant.identity.public_hex, checker.identity.public_hex]
    (receipt,) = checker.store.receipts()
    assert receipt.body.tokens_out == 0 and receipt.body.price_per_1k == 80
    check_books(m, [claimant, checker], req.store.receipts(outcome.job))


# ---- the real default model ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def engines():
    """Three engines over the real default model, one per worker (an engine serves one thread)."""
    from game.jobs_backend import load_backend
    loaded = [load_backend("default", width=2, self_check=False) for _ in range(3)]
    yield loaded
    for e in loaded:
        e.close()


def model_items() -> list[WorkItem]:
    return [WorkItem(f"req-{i}", [ChatMessage("user", f"Say one thing about {topic}.")],
                     max_tokens=4, **sampled)
            for i, (topic, sampled) in enumerate([("bread", {}), ("the inn", {
                "temperature": 0.8, "top_p": 0.9, "seed": 7})])]


def run_model_job(tmp_path, name: bytes, ws) -> tuple[Requester, object]:
    """One shard of ``model_items`` on the cheapest of ``ws``, checked by the others."""
    items = model_items()
    model = ws[0].backend.model_id
    req = no_model_requester(tmp_path, shard_items=len(items), verify_fraction=1.0,
                             heartbeat_timeout=60)
    outcome = req.run(job_id(name, model, None), model, None, items,
                      [w.signed_offer() for w in ws], timeout=300)
    assert set(outcome.completions) == {it.custom_id for it in items}
    return req, outcome


@pytest.mark.model
@pytest.mark.slow
def test_real_model_honest_claims_checked_and_every_check_paid(engines, workers, tmp_path):
    claimant = workers("claimant", engines[0], price_per_1k=50)
    checkers = [workers(f"c{i}", engines[1 + i], price_per_1k=70 + i) for i in range(2)]
    req, outcome = run_model_job(tmp_path, b"real: honest", [claimant, *checkers])
    assert outcome.caught == [] and outcome.disputes == 0 and outcome.verified_shards == 1
    (served,) = claimant.store.receipts()
    assert verify_receipt(served) and served.body.tokens_out > 0
    (checker,) = [w for w in checkers if w.stats.shards_checked]  # the first checker accepted
    (receipt,) = check_receipts(checker)
    assert receipt.body.tokens_in == claimed_tokens(outcome, model_items())
    assert {r.body for r in req.store.receipts(outcome.job)} == {served.body, receipt.body}


@pytest.mark.model
@pytest.mark.slow
def test_real_model_a_lying_checker_convicts_nobody(engines, workers, tmp_path):
    # The claimant is the cheapest, so it gets the shard; the liar is next, so it checks first.
    claimant = workers("claimant", engines[0], price_per_1k=50)
    liar = workers("liar", Lying(engines[1]), price_per_1k=60)
    honest = workers("honest", engines[2], price_per_1k=70)
    req, outcome = run_model_job(tmp_path, b"real: lie", [claimant, liar, honest])
    assert outcome.caught == [] and req.store.frauds() == [] and outcome.disputes == 1
    # Set aside unpaid, the shard was redone by the liar (it serves honestly) and checked by
    # the claimant, the only checker left that nobody contradicted.
    (shard,) = req.store.accepted(outcome.job).values()
    assert shard.worker == liar.identity.public_hex and shard.verified
    assert [r.body.tokens_out == 0 for r in claimant.store.receipts()] == [True]
    for item in model_items():  # the results are the model's own: the claimant's re-score
        assert engines[0].rescore(item, outcome.completions[item.custom_id]).ok


@pytest.mark.model
@pytest.mark.slow
def test_real_model_a_cheat_is_convicted_on_two_checkers_verdicts(engines, workers, tmp_path):
    cheater = workers("cheater", OneTokenChanged(engines[0]), price_per_1k=50)
    honest = [workers(f"h{i}", engines[1 + i], price_per_1k=60 + i) for i in range(2)]
    req, outcome = run_model_job(tmp_path, b"real: cheat", [cheater, *honest])
    assert outcome.caught == [cheater.identity.public_hex] and outcome.disputes == 0
    (signed,) = frauds(req)
    assert verify_fraud(signed)
    checks = signed.record.checks
    assert {c.checker for c in checks} == {w.identity.public_hex for w in honest}
    assert all(not c.verdict.ok and c.verdict.reason for c in checks), checks
    assert cheater.store.receipts() == []
    # Both checked the cheat's claims; one of them then checked the redone shard too: its two
    # checks of shard 0 add up to one receipt (the claims are as long either way).
    assert sorted(w.stats.shards_checked for w in honest) == [1, 2]
    for w in honest:
        (receipt,) = check_receipts(w)
        assert receipt.body.shard == 0
        assert receipt.body.tokens_in == (w.stats.shards_checked
                                          * claimed_tokens(outcome, model_items()))


# ---- what older peers and older records still read --------------------------------------------

def test_a_check_without_escrow_and_a_record_without_checks_encode_as_before(tmp_path):
    ident = load_or_create_identity(tmp_path / "requester")
    h = "ab" * 32
    item, claim = items_of(1)[0], HashBackend().generate(items_of(1))[0]
    check = p.Rescore(job=h, shard=0, requester=h, model=h, skin=None, items=[item],
                      claims=[claim])
    assert b"escrow" not in p.encode(check) and p.decode_to_worker(p.encode(check)) == check
    record = FraudRecord(requester=ident.public_hex, worker=h, job=h, shard=0, model=h,
                         skin=None, item=item, claim=claim, first_mismatch=1, reason="token 1",
                         created=1)
    assert b"checks" not in msgspec.msgpack.encode(record)
    assert verify_fraud(sign_fraud(record, ident))


def test_a_worker_checking_a_shard_also_serves_it_when_asked_to_redo_it(workers, tmp_path):
    # A claimant caught meanwhile: its shard comes back to the worker still checking its claims.
    w = workers("both", HashBackend(step_seconds=0.2))
    ident = load_or_create_identity(tmp_path / "requester")
    items = items_of(2)
    job = job_id(b"check and redo", MODEL, None)
    claims = HashBackend(cheat="one_token").generate(items)
    ctx = zmq.Context()
    try:
        sock = transport.jobs_client(ctx, ident, w.curve_key, w.jobs_endpoint)
        transport.send(sock, p.Rescore(job=job, shard=0, requester=ident.public_hex, model=MODEL,
                                       skin=None, items=items, claims=claims))
        transport.send(sock, p.Assign(job=job, shard=0, requester=ident.public_hex, model=MODEL,
                                      skin=None, price_per_1k=w.price_per_1k, items=items))
        got = {}
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            if sock.poll(200):
                msg = p.decode_to_requester(sock.recv())
                if isinstance(msg, (p.Rescored, p.Result)):
                    got[type(msg)] = msg
    finally:
        ctx.destroy(0)
    assert not all(v.ok for v in got[p.Rescored].verdicts)
    assert [c.tokens for c in got[p.Result].completions] == [c.tokens for c in
                                                             HashBackend().generate(items)]
