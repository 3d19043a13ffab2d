"""The credits ledger: double entry, idempotence, refusals, royalties, audit."""

from __future__ import annotations

import sqlite3
from fractions import Fraction

import msgspec
import pytest
from credits_helpers import PARENT_SKIN, SKIN, lineage, make_receipt, party
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.credits.ledger import OUTSIDE, SKIN_FEE, Ledger, LedgerError, entries_for
from swarm.jobs.receipt import MAX_AMOUNT, sign_body


@pytest.fixture
def world(tmp_path):
    req, wrk, c1, c2, other = (party(tmp_path, n) for n in ("req", "wrk", "c1", "c2", "other"))
    ledger = Ledger(tmp_path / "ledger.sqlite", req.public_hex)
    ledger.deposit("airdrop-1", req.public_hex, 10_000_000, "airdrop")
    yield dict(req=req, wrk=wrk, c1=c1, c2=c2, other=other, ledger=ledger, path=tmp_path)
    ledger.close()


def test_a_receipt_moves_its_amount_from_requester_to_worker(world):
    ledger, req, wrk = world["ledger"], world["req"], world["wrk"]
    r = make_receipt(req, wrk)
    assert ledger.record(r) is True
    assert ledger.balance() == 10_000_000 - r.body.amount
    assert ledger.balance(wrk.public_hex) == r.body.amount
    assert sum(ledger.balances().values()) == 0
    assert ledger.record(r) is False  # idempotent on the receipt id
    assert ledger.receipt_count() == 1 and ledger.balance(wrk.public_hex) == r.body.amount


def test_royalties_split_exactly_with_the_remainder_to_the_worn_skin(world):
    ledger, req, wrk, c1, c2 = (world[k] for k in ("ledger", "req", "wrk", "c1", "c2"))
    r = make_receipt(req, wrk, tokens_out=71, price=3333, skin=SKIN)
    ledger.record(r, lineage(c1, c2))
    amount = r.body.amount
    fee = amount * SKIN_FEE.numerator // SKIN_FEE.denominator
    parent_cut = fee * 3 // 10
    assert ledger.balance(wrk.public_hex) == amount - fee
    assert ledger.balance(c2.public_hex) == parent_cut
    assert ledger.balance(c1.public_hex) == fee - parent_cut  # floor(0.7 fee) + the remainder
    assert ledger.balance() == 10_000_000 - amount


