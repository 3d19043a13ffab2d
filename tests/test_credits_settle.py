"""Settlement: the chain agrees with the ledger after every settle, through crashes (in process
and kill -9) and chain restarts, and nothing is ever paid twice or lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from credits_helpers import SKIN, client_for, lineage, make_receipt, party, running_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.credits.chain import keypair_for, pubkey_of
from swarm.credits.ledger import Ledger
from swarm.credits.settle import SettleError, batch_memo, settle

STEPS = ("signed", "recorded", "sent", "settled")


class Crash(BaseException):
    """Stands for the process dying at a step (BaseException: nothing may catch it)."""


def crash_at(step: str, occurrence: int = 1):
    seen = {"n": 0}

    def hook(name: str, info: dict) -> None:
        if name == step:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise Crash(step)
    return hook


def assert_books_match_chain(ledger: Ledger, client, parties, minted: int) -> None:
    """Every party's chain balance is what the ledger says was settled to it (the payer's
    exactly; with no other payer, everyone's), and no gold appeared or vanished."""
    assert not ledger.open_batches()
    on_chain = {p.public_hex: client.gold_balance(pubkey_of(p.public_hex)) for p in parties}
    for key, held in on_chain.items():
        assert held == ledger.settled_balance(key), key[:8]
    assert sum(on_chain.values()) == minted
    assert ledger.audit().ok
    assert ledger.balance() >= 0


#: The requester, enough distinct recipients that a settlement takes more than one transaction,
#: and two skin creators.
PARTIES = ("req", *(f"w{i}" for i in range(24)), "c1", "c2")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The parties' key files, made once for the module (each test copies them)."""
    root = tmp_path_factory.mktemp("settle-keys")
    for name in PARTIES:
        party(root, name)
    return root / "ids"


@pytest.fixture
def setup(tmp_path, keys):
    shutil.copytree(keys, tmp_path / "ids")
    req, c1, c2 = (party(tmp_path, n) for n in ("req", "c1", "c2"))
    workers = [party(tmp_path, f"w{i}") for i in range(24)]
    ledger = Ledger(tmp_path / "ledger.sqlite", req.public_hex)
    with running_chain(tmp_path / "chain") as chain:
        with client_for(chain) as client:
            sig = client.mint_gold(keypair_for(req).pubkey(), 50_000_000)
            ledger.deposit(sig, req.public_hex, 50_000_000, "airdrop")
            yield dict(req=req, workers=workers, creators=[c1, c2], ledger=ledger,
                       chain=chain, client=client, parties=[req, *workers, c1, c2],
                       payer=keypair_for(req), path=tmp_path)
    ledger.close()


