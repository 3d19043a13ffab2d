"""Escrow in the job flow: a requester and two workers over real ZeroMQ CURVE sockets on
127.0.0.1 (the hash backend standing in for the model), locking, releasing and refunding gold on
the real embedded chain (LiteSVM behind JSON-RPC, served from a thread)."""

from __future__ import annotations

import pytest
from credits_helpers import SKIN, lineage, party, running_chain
from jobs_backend import HashBackend
from solders.pubkey import Pubkey
from test_jobs_network import batch_bytes, items_of

from swarm.credits import escrow as escrow_module
from swarm.credits.chain import ChainClient, keypair_for, pubkey_of
from swarm.credits.escrow import EscrowError
from swarm.credits.ledger import Ledger, worker_share
from swarm.credits.settle import holdings, settle
from swarm.jobs.away import SwitchGate
from swarm.jobs.job_escrow import EscrowFunds, max_cost
from swarm.jobs.job_store import JobStore
from swarm.jobs.receipt import receipt_id
from swarm.jobs.requester import JobError, Requester, job_id
from swarm.jobs.worker import Worker
from swarm.jobs.worker_escrow import WorkerEscrow, settle_released
from swarm.jobs.worker_store import WorkerStore

MODEL = HashBackend().model_id
GOLD = 1_000_000


class Crash(BaseException):
    """The requester process dying at an escrow step (nothing after it runs)."""


@pytest.fixture
def market(tmp_path):
    """A chain, a requester holding ``GOLD`` micro-gold (on chain and in its ledger) and a
    way to start workers that check escrows on that chain."""
    with running_chain(tmp_path / "chain") as chain:
        opened, workers = [], []

        def client():
            c = ChainClient(chain.url)
            opened.append(c)
            return c

        req_id = party(tmp_path, "requester")
        ledger = Ledger(tmp_path / "requester-ledger.sqlite", req_id.public_hex)
        req_client = client()
        ledger.deposit(req_client.mint_gold(keypair_for(req_id).pubkey(), GOLD),
                       req_id.public_hex, GOLD, "airdrop")

        def worker(name: str, **kw) -> Worker:
            ident = party(tmp_path, name)
            store = WorkerStore(tmp_path / f"{name}.sqlite")
            w = Worker(HashBackend(), ident, store,
                       escrow=WorkerEscrow(client(), ident, store), **kw).start()
            workers.append(w)
            return w

        def requester(steps: list | None = None, crash_at: str | None = None, **kw):
            def on_step(name: str, info: dict) -> None:
                if steps is not None:
                    steps.append((name, info))
                if name == crash_at:
                    raise Crash(name)
            # The requester runs in the test's thread, so every requester (a restarted one too:
            # a client holds no state of its own) reaches the chain through the one client.
            funds = EscrowFunds(ledger, req_client, keypair_for(req_id), on_step=on_step,
                                royalty_split=kw.pop("royalty_split", None))
            kw.setdefault("heartbeat_timeout", 2.0)
            return Requester(req_id, JobStore(tmp_path / "requester.sqlite"), HashBackend(),
                             escrow=funds, **kw)

        class Market:
            pass
        m = Market()
        m.chain, m.client, m.ledger, m.req_id = chain, req_client, ledger, req_id
        m.worker, m.requester = worker, requester
        yield m
        for w in workers:
            w.close()
        ledger.close()
        for c in opened:
            c.close()


def gold_of(m, who) -> int:
    return m.client.gold_balance(pubkey_of(who.identity.public_hex if hasattr(who, "identity")
                                           else who.public_hex))


def check_books(m, ws, receipts) -> None:
    """Every escrow closed, every receipt paid exactly once, chain = ledger on both sides."""
    assert {e["status"] for e in m.ledger.escrows()} <= {"closed", "failed"}
    assert m.client.accounts_exist([Pubkey.from_string(e["account"])
                                    for e in m.ledger.escrows()]) == [False] * len(
        m.ledger.escrows())
    paid = sum(r.body.amount for r in receipts)
    assert gold_of(m, m.req_id) == GOLD - paid
    assert holdings(m.ledger, m.client) == m.ledger.settled_balance() == GOLD - paid
    assert m.ledger.pending() == [] and m.ledger.audit().ok
    for w in ws:
        mine = [r for r in receipts if r.body.worker == w.identity.public_hex]
        assert gold_of(m, w) == sum(worker_share(r.body) for r in mine)
        assert all(m.ledger.receipt_settlement(receipt_id(r.body)) for r in mine)