@given(amount_out=st.integers(0, 10**6), price=st.integers(0, 10**5),
       shares=st.lists(st.integers(1, 50), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_receipt_pays_out_exactly_its_amount(world, amount_out, price, shares):
    req, wrk = world["req"], world["wrk"]
    total = sum(shares)
    split = [(f"{i:064x}", SKIN if i == 0 else f"{i + 100:064x}", Fraction(s, total))
             for i, s in enumerate(shares)]
    r = make_receipt(req, wrk, tokens_out=amount_out, price=price, skin=SKIN)
    entries = entries_for(r, split)
    assert sum(e.amount for e in entries) == 0
    assert all(e.amount >= 0 for e in entries if e.role != "requester")
    royalties = [e.amount for e in entries if e.role == "royalty"]
    fee = r.body.amount * SKIN_FEE.numerator // SKIN_FEE.denominator
    assert sum(royalties) == fee
    for (_, _, share), cut in zip(split[1:], royalties[1:]):
        assert cut == fee * share.numerator // share.denominator


def test_forged_tampered_and_foreign_receipts_are_refused(world):
    ledger, req, wrk, other = (world[k] for k in ("ledger", "req", "wrk", "other"))
    r = make_receipt(req, wrk)
    forged = msgspec.structs.replace(r, requester_sig=sign_body(r.body, other))
    with pytest.raises(LedgerError, match="requester's signature does not verify"):
        ledger.record(forged)
    tampered = msgspec.structs.replace(r, body=msgspec.structs.replace(r.body, shard=9))
    with pytest.raises(LedgerError, match="signature does not verify"):
        ledger.record(tampered)
    foreign = make_receipt(other, wrk)
    with pytest.raises(LedgerError, match="this ledger belongs to"):
        ledger.record(foreign)
    wrong_amount = msgspec.structs.replace(r, body=msgspec.structs.replace(r.body, amount=-5))
    with pytest.raises(LedgerError, match="not what its tokens and price give"):
        ledger.record(wrong_amount)
    assert ledger.receipt_count() == 0 and ledger.audit().ok


def test_spending_more_than_the_owner_holds_or_overflowing_is_refused(world):
    ledger, req, wrk = world["ledger"], world["req"], world["wrk"]
    big = make_receipt(req, wrk, tokens_out=10**7, price=10**4)
    with pytest.raises(LedgerError, match="which has 10000000 on this ledger"):
        ledger.record(big)
    # the worker's own ledger: a requester that has paid it near the top of the range
    wl = Ledger(world["path"] / "worker.sqlite", wrk.public_hex)
    wl.deposit("d", wrk.public_hex, MAX_AMOUNT - 10, "test")
    with pytest.raises(LedgerError, match="overflow"):
        wl.record(make_receipt(req, wrk))
    with pytest.raises(LedgerError, match="must be a whole number"):
        wl.deposit("neg", wrk.public_hex, -1, "test")
    assert wl.audit().ok
    wl.close()


def test_a_settled_receipt_is_refused_and_a_live_batch_cannot_be_claimed_twice(world):
    ledger, req, wrk = world["ledger"], world["req"], world["wrk"]
    r = make_receipt(req, wrk)
    ledger.record(r)
    rid = ledger.pending()[0][0]
    batch = ledger.add_batch("sig-1", b"tx", 5, "memo", [rid])
    with pytest.raises(LedgerError, match="already being settled"):
        ledger.add_batch("sig-2", b"tx", 5, "memo", [rid])
    assert ledger.pending_to_pay() == []
    ledger.mark_batch(batch, "settled")
    with pytest.raises(LedgerError, match="already settled"):
        ledger.record(r)
    assert ledger.settled_balance() == 10_000_000 - r.body.amount


def test_an_expired_batch_gives_its_receipts_back(world):
    ledger, req, wrk = world["ledger"], world["req"], world["wrk"]
    ledger.record(make_receipt(req, wrk))
    rid = ledger.pending()[0][0]
    batch = ledger.add_batch("sig-1", b"tx", 5, "memo", [rid])
    ledger.mark_batch(batch, "expired")
    assert [receipt for receipt, _ in ledger.pending_to_pay()]
    ledger.add_batch("sig-2", b"tx", 6, "memo", [rid])


def test_royalties_earned_from_a_skin_are_summed_per_creator(world):
    ledger, req, wrk, c1, c2 = (world[k] for k in ("ledger", "req", "wrk", "c1", "c2"))
    receipts = [make_receipt(req, wrk, shard=i, skin=SKIN) for i in range(3)]
    for r in receipts:
        ledger.record(r, lineage(c1, c2))
    ledger.record(make_receipt(req, wrk, shard=9))  # no skin: no royalty
    rids = [rid for rid, _, _ in ledger.pending()][:1]
    ledger.mark_batch(ledger.add_batch("sig", b"tx", 1, "memo", rids), "settled")
    earned = ledger.royalties_from(SKIN)
    assert set(earned) == {c1.public_hex, c2.public_hex}
    fee = receipts[0].body.amount // 10
    assert earned[c2.public_hex] == (fee * 3 // 10, 2 * (fee * 3 // 10))
    assert sum(a + b for a, b in earned.values()) == 3 * fee
    assert ledger.royalties_from(PARENT_SKIN) == {}


def test_earnings_since_a_moment_count_work_and_royalties(world):
    import time

    req, wrk, c1, c2 = (world[k] for k in ("req", "wrk", "c1", "c2"))
    with Ledger(world["path"] / "worker.sqlite", wrk.public_hex) as mine:
        mine.record(make_receipt(req, wrk, shard=0))
        away = time.time()
        later = [make_receipt(req, wrk, shard=i, skin=SKIN) for i in (1, 2)]
        for r in later:
            mine.record(r, [(wrk.public_hex, SKIN, Fraction(1))])  # the worker made the skin
        assert mine.earned_since(away) == sum(r.body.amount for r in later)
        assert mine.earned_since(time.time() + 1) == 0


def test_royalty_split_is_checked(world):
    ledger, req, wrk, c1, c2 = (world[k] for k in ("ledger", "req", "wrk", "c1", "c2"))
    r = make_receipt(req, wrk, skin=SKIN)
    with pytest.raises(LedgerError, match="royalty split is needed"):
        ledger.record(r)
    with pytest.raises(LedgerError, match="sum to 9/10"):
        ledger.record(r, [(c1.public_hex, SKIN, Fraction(9, 10))])
    with pytest.raises(LedgerError, match="not the skin worn"):
        ledger.record(r, [(c1.public_hex, PARENT_SKIN, Fraction(1))])
    ledger.record(r, lineage(c1, c2))
    with pytest.raises(LedgerError, match="different royalty split"):
        ledger.record(r, [(c1.public_hex, SKIN, Fraction(1))])
    with pytest.raises(LedgerError, match="wore no skin"):
        ledger.record(make_receipt(req, wrk, shard=5), [(c1.public_hex, SKIN, Fraction(1))])


def test_audit_recomputes_from_receipts_and_catches_a_doctored_book(world):
    ledger, req, wrk, c1, c2 = (world[k] for k in ("ledger", "req", "wrk", "c1", "c2"))
    for shard in range(5):
        ledger.record(make_receipt(req, wrk, shard=shard, skin=SKIN if shard % 2 else None),
                      lineage(c1, c2) if shard % 2 else None)
    report = ledger.audit()
    assert report.ok and report.receipts == 5 and report.deposits == 1
    assert report.balances[OUTSIDE] == -10_000_000
    db = sqlite3.connect(world["path"] / "ledger.sqlite")
    db.execute("UPDATE entries SET amount = amount + 1 WHERE role = 'worker' AND id = "
               "(SELECT MIN(id) FROM entries WHERE role = 'worker')")
    db.commit()
    db.close()
    problems = ledger.audit().problems
    assert any("entries differ from what it says" in p for p in problems)
    assert any("running balance" in p for p in problems)


def test_a_ledger_reopens_with_the_same_books(world):
    ledger, req, wrk = world["ledger"], world["req"], world["wrk"]
    ledger.record(make_receipt(req, wrk))
    before = ledger.balances()
    ledger.close()
    again = Ledger(world["path"] / "ledger.sqlite", req.public_hex)
    assert again.balances() == before and again.audit().ok
    world["ledger"] = again
    (world["path"] / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger(world["path"] / "junk.sqlite", req.public_hex)


@given(ops=st.lists(st.tuples(st.sampled_from(["pay", "earn", "skin", "dup", "deposit"]),
                              st.integers(0, 5000)), min_size=1, max_size=25))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_sequences_conserve_supply_and_keep_the_owner_solvent(world, ops):
    req, wrk, c1, c2 = (world[k] for k in ("req", "wrk", "c1", "c2"))
    world["n"] = world.get("n", 0) + 1
    with Ledger(world["path"] / f"seq{world['n']}.sqlite", req.public_hex) as ledger:
        deposited = 0
        recorded = []
        for i, (op, n) in enumerate(ops):
            try:
                if op == "deposit":
                    ledger.deposit(f"d{i}", req.public_hex, n + 1, "test")
                    deposited += n + 1
                elif op == "pay":
                    receipt = make_receipt(req, wrk, shard=i, tokens_out=n)
                    ledger.record(receipt)
                    recorded.append(receipt)
                elif op == "earn":
                    ledger.record(make_receipt(wrk, req, shard=i, tokens_out=n))
                elif op == "skin":
                    ledger.record(make_receipt(req, wrk, shard=i, tokens_out=n, skin=SKIN),
                                  lineage(c1, c2))
                elif op == "dup" and recorded:
                    assert ledger.record(recorded[-1]) is False
            except LedgerError as e:
                assert "which has" in str(e)  # the only refusal a valid receipt may meet
            balances = ledger.balances()
            assert sum(balances.values()) == 0
            assert balances.get(OUTSIDE, 0) == -deposited
            assert ledger.balance() >= 0
        assert ledger.audit().ok