def _record(s, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        skin = SKIN if i % 3 == 0 else None
        s["ledger"].record(make_receipt(s["req"], s["workers"][i % len(s["workers"])], shard=i, skin=skin,
                                        tokens_out=50 + i),
                           lineage(*s["creators"]) if skin else None)


def test_settle_pays_every_receipt_once_and_the_chain_agrees(setup):
    s = setup
    _record(s, 45)
    report = settle(s["ledger"], s["client"], s["payer"])
    assert report.settled_receipts == 45 and report.transactions
    assert not s["ledger"].pending()
    assert_books_match_chain(s["ledger"], s["client"], s["parties"], 50_000_000)
    again = settle(s["ledger"], s["client"], s["payer"])
    assert again.settled_receipts == 0 and not again.transactions


def test_the_memo_names_the_batch(setup):
    s = setup
    _record(s, 3)
    settle(s["ledger"], s["client"], s["payer"])
    [batch] = s["ledger"].batches()
    ids = [r for r, in s["ledger"].db.execute("SELECT id FROM receipts WHERE batch = ?",
                                              (batch.id,))]
    assert batch.memo == batch_memo(ids) and batch.status == "settled"
    from solders.transaction import Transaction
    tx = Transaction.from_bytes(batch.tx)
    assert batch_memo(ids).encode() in bytes(tx.message)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("occurrence", [1, 2])
def test_a_crash_at_any_step_neither_pays_twice_nor_loses_a_receipt(setup, step, occurrence):
    s = setup
    _record(s, 40)
    with pytest.raises(Crash):
        settle(s["ledger"], s["client"], s["payer"], on_step=crash_at(step, occurrence))
    settle(s["ledger"], s["client"], s["payer"])
    assert not s["ledger"].pending()
    assert_books_match_chain(s["ledger"], s["client"], s["parties"], 50_000_000)


def test_a_chain_restart_with_a_batch_in_flight_replaces_it(setup):
    s = setup
    _record(s, 10)
    with pytest.raises(Crash):
        settle(s["ledger"], s["client"], s["payer"], on_step=crash_at("recorded"))
    [stale] = s["ledger"].open_batches()
    s["chain"].restart()
    with client_for(s["chain"]) as client:
        report = settle(s["ledger"], client, s["payer"])
        assert report.expired == 1 and report.settled_receipts == 10
        with pytest.raises(Exception, match="refused"):
            client.send(stale.tx)  # signed before the restart: never valid again
        assert_books_match_chain(s["ledger"], client, s["parties"], 50_000_000)


def test_settling_more_than_the_wallet_holds_is_refused_before_sending(setup):
    s = setup
    s["ledger"].deposit("fiction", s["req"].public_hex, 10**9, "not on chain")
    for i in range(3):
        s["ledger"].record(make_receipt(s["req"], s["workers"][0], shard=i, tokens_out=10**7))
    with pytest.raises(SettleError, match="wallet holds"):
        settle(s["ledger"], s["client"], s["payer"])
    assert not s["ledger"].open_batches()


@pytest.mark.slow
@given(ops=st.lists(st.tuples(st.sampled_from(["receipts", "settle", "crash", "restart"]),
                              st.integers(1, 30), st.sampled_from(STEPS)),
                    min_size=1, max_size=8))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_random_receipts_settlements_crashes_and_restarts(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("random")
    s = {"req": party(root, "req"), "workers": [party(root, f"w{i}") for i in range(20)],
         "creators": [party(root, "c1"), party(root, "c2")]}
    parties = [s["req"], *s["workers"], *s["creators"]]
    payer = keypair_for(s["req"])
    with running_chain(root / "chain") as chain, \
            Ledger(root / "ledger.sqlite", s["req"].public_hex) as ledger:
        s["ledger"] = ledger
        with client_for(chain) as client:
            sig = client.mint_gold(payer.pubkey(), 20_000_000)
        ledger.deposit(sig, s["req"].public_hex, 20_000_000, "airdrop")
        shard = 0
        for op, n, step in ops:
            with client_for(chain) as client:
                if op == "receipts":
                    _record(s, n, shard)
                    shard += n
                elif op == "crash":
                    try:
                        settle(ledger, client, payer, on_step=crash_at(step, 1 + n % 2))
                    except Crash:
                        pass
                elif op == "restart":
                    pass
                if op == "settle":
                    settle(ledger, client, payer)
                    assert_books_match_chain(ledger, client, parties, 20_000_000)
            if op == "restart":
                chain.restart()
        with client_for(chain) as client:
            settle(ledger, client, payer)
            assert not ledger.pending()
            assert_books_match_chain(ledger, client, parties, 20_000_000)


# ---- kill -9 -----------------------------------------------------------------------------------

_SETTLER = textwrap.dedent("""
    import os, signal, sys
    from common.identity import load_or_create_identity
    from swarm.credits.chain import ChainClient, keypair_for
    from swarm.credits.ledger import Ledger
    from swarm.credits.settle import settle
    root, url, kill_step, kill_n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    req = load_or_create_identity(__import__("pathlib").Path(root) / "ids" / "req")
    seen = {}
    def hook(name, info):
        seen[name] = seen.get(name, 0) + 1
        if name == kill_step and seen[name] == kill_n:
            os.kill(os.getpid(), signal.SIGKILL)
    with Ledger(root + "/ledger.sqlite", req.public_hex) as ledger, ChainClient(url) as client:
        settle(ledger, client, keypair_for(req), on_step=hook)
    print("done")
""")


@pytest.mark.slow
def test_kill_9_at_every_step_of_settlement(setup):
    s = setup
    _record(s, 40)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    kills = rounds = 0
    for step in STEPS:
        for n in (1, 2):
            rounds += 1
            _record(s, 30, start=1000 * rounds)  # fresh receipts for every round
            r = subprocess.run([sys.executable, "-c", _SETTLER, str(s["path"]), s["chain"].url,
                                step, str(n)], env=env, capture_output=True, text=True, timeout=120)
            if r.returncode == -signal.SIGKILL:
                kills += 1
            else:
                assert r.returncode == 0, r.stderr
            r = subprocess.run([sys.executable, "-c", _SETTLER, str(s["path"]), s["chain"].url,
                                "never", "1"], env=env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0 and "done" in r.stdout, r.stderr
            assert not s["ledger"].pending()
            assert_books_match_chain(s["ledger"], s["client"], s["parties"], 50_000_000)
    assert kills >= len(STEPS)  # every step was reached and killed at least once


def test_an_earner_marks_receipts_settled_only_from_a_notice_the_chain_backs(setup):
    import msgspec

    from swarm.credits.notice import NoticeError, apply_notice, notices_from

    s = setup
    worker = s["workers"][0]
    _record(s, len(s["workers"]) * 2)
    settle(s["ledger"], s["client"], s["payer"])
    with Ledger(s["path"] / "worker.sqlite", worker.public_hex) as mine:
        # the worker's own copies of the receipts it signed (shards 0 and 24 of _record)
        held = [make_receipt(s["req"], worker, shard=i, tokens_out=50 + i,
                             skin=SKIN if i % 3 == 0 else None)
                for i in range(0, len(s["workers"]) * 2, len(s["workers"]))]
        for r in held:
            mine.record(r, lineage(*s["creators"]) if r.body.skin else None)
        notices = notices_from(s["ledger"])
        forged = msgspec.structs.replace(notices[0], receipts=notices[0].receipts[:-1])
        with pytest.raises(NoticeError, match="memo does not name"):
            apply_notice(mine, s["client"], forged)
        marked = sum(apply_notice(mine, s["client"], n) for n in notices)
        assert marked == len(held)
        assert sum(apply_notice(mine, s["client"], n) for n in notices) == 0  # idempotent
        assert not mine.pending()
        assert mine.settled_balance() == s["client"].gold_balance(pubkey_of(worker.public_hex))
