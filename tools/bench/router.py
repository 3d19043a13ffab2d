"""``hearth serve``'s overhead and concurrency, measured side by side in one run on the model
``hearth serve`` runs: the same sampled chat requests (same seeds, so the same tokens) generated
directly through a scheduler in this process and through a ``hearth serve`` process (started
here, on 127.0.0.1, the same model and configuration) with the official openai client
streaming over HTTP. Each side is idle while the other runs.

A client sends ``--per-client`` requests one after another. Each round runs, back to back: one
client sending its requests alternately direct and served (request by request, so both sides see
the same seconds of a machine whose speed swings), then eight clients at once direct and the same
eight served (odd rounds serve first); ratios are taken within a round and the median over
``--rounds`` rounds is reported.

* overhead_ratio: served tok/s over direct tok/s, one client at a time.
* concurrency_ratio: aggregate served tok/s with 8 clients at once over 1 client.
* ttft_p50_ms: time to the first content chunk, one client, over every served single-client
  request.

Tokens/s counts generated tokens (usage.completion_tokens) over wall time, prompt reading
included. Timings are wall time on whatever else the machine is running.

Last line: ``overhead_ratio=<N> concurrency_ratio=<N> ttft_p50_ms=<N> ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from game.serve_backend import load_local_model  # noqa: E402

TOPICS = ["a lighthouse keeper", "a lost key", "the first snow", "a market day", "a clockmaker",
          "a river crossing", "an old map", "a stubborn goat"]


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Tell a short story about {TOPICS[i % len(TOPICS)]}."}]


def direct(scheduler, i: int, tokens: int) -> int:
    from npc.serving.scheduler import Finished, GenRequest
    h = scheduler.submit(GenRequest(messages=tuple((m["role"], m["content"]) for m in messages(i)),
                                    max_tokens=tokens, temperature=0.8, seed=i))
    for ev in h.events():
        if isinstance(ev, Finished):
            return ev.completion_tokens
    raise RuntimeError("no Finished event")


def served(client, i: int, tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds to the first content chunk)."""
    start = time.perf_counter()
    first = None
    used = 0
    for chunk in client.chat.completions.create(
            model="hearth", messages=messages(i), max_tokens=tokens, temperature=0.8, seed=i,
            stream=True, stream_options={"include_usage": True}):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return used, first if first is not None else float("nan")


def rate(run, clients: list[list[int]]) -> float:
    """Aggregate tokens/s of ``clients`` (one thread each) sending their requests one after
    another: ``run(i)`` sends request ``i`` and returns its completion tokens."""
    def client(jobs: list[int]) -> int:
        return sum(run(i) for i in jobs)
    start = time.perf_counter()
    if len(clients) == 1:
        total = client(clients[0])
    else:
        with ThreadPoolExecutor(len(clients)) as pool:
            total = sum(pool.map(client, clients))
    return total / (time.perf_counter() - start)


def paired(direct_one, served_one, jobs: list[int]) -> tuple[float, float]:
    """One client's requests sent alternately direct and served (each request both ways, the
    first side alternating): (direct tok/s, served tok/s), each over its own wall time."""
    sides = {"d": [0, 0.0], "s": [0, 0.0]}
    run = {"d": direct_one, "s": served_one}
    for n, i in enumerate(jobs):
        for side in ("ds" if n % 2 == 0 else "sd"):
            start = time.perf_counter()
            sides[side][0] += run[side](i)
            sides[side][1] += time.perf_counter() - start
    return sides["d"][0] / sides["d"][1], sides["s"][0] / sides["s"][1]


def start_server() -> tuple[subprocess.Popen, str]:
    """``hearth serve --port 0`` in its own process (this environment: the same data directory
    and model); (the process, its base URL) once it prints ``serving:``."""
    proc = subprocess.Popen([sys.executable, "-m", "game.cli", "serve", "--port", "0"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("serving: "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, line.split()[1]
    raise SystemExit(f"hearth serve exited ({proc.wait()}) before serving")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=24, help="max_tokens per request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-client", type=int, default=3,
                    help="requests each client sends, one after another (a client keeps its "
                         "slot busy, so the batch is not measured draining)")
    args = ap.parse_args()

    server, url = start_server()
    local, backend, scheduler = load_local_model()
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    rows, ttfts = [], []

    def one_served(i):
        n, t = served(client, i, args.tokens)
        ttfts.append(t)
        return n
    try:
        served(client, 0, 4)  # warm: the HTTP connection, the chat template
        for rnd in range(args.rounds):
            i, k = 1000 * rnd, args.per_client
            one = [list(range(i, i + k))]
            eight = [list(range(i + c * k, i + (c + 1) * k)) for c in range(8)]
            d1, s1 = paired(lambda j: direct(scheduler, j, args.tokens), one_served, one[0])
            runs = {"d8": lambda: rate(lambda j: direct(scheduler, j, args.tokens), eight),
                    "s8": lambda: rate(lambda j: served(client, j, args.tokens)[0], eight)}
            # Odd rounds serve first, so neither side always runs on a machine just disturbed.
            order = ["d8", "s8"] if rnd % 2 == 0 else ["s8", "d8"]
            got = {k: runs[k]() for k in order}
            d8, s8 = got["d8"], got["s8"]
            rows.append((d1, s1, d8, s8))
            print(f"round {rnd}: direct 1 {d1:.1f} tok/s, served 1 {s1:.1f}, direct 8 {d8:.1f}, "
                  f"served 8 {s8:.1f}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        scheduler.close()
        backend.close()
    med = statistics.median
    overhead = med(s1 / d1 for d1, s1, _, _ in rows)
    concurrency = med(s8 / s1 for _, s1, _, s8 in rows)
    batched = med(s8 / d8 for _, _, d8, s8 in rows)
    ttft = med(ttfts) * 1000
    print(f"overhead_ratio={overhead:.3f} concurrency_ratio={concurrency:.2f} "
          f"ttft_p50_ms={ttft:.0f} served_8_over_direct_8={batched:.3f} "
          f"direct_1_tps={med(r[0] for r in rows):.1f} served_1_tps={med(r[1] for r in rows):.1f} "
          f"direct_8_tps={med(r[2] for r in rows):.1f} served_8_tps={med(r[3] for r in rows):.1f}")


if __name__ == "__main__":
    main()
