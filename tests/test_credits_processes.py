"""Requester, worker and creator as separate `hearth` processes settling on one `hearth chain`."""

from __future__ import annotations

import json
import socket

import msgspec
import pytest
from conftest import hearth, hearth_popen
from credits_helpers import make_receipt

from common.identity import load_or_create_identity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wallet(home, config):
    r = hearth("wallet", "--json", home=home, config=config, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_three_parties_settle_on_one_chain_process(tmp_path):
    port = _free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "wallet.toml").write_text(f'listen = "127.0.0.1:{port}"\n')
    homes = {name: tmp_path / name for name in ("requester", "worker", "creator")}
    ids = {name: load_or_create_identity(home) for name, home in homes.items()}
    chain = hearth_popen("chain", "--dir", tmp_path / "chain", home=tmp_path / "chainhome",
                         config=config)
    try:
        line = chain.stdout.readline()
        assert "listening on" in line, line + chain.stderr.read()

        # the requester pays the worker for 20 shards; the worker pays the creator for 5
        jobs = {"requester": [make_receipt(ids["requester"], ids["worker"], shard=i)
                              for i in range(20)],
                "worker": [make_receipt(ids["worker"], ids["creator"], shard=i, job="12" * 32)
                           for i in range(5)]}
        for payer, receipts in jobs.items():
            path = tmp_path / f"{payer}.jsonl"
            path.write_text("".join(msgspec.json.encode(r).decode() + "\n" for r in receipts))
            r = hearth("wallet", "airdrop", "2", home=homes[payer], config=config, timeout=120)
            assert r.returncode == 0 and "airdropped 2 gold" in r.stdout, r.stderr
            r = hearth("wallet", "record", path, home=homes[payer], config=config, timeout=120)
            assert "recorded" in r.stdout, r.stderr
        # each earner keeps the receipts it signed as worker, too
        for earner, payer in (("worker", "requester"), ("creator", "worker")):
            r = hearth("wallet", "record", tmp_path / f"{payer}.jsonl", home=homes[earner],
                       config=config, timeout=120)
            assert r.returncode == 0, r.stderr

        # both payers settle at once, as two processes on the one chain
        settlers = [hearth_popen("wallet", "settle", home=homes[p], config=config)
                    for p in jobs]
        for proc in settlers:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0 and "settled in" in out, err

        paid = {p: sum(r.body.amount for r in rs) for p, rs in jobs.items()}
        views = {name: _wallet(home, config) for name, home in homes.items()}
        assert views["requester"]["chain"] == 2_000_000 - paid["requester"]
        assert views["worker"]["chain"] == 2_000_000 + paid["requester"] - paid["worker"]
        assert views["creator"]["chain"] == paid["worker"]
        assert views["requester"]["chain"] == views["requester"]["settled"]
        for name, home in homes.items():
            r = hearth("wallet", "audit", home=home, config=config, timeout=120)
            assert r.returncode == 0 and "checked against the chain" in r.stdout, \
                name + r.stdout + r.stderr

        # earners learn of their settlements from the payers' notices, checked against the chain
        for payer, earner in (("requester", "worker"), ("worker", "creator")):
            notices = tmp_path / f"{payer}-notices.jsonl"
            r = hearth("wallet", "notices", "--out", notices, home=homes[payer], config=config,
                       timeout=120)
            assert r.returncode == 0, r.stderr
            r = hearth("wallet", "confirm", notices, home=homes[earner], config=config,
                       timeout=120)
            assert r.returncode == 0 and f"{len(jobs[payer])} of your receipt(s)" in r.stdout, \
                r.stdout + r.stderr
        for name, home in homes.items():
            view = _wallet(home, config)
            assert view["chain"] == view["settled"], name
            assert not view["pending"], name

        # a settlement replayed by hand is refused; nothing moves
        again = hearth("wallet", "settle", home=homes["requester"], config=config, timeout=120)
        assert "0 receipt(s) settled" in again.stdout
        assert _wallet(homes["creator"], config)["chain"] == paid["worker"]
    finally:
        chain.terminate()
        chain.wait(timeout=30)


