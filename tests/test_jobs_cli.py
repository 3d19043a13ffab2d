"""``hearth worker``, ``hearth jobs submit`` and ``hearth jobs status`` as separate processes on
127.0.0.1, with the deterministic test backend in place of the model engine
(tests/jobs_hearth.py); workers are found by --peer or through local DHT nodes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, sealed_env
from jobs_backend import HashBackend
from swarm.jobs.batchfile import parse_batch
from swarm.jobs.discovery import announce, fetch_offers, find_endpoints
from swarm.jobs.job_store import JobStore
from swarm.jobs.requester import Requester, job_id
from swarm.jobs.worker import Worker
from swarm.jobs.worker_store import WorkerStore
from swarm.settings import SwarmSettings, parse_endpoint
from common.identity import load_or_create_identity
from test_jobs_network import batch_bytes

RUNNER = str(ROOT / "tests" / "jobs_hearth.py")
MODEL = HashBackend().model_id


def run(backend: str, *args, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, backend, *map(str, args)], cwd=ROOT,
                          env=sealed_env(home), capture_output=True, text=True, timeout=timeout)


class WorkerProc:
    def __init__(self, backend: str, home: Path, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, RUNNER, backend, "worker", "--listen", "127.0.0.1:0", *extra],
            cwd=ROOT, env=sealed_env(home, env={"PYTHONUNBUFFERED": "1"}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.line = self._serving_line()
        self.endpoint = self.line.split()[1]
        self.key = self.line.split()[3]

    def _serving_line(self) -> str:
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(60)
        assert got and got[0].startswith("serving: "), (got, self.proc.stderr.read()
                                                         if self.proc.poll() is not None else "")
        return got[0].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def procs():
    started: list[WorkerProc] = []

    def start(backend, home, *extra):
        w = WorkerProc(backend, home, *extra)
        started.append(w)
        return w
    yield start
    for w in started:
        w.stop()


def check_results(requests: Path, out: Path) -> list[dict]:
    lines = parse_batch(requests.read_bytes())
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["custom_id"] for g in got] == [ln.custom_id for ln in lines]  # input order
    truth = HashBackend()
    from jobs_backend import detokenize, prompt_tokens
    for ln, g in zip(lines, got):
        if ln.item is None:
            assert g["response"]["status_code"] == 400
            continue
        body = g["response"]["body"]
        assert g["response"]["status_code"] == 200 and body["model"] == MODEL
        (tokens, finish) = truth._decode(ln.item, truth.salt)
        assert body["choices"][0]["message"]["content"] == detokenize(tokens)
        assert body["choices"][0]["finish_reason"] == finish
        assert body["usage"]["prompt_tokens"] == len(prompt_tokens(ln.item))
        assert body["usage"]["completion_tokens"] == len(tokens)
    return got


@pytest.mark.slow
def test_submit_with_a_killed_and_a_stalled_worker_completes(procs, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(batch_bytes(40))
    ws = [procs("honest", tmp_path / "w0"), procs("honest", tmp_path / "w1"),
          procs("slow:0.3", tmp_path / "killed"), procs("slow:0.3", tmp_path / "stalled")]
    assert len({w.key for w in ws}) == 4
    out = tmp_path / "results.jsonl"
    peers = [a for w in ws for a in ("--peer", w.endpoint)]
    submit = subprocess.Popen(
        [sys.executable, RUNNER, "honest", "jobs", "submit", "--no-escrow",
         requests, "--model", "default",
         "--out", out, "--heartbeat-timeout", "2", *peers,
         # all four must be in the job: a loaded machine can take more than the default 3 s
         "--offer-timeout", "30"], cwd=ROOT,
        env=sealed_env(tmp_path / "req"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    time.sleep(1.5)  # both slow workers are a few requests into their shards
    ws[2].proc.kill()
    ws[3].proc.send_signal(signal.SIGSTOP)
    stdout, stderr = submit.communicate(timeout=120)
    assert submit.returncode == 0, stderr
    assert "4 shard(s)" in stdout and "2 reassigned" in stdout and "0 worker(s) caught" in stdout
    check_results(requests, out)
    status = run("honest", "jobs", "status", "--json", home=tmp_path / "req")
    (job,) = json.loads(status.stdout)
    assert (job["state"], job["shards"], job["shards_accepted"], job["receipts"]) == \
        ("finished", 4, 4, 4)  # every shard ended with a live worker that countersigned
    assert "finished" in run("honest", "jobs", "status", home=tmp_path / "req").stdout


@pytest.mark.slow
def test_a_cheating_worker_is_caught_from_the_command_line(procs, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(batch_bytes(12))
    ws = [procs("honest", tmp_path / "w0"), procs("cheat:one_token", tmp_path / "cheat")]
    out = tmp_path / "results.jsonl"
    r = run("honest", "jobs", "submit", "--no-escrow", requests, "--model", "default", "--out", out,
            *[a for w in ws for a in ("--peer", w.endpoint)], home=tmp_path / "req")
    assert r.returncode == 0, r.stderr
    assert "1 worker(s) caught cheating" in r.stdout
    check_results(requests, out)
    # The same job again: its results are held, nothing is bought, no worker is needed.
    out.unlink()
    again = run("honest", "jobs", "submit", "--no-escrow",
                requests, "--model", "default", "--out", out,
                "--peer", "127.0.0.1:9", home=tmp_path / "req")
    assert again.returncode == 0 and "nothing bought again" in again.stdout, again.stderr
    check_results(requests, out)
    # The caught worker is refused from then on.
    requests.write_bytes(batch_bytes(5))
    again = run("honest", "jobs", "submit", "--no-escrow",
                requests, "--model", "default", "--out", out,
                "--peer", ws[1].endpoint, home=tmp_path / "req")
    assert again.returncode == 2 and "fraud record" in again.stderr


@pytest.mark.slow
def test_bad_files_and_unhonourable_lines(procs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
                   '"body": {"messages": [{"role": "user", "content": "x"}]}}\n{oops\n')
    r = run("honest", "jobs", "submit", "--no-escrow",
            bad, "--model", "default", "--out", tmp_path / "o",
            "--peer", "127.0.0.1:9", home=tmp_path / "req")
    assert r.returncode == 2 and "line 2: not JSON" in r.stderr and not (tmp_path / "o").exists()
    w = procs("honest", tmp_path / "w0")
    good = tmp_path / "good.jsonl"
    good.write_bytes(batch_bytes(2))
    r = run("honest", "jobs", "submit", "--no-escrow", good, "--model", "default",
            "--out", tmp_path / "o", "--peer", w.endpoint, "--offer-timeout", "0",
            home=tmp_path / "req")
    assert r.returncode == 2 and "--offer-timeout must be a positive number" in r.stderr
    assert not (tmp_path / "o").exists()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(batch_bytes(3) + b"\n" + json.dumps(
        {"custom_id": "tools", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "x"}],
                  "tools": [{"type": "function"}]}}).encode())
    out = tmp_path / "out.jsonl"
    r = run("honest", "jobs", "submit", "--no-escrow", mixed, "--model", "default", "--out", out,
            "--peer", w.endpoint, home=tmp_path / "req")
    assert r.returncode == 1 and "line 4" in r.stderr and "'tools'" in r.stderr
    got = check_results(mixed, out)
    assert got[3]["response"]["body"]["error"]["param"] == "tools"
    r = run("honest", "jobs", "submit", "--no-escrow", mixed, "--model", "f" * 64, "--out", out,
            "--peer", w.endpoint, home=tmp_path / "req")
    assert r.returncode == 2 and "not the one this machine runs" in r.stderr


# ---- the DHT ------------------------------------------------------------------------------------

@pytest.fixture
def dht_nodes(tmp_path):
    from swarm.torrent import SwarmNode
    started = []

    def start(name):
        node = SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True, seeding=False),
                         tmp_path / name).start()
        started.append(node)
        return node
    yield start
    for n in started:
        n.close()


def wait_until(cond, seconds, what):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_workers_are_found_through_the_dht_by_model_id(dht_nodes, tmp_path):
    nodes = [dht_nodes(f"n{i}") for i in range(4)]
    for a in nodes:
        others = [parse_endpoint(b.endpoint) for b in nodes if b is not a]
        a.session.call(lambda ses, others=others: [ses.add_dht_node(n) for n in others])
    for a in nodes:
        wait_until(lambda: a.dht_node_count() >= 1, 10, "the DHT to connect")
    workers = [Worker(HashBackend(), load_or_create_identity(tmp_path / f"w{i}"),
                      WorkerStore(tmp_path / f"w{i}.sqlite")).start() for i in range(2)]
    try:
        for w, node in zip(workers, nodes):
            announce(node, [MODEL], int(w.offer_endpoint.rpartition(":")[2]))
        want = {w.offer_endpoint for w in workers}
        found: set[str] = set()

        def look():
            found.update(find_endpoints(nodes[3], MODEL, timeout=5))
            return want <= found
        wait_until(look, 30, "the workers' announces")
        assert find_endpoints(nodes[3], "e" * 64, timeout=5) == []  # another model: nobody
        ident = load_or_create_identity(tmp_path / "req")
        offers = fetch_offers(sorted(found), ident.public_hex, MODEL)
        assert {o.offer.worker for o in offers} == {w.identity.public_hex for w in workers}
        items = [ln.item for ln in parse_batch(batch_bytes(10))]
        req = Requester(ident, JobStore(tmp_path / "req.sqlite"), HashBackend())
        outcome = req.run(job_id(b"dht", MODEL, None), MODEL, None, items, offers)
        assert len(outcome.completions) == 10 and outcome.receipts == 2
    finally:
        for w in workers:
            w.close()


@pytest.mark.slow
def test_cli_worker_and_submit_meet_through_a_bootstrap_node(dht_nodes, procs, tmp_path):
    boot = dht_nodes("boot")
    net = ["--bootstrap", boot.endpoint, "--dht-listen", "127.0.0.1:0", "--loopback"]
    procs("honest", tmp_path / "w0", *net)
    procs("honest", tmp_path / "w1", *net)
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(batch_bytes(8))
    out = tmp_path / "out.jsonl"
    r = run("honest", "jobs", "submit", "--no-escrow",
            requests, "--model", MODEL, "--out", out, *net,
            home=tmp_path / "req")
    assert r.returncode == 0, r.stderr
    check_results(requests, out)


@pytest.mark.slow
def test_a_jobs_receipts_reach_both_wallets_and_settle_on_the_chain(procs, tmp_path):
    """Receipts of a finished job are in the requester's and the worker's ledgers without being
    recorded by hand; the requester settles them on the embedded chain and the worker's gold
    arrives there."""
    import socket
    from conftest import hearth_popen
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    homes = {"req": tmp_path / "req", "w0": tmp_path / "w0"}
    for home in homes.values():
        (home / "config").mkdir(parents=True)
        (home / "config" / "wallet.toml").write_text(f'listen = "127.0.0.1:{port}"\n')
    chain = hearth_popen("chain", "--dir", tmp_path / "chain", home=tmp_path / "chainhome",
                         config=homes["req"] / "config")
    try:
        assert "listening on" in chain.stdout.readline()
        requests = tmp_path / "requests.jsonl"
        requests.write_bytes(batch_bytes(8))
        w = procs("honest", homes["w0"])
        r = run("honest", "jobs", "submit", "--no-escrow", requests, "--model", "default", "--out",
                tmp_path / "out.jsonl", "--peer", w.endpoint, home=homes["req"])
        assert r.returncode == 0, r.stderr
        w.stop()

        def wallet(home):
            r = run("honest", "wallet", "--json", home=home)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        # The ledger never lets a balance go below zero: without gold the requester's receipt
        # waits in the job store (and says so), and is recorded once the gold is there.
        r = run("honest", "wallet", "--json", home=homes["req"])
        assert json.loads(r.stdout)["pending"] == [] and "not recorded" in r.stderr
        assert run("honest", "wallet", "airdrop", "1", home=homes["req"]).returncode == 0
        mine, theirs = wallet(homes["req"]), wallet(homes["w0"])
        assert len(mine["pending"]) == len(theirs["pending"]) >= 1
        owed = sum(p["amount"] for p in mine["pending"])
        assert owed > 0 and mine["ledger"] == 1_000_000 - owed and theirs["ledger"] == owed
        r = run("honest", "wallet", "settle", home=homes["req"])
        assert r.returncode == 0 and "settled in" in r.stdout, r.stdout + r.stderr
        assert wallet(homes["w0"])["chain"] == owed  # the worker's gold is on chain
        assert wallet(homes["req"])["pending"] == []
    finally:
        chain.terminate()
        chain.wait(timeout=30)


def _chain_homes(tmp_path, *names):
    """A `hearth chain` process on a free port and a home per party configured to use it."""
    import socket
    from conftest import hearth_popen
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    homes = {name: tmp_path / name for name in names}
    for home in homes.values():
        (home / "config").mkdir(parents=True)
        (home / "config" / "wallet.toml").write_text(f'listen = "127.0.0.1:{port}"\n')
    chain = hearth_popen("chain", "--dir", tmp_path / "chain", home=tmp_path / "chainhome",
                         config=homes[names[0]] / "config")
    assert "listening on" in chain.stdout.readline()
    return chain, homes


@pytest.mark.slow
@pytest.mark.parametrize("after", ["escrow: locked", "escrow: released"])
def test_submit_killed_at_an_escrow_step_pays_once_when_run_again(procs, tmp_path, after):
    """kill -9 of `hearth jobs submit` right after it reports an escrow step, then the same
    command again: the lock is reused, nothing is paid twice, the books and the chain agree."""
    chain, homes = _chain_homes(tmp_path, "req", "w0", "w1")
    try:
        requests = tmp_path / "requests.jsonl"
        requests.write_bytes(batch_bytes(8))
        ws = [procs("honest", homes["w0"]), procs("honest", homes["w1"])]
        assert run("honest", "wallet", "airdrop", "1", home=homes["req"]).returncode == 0
        cmd = [sys.executable, RUNNER, "honest", "jobs", "submit", requests, "--model",
               "default", "--out", tmp_path / "out.jsonl",
               *[a for w in ws for a in ("--peer", w.endpoint)]]
        first = subprocess.Popen(cmd, cwd=ROOT, env=sealed_env(homes["req"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in first.stderr:
            seen.append(line)
            if after in line:
                first.kill()
                break
        first.wait(30)
        assert first.returncode == -signal.SIGKILL, "".join(seen)
        again = subprocess.run(cmd, cwd=ROOT, env=sealed_env(homes["req"]),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("escrow: locked") <= 1  # the first run's lock is reused
        check_results(requests, tmp_path / "out.jsonl")

        def wallet(home):
            r = run("honest", "wallet", "--json", home=home)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        mine = wallet(homes["req"])
        earned = [wallet(homes[w]) for w in ("w0", "w1")]
        paid = sum(w["ledger"] for w in earned)
        assert paid > 0 and mine["pending"] == [] and mine["open_escrows"] == 0
        assert mine["chain"] == mine["settled"] == mine["ledger"] == 1_000_000 - paid
        for w in earned:
            assert w["pending"] == [] and w["chain"] == w["settled"] == w["ledger"]
        for home in homes.values():
            r = run("honest", "wallet", "audit", home=home)
            assert r.returncode == 0 and "checked against the chain" in r.stdout, r.stdout
    finally:
        chain.terminate()
        chain.wait(timeout=30)


@pytest.mark.slow
def test_submit_locks_a_budget_in_escrow_that_a_worker_requires_and_pays_out_of_it(procs,
                                                                                 tmp_path):
    """`hearth jobs submit` and `hearth worker --require-escrow` as processes on one `hearth
    chain`: refused before dispatch without gold, refused by the worker without escrow, then
    locked, paid out of escrow and refunded; both wallets agree with the chain."""
    chain, homes = _chain_homes(tmp_path, "req", "w0")
    try:
        requests = tmp_path / "requests.jsonl"
        requests.write_bytes(batch_bytes(8))
        out = tmp_path / "out.jsonl"
        w = procs("honest", homes["w0"], "--require-escrow")
        submit = ("jobs", "submit", requests, "--model", "default", "--out", out,
                  "--peer", w.endpoint)
        r = run("honest", *submit, home=homes["req"])
        assert r.returncode == 1 and "nothing was sent to any worker" in r.stderr, r.stderr
        assert not out.exists()
        r = run("honest", *submit, "--no-escrow", home=homes["req"])
        assert r.returncode == 1 and "unescrowed" in r.stderr, r.stderr
        assert run("honest", "wallet", "airdrop", "1", home=homes["req"]).returncode == 0
        r = run("honest", *submit, home=homes["req"])
        assert r.returncode == 0, r.stderr
        assert "escrow: locked" in r.stderr and "escrow: released" in r.stderr
        assert "released from escrow" in r.stdout
        check_results(requests, out)

        def wallet(home):
            r = run("honest", "wallet", "--json", home=home)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)
        mine, theirs = wallet(homes["req"]), wallet(homes["w0"])
        paid = theirs["ledger"]
        assert paid > 0 and mine["pending"] == [] == theirs["pending"]
        assert theirs["chain"] == theirs["settled"] == paid
        assert mine["chain"] == mine["settled"] == mine["ledger"] == 1_000_000 - paid
        for home in homes.values():
            r = run("honest", "wallet", "audit", home=home)
            assert r.returncode == 0 and "checked against the chain" in r.stdout, r.stdout
    finally:
        chain.terminate()
        chain.wait(timeout=30)