def test_budget_locked_before_dispatch_released_per_receipt_and_the_rest_refunded(market,
                                                                                   tmp_path):
    m = market
    ws = [m.worker("w0"), m.worker("w1")]
    steps: list = []
    served_when_locked = {}

    def watch(name, info):
        if name == "locked":  # no shard may have reached the worker before its gold is locked
            w = next(w for w in ws if w.identity.public_hex == info["worker"])
            served_when_locked[info["worker"]] = (w.stats.shards_served, len(w.stats.running))
    req = m.requester(steps)
    original = req.escrow.on_step
    req.escrow.on_step = lambda n, i: (watch(n, i), original(n, i))
    items = items_of(20)
    job = job_id(batch_bytes(20), MODEL, None)
    outcome = req.run(job, MODEL, None, items, [w.signed_offer() for w in ws])

    assert set(served_when_locked.values()) == {(0, 0)} and len(served_when_locked) == 2
    receipts = req.store.receipts(job)
    assert len(receipts) == outcome.receipts == 2 and outcome.escrows_open == 0
    assert outcome.budget == 2 * max_cost(items, ws[0].price_per_1k)
    for w in ws:  # each worker checked its escrow on chain before working
        (row,) = [e for e in m.ledger.escrows() if e["worker"] == w.identity.public_hex]
        held = w.store.escrow(bytes(Pubkey.from_string(row["account"])).hex())
        assert held is not None and held.job == job
    assert outcome.released == outcome.paid == sum(r.body.amount for r in receipts) > 0
    locked = sum(i["amount"] for n, i in steps if n == "locked")
    assert outcome.refunded == locked - outcome.paid > 0
    names = [n for n, _ in steps]
    # one lock, one release and one refund transaction per worker
    assert names.count("locked") == names.count("settled") == names.count("refunded") == 2
    check_books(m, ws, receipts)

    # the worker's own ledger: its receipts, marked settled by the releases it co-signed
    for w in ws:
        with Ledger(tmp_path / f"{w.identity.public_hex[:8]}.sqlite",
                    w.identity.public_hex) as theirs:
            for r in w.store.receipts():
                theirs.record(r)
            assert settle_released(theirs, m.client, w.store) == 1
            assert theirs.settled_balance() == gold_of(m, w) and not theirs.pending()


def test_a_worker_refuses_to_cosign_a_wrong_release_and_a_later_run_pays_right(market,
                                                                               monkeypatch):
    m = market
    ws = [m.worker("w0"), m.worker("w1")]
    items = items_of(10)
    job = job_id(batch_bytes(10) + b"wrong", MODEL, None)
    real = escrow_module.payouts
    # a requester whose release pays each worker one unit more than its receipts say
    monkeypatch.setattr(escrow_module, "payouts",
                        lambda batch, payer: {k: v + 1 for k, v in real(batch, payer).items()})
    req = m.requester()
    outcome = req.run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    assert outcome.escrows_open == 2 and outcome.released == 0
    assert all("refused to co-sign" in p and "moves" in p for p in outcome.escrow_problems)
    assert [gold_of(m, w) for w in ws] == [0, 0]  # nothing left the escrows
    assert len(m.ledger.escrows("open")) == 2
    receipts = req.store.receipts(job)
    assert holdings(m.ledger, m.client) == m.ledger.settled_balance() == GOLD
    # their receipts are in the ledger, unpaid, but settlement leaves them to the escrows
    assert len(m.ledger.pending()) == 2
    report = settle(m.ledger, m.client, keypair_for(m.req_id))
    assert report.settled_receipts == 0 and [gold_of(m, w) for w in ws] == [0, 0]

    monkeypatch.setattr(escrow_module, "payouts", real)
    again = m.requester().run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    assert again.escrows_open == 0 and again.released == sum(r.body.amount for r in receipts)
    check_books(m, ws, receipts)


def test_a_requester_without_enough_gold_is_refused_before_anything_is_dispatched(market):
    m = market
    ws = [m.worker("w0"), m.worker("w1")]
    items = items_of(10)
    req = m.requester()
    with pytest.raises(EscrowError, match="budget is 3000000 micro-gold .* can lock only "
                                          "1000000"):
        req.run(job_id(b"poor", MODEL, None), MODEL, None, items,
                [w.signed_offer() for w in ws], budget=3 * GOLD)
    assert [w.stats.shards_served for w in ws] == [0, 0]
    assert [w.store.served_amount(job_id(b"poor", MODEL, None),
                                  m.req_id.public_hex) for w in ws] == [0, 0]
    assert m.ledger.escrows() == [] and gold_of(m, m.req_id) == GOLD