@pytest.mark.slow
def test_a_wallet_starts_the_embedded_chain_when_none_answers(tmp_path):
    port = _free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "wallet.toml").write_text(f'listen = "127.0.0.1:{port}"\n')
    home = tmp_path / "home"
    r = hearth("wallet", "audit", home=home, config=config, timeout=120)
    assert r.returncode == 0 and "not checked against it" in r.stdout, r.stdout + r.stderr
    r = hearth("wallet", "airdrop", "1.5", home=home, config=config, timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        assert _wallet(home, config)["chain"] == 1_500_000
        r = hearth("wallet", "airdrop", "0.0000001", home=home, config=config, timeout=60)
        assert r.returncode == 2 and "at most 6 decimals" in r.stderr
        # gold that arrives from outside the ledger is counted once by `wallet sync`
        from swarm.credits.chain import ChainClient, keypair_for
        with ChainClient(f"http://127.0.0.1:{port}") as client:
            client.mint_gold(keypair_for(load_or_create_identity(home)).pubkey(), 250_000)
        r = hearth("wallet", "sync", home=home, config=config, timeout=60)
        assert "counted 0.25 gold" in r.stdout, r.stderr
        r = hearth("wallet", "sync", home=home, config=config, timeout=60)
        assert "already explains" in r.stdout, r.stderr
        view = _wallet(home, config)
        assert view["ledger"] == view["chain"] == 1_750_000
    finally:
        _stop_chain_serving(home / "chain")


def _stop_chain_serving(directory) -> None:
    """Stop the background chain this test's wallet started (the one serving ``directory``)."""
    import psutil
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "swarm.credits.chain_server" in cmd and str(directory) in cmd:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["recorded", "sent"])
def test_the_chain_killed_mid_settlement_restarts_with_the_books_intact(tmp_path, step):
    """kill -9 of `hearth chain` after the batch is recorded (not yet sent) or after it landed:
    restarted on the same state, the next settle pays every receipt exactly once."""
    import signal

    from credits_helpers import party

    from swarm.credits.chain import ChainClient, ChainError, keypair_for, pubkey_of
    from swarm.credits.ledger import Ledger
    from swarm.credits.settle import SettleError, settle

    port = _free_port()
    config = tmp_path / "config"
    config.mkdir()

    def start_chain():
        proc = hearth_popen("chain", "--listen", f"127.0.0.1:{port}", "--dir", tmp_path / "chain",
                            home=tmp_path / "chainhome", config=config)
        assert "listening on" in proc.stdout.readline()
        return proc

    req = party(tmp_path, "req")
    workers = [party(tmp_path, f"w{i}") for i in range(5)]
    url = f"http://127.0.0.1:{port}"
    chain = start_chain()
    try:
        with Ledger(tmp_path / "ledger.sqlite", req.public_hex) as ledger:
            with ChainClient(url) as client:
                sig = client.mint_gold(keypair_for(req).pubkey(), 1_000_000)
            ledger.deposit(sig, req.public_hex, 1_000_000, "airdrop")
            for i in range(10):
                ledger.record(make_receipt(req, workers[i % 5], shard=i))

            def kill_chain(name, info):
                if name == step:
                    chain.send_signal(signal.SIGKILL)
                    chain.wait(timeout=30)
            with ChainClient(url) as client, pytest.raises((ChainError, SettleError)):
                settle(ledger, client, keypair_for(req), on_step=kill_chain)
                client.block_height()  # after "sent" the settle itself may finish first
            chain = start_chain()
            with ChainClient(url) as client:
                report = settle(ledger, client, keypair_for(req))
                assert report.expired == (1 if step == "recorded" else 0)
                assert not ledger.pending() and ledger.audit().ok
                for w in workers:
                    assert client.gold_balance(pubkey_of(w.public_hex)) == \
                        ledger.settled_balance(w.public_hex)
                assert client.gold_balance(keypair_for(req).pubkey()) == ledger.settled_balance()
    finally:
        chain.terminate()
        chain.wait(timeout=30)
