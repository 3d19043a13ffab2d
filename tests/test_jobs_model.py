"""The compute market end to end on the real default model: three ``hearth worker`` processes
serving npc's batched engine and one ``hearth jobs submit`` sharding a 200-request Batch file over
them, re-scoring a sample teacher-forced and co-signing receipts (all on 127.0.0.1)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import pytest

from conftest import hearth, hearth_popen

pytestmark = [pytest.mark.model, pytest.mark.slow]

N_REQUESTS = 200


def batch_file(path, n: int = N_REQUESTS) -> None:
    topics = ["bread", "rope", "a lantern", "the inn", "iron", "the bell", "apples", "the road"]
    lines = []
    for i in range(n):
        body = {"model": "default", "max_tokens": 4 + i % 5,
                "messages": [{"role": "user", "content": f"Say one thing about {topics[i % 8]}."}]}
        if i % 3 == 1:  # a third sampled, replayed by the verifier from its seed
            body.update(temperature=0.8, top_p=0.9, seed=1000 + i)
        lines.append(json.dumps({"custom_id": f"req-{i:03d}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))
    path.write_text("\n".join(lines) + "\n")


def serving_endpoint(proc: subprocess.Popen, timeout: float = 300) -> str:
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not got or not got[0].startswith("serving: "):
        proc.kill()
        raise AssertionError(f"worker did not start: {got} {proc.stderr.read()}")
    return got[0].split()[1]


def test_three_real_workers_complete_a_200_request_job(tmp_path):
    requests, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    batch_file(requests)
    workers = [hearth_popen("worker", "--listen", "127.0.0.1:0", "--loopback",
                            home=tmp_path / f"worker{i}", env={"PYTHONUNBUFFERED": "1"})
               for i in range(3)]
    try:
        peers = [serving_endpoint(w) for w in workers]
        # Escrow is tested with the hash backend (tests/test_jobs_escrow.py); here the model's work.
        args = ["jobs", "submit", requests, "--model", "default", "--out", out, "--loopback",
                "--no-escrow", "--offer-timeout", "30"]  # every worker, even on a loaded machine
        for p in peers:
            args += ["--peer", p]
        r = hearth(*args, home=tmp_path / "requester", timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["custom_id"] for g in got] == [f"req-{i:03d}" for i in range(N_REQUESTS)]
        for i, g in enumerate(got):
            body = g["response"]["body"]
            assert g["error"] is None and g["response"]["status_code"] == 200
            usage = body["usage"]
            assert 1 <= usage["completion_tokens"] <= 4 + i % 5 and usage["prompt_tokens"] > 5
            if body["choices"][0]["finish_reason"] == "length":
                assert usage["completion_tokens"] == 4 + i % 5
        assert "0 worker(s) caught cheating" in r.stderr + r.stdout
        status = hearth("jobs", "status", "--json", home=tmp_path / "requester")
        jobs = json.loads(status.stdout)
        assert len(jobs) == 1 and jobs[0]["state"] == "finished", jobs
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
    # Each worker holds a receipt for each shard it served, countersigned by the requester.
    held = [w.stderr.read() for w in workers]
    assert sum("receipt" in h for h in held) >= 1, held


def test_a_job_wearing_a_skin_runs_on_a_worker_that_offers_it(tmp_path):
    from npc.skins.bundle import read_signed
    from game.village_skins import BUNDLES_DIR
    bundle = BUNDLES_DIR / "pirate"
    skin_id = read_signed(bundle).skin_id
    for home in ("worker", "requester"):
        r = hearth("skin", "install", bundle, home=tmp_path / home, timeout=600)
        assert r.returncode == 0, r.stderr
    requests, out = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    batch_file(requests, 6)
    worker = hearth_popen("worker", "--listen", "127.0.0.1:0", "--loopback",
                          home=tmp_path / "worker", env={"PYTHONUNBUFFERED": "1"})
    try:
        peer = serving_endpoint(worker)
        r = hearth("jobs", "submit", requests, "--model", "default", "--skin", skin_id, "--out", out,
                   "--peer", peer, "--loopback", "--verify-fraction", "1", "--no-escrow",
                   home=tmp_path / "requester", timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(got) == 6 and all(g["response"]["status_code"] == 200 for g in got)
        assert "0 worker(s) caught cheating" in r.stderr + r.stdout  # re-scored with the skin
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