def test_a_worker_that_requires_escrow_refuses_an_unescrowed_job(market, tmp_path):
    m = market
    w = m.worker("w0", require_escrow=True)
    plain = Requester(m.req_id, JobStore(tmp_path / "plain.sqlite"), HashBackend(),
                      heartbeat_timeout=2.0)
    with pytest.raises(JobError, match="unescrowed"):
        plain.run(job_id(b"plain", MODEL, None), MODEL, None, items_of(4), [w.signed_offer()])
    assert w.stats.shards_served == 0


@pytest.mark.parametrize("step", ["locked", "cosigned", "recorded", "sent"])
def test_a_requester_killed_at_an_escrow_step_neither_pays_twice_nor_loses_the_lock(market,
                                                                                    step):
    """The requester dies right after a step (an exception nothing catches: no code of its
    runs after it), then it and both workers restart and the same job is run again."""
    m = market
    ws = [m.worker("w0"), m.worker("w1")]
    items = items_of(10)
    job = job_id(batch_bytes(10) + step.encode(), MODEL, None)
    with pytest.raises(Crash):
        m.requester(crash_at=step).run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    # no gold is lost: it is the requester's (its wallet, or an escrow its ledger knows) or it
    # reached a worker by a release that landed
    assert holdings(m.ledger, m.client) + sum(gold_of(m, w) for w in ws) == GOLD
    for w in ws:  # the workers restart too: what they checked and signed is on disk
        w.close()
    ws = [m.worker("w0"), m.worker("w1")]
    steps: list = []
    again = m.requester(steps).run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    assert again.escrows_open == 0 and not again.escrow_problems
    names = [n for n, _ in steps]
    if step == "locked":  # the escrow opened before the crash is used, not a second one
        assert names.count("locked") == 1 and len(m.ledger.escrows()) == 2
    if step in ("recorded", "sent"):  # that release was resolved on restart, not made again
        assert names.count("settled") == 1
    check_books(m, ws, m.requester().store.receipts(job))


def test_gold_locked_for_a_worker_that_refused_its_shard_comes_back(market):
    """The paused worker is given a shard (its gold locked first), refuses it, and the shard is
    redone elsewhere; at the end it co-signs the refund of an escrow it never worked for."""
    m = market
    paused = m.worker("paused", gate=SwitchGate(30.0, open_=False))
    ws = [m.worker("w0"), paused]
    items = items_of(10)
    job = job_id(batch_bytes(10) + b"paused", MODEL, None)
    steps: list = []
    outcome = m.requester(steps).run(job, MODEL, None, items, [w.signed_offer() for w in ws])
    assert outcome.reassigned >= 1 and paused.stats.shards_served == 0
    assert {i["worker"] for n, i in steps if n == "locked"} == {w.identity.public_hex
                                                                for w in ws}
    refunded = {i["worker"] for n, i in steps if n == "refunded"}
    assert paused.identity.public_hex in refunded and outcome.escrows_open == 0
    check_books(m, ws, m.requester().store.receipts(job))


def test_a_worker_without_a_chain_refuses_an_escrowed_shard(market, tmp_path):
    m = market
    ident = party(tmp_path, "chainless")
    w = Worker(HashBackend(), ident, WorkerStore(tmp_path / "chainless.sqlite")).start()
    try:
        with pytest.raises(JobError, match="no chain to check the escrow on"):
            m.requester().run(job_id(b"chainless", MODEL, None), MODEL, None, items_of(4),
                              [w.signed_offer()])
        assert w.stats.shards_served == 0
    finally:
        w.close()


def test_a_job_that_wore_a_skin_pays_its_creators_royalties_out_of_escrow(market, tmp_path):
    m = market
    ws = [m.worker(f"w{i}", skins=(SKIN,), price_per_1k=10_000) for i in range(2)]
    creators = [party(tmp_path, "c1"), party(tmp_path, "c2")]
    split = lineage(*creators)
    items = items_of(10)
    job = job_id(batch_bytes(10), MODEL, SKIN)
    req = m.requester(royalty_split=lambda skin: split if skin == SKIN else None)
    outcome = req.run(job, MODEL, SKIN, items, [w.signed_offer() for w in ws])
    assert outcome.escrows_open == 0 and outcome.released == outcome.paid
    receipts = req.store.receipts(job)
    check_books(m, ws, receipts)
    for c in creators:  # each creator's royalties, exactly as the ledger split them
        assert gold_of(m, c) == m.ledger.settled_balance(c.public_hex) > 0
