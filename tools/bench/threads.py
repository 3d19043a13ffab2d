"""How llama.cpp's OpenMP workers should wait, measured side by side in one run.

llama.cpp's CPU backend synchronises its worker threads with an OpenMP barrier after every graph
node (hundreds per token, more with a skin's LoRA). How a waiting worker behaves is set by the
OpenMP runtime's environment when the library loads:

- spin 0 (``OMP_WAIT_POLICY=PASSIVE``): a waiting worker sleeps at once, so every barrier costs a
  futex sleep and wake-up;
- spin 10k / 300k (``GOMP_SPINCOUNT``): it spins that many iterations first, then sleeps
  (300k is libgomp's default when no policy is set).

And how many threads decode: all cores, or all but one (the game thread's). Prefill, a short
burst, always uses every core.

Each configuration runs in its own process (the environment is read once, at load), at nice +10
like the game's voice thread: it prefills a prompt, then decodes greedily while this process runs
a 60 Hz frame loop of fixed Python work standing in for the game thread. Printed per
configuration: prefill and decode tokens/s (base model and wearing a demo skin) and the frame
loop's p99 while the skin decodes.

Last line, the game's configuration (spin 10k, decoding on all cores but one) against the one it
replaces (spin 0, all cores), and its frame p99 against the frame loop running alone:
``decode_ratio=<skin decode, game/old> prefill_ratio=<game/old> frame_p99_ratio=<game/idle>``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SKIN = ROOT / "assets" / "skins" / "bundles" / "pirate" / "adapter.gguf"
POLICIES = {  # name -> environment for the decoding process
    "spin 0": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"},
    "spin 10k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
    "spin 300k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"},
}
FRAME_S = 1 / 60
FRAME_WORK = 40_000  # loop iterations of "game" work per frame (a few ms in CPython)


def worker(model: str, threads: int, batch_threads: int, adapter: str | None,
           seconds: float) -> None:
    os.nice(10)
    import numpy as np

    from npc.llama import Adapter, Context, LoadOptions, Model

    m = Model(model, use_extra_bufts=True)
    ctx = Context(m, LoadOptions(use_extra_bufts=True, n_ctx=2048, n_seq_max=1,
                                 n_threads=threads, n_threads_batch=batch_threads))
    if adapter:
        ctx.set_adapter(Adapter(m, adapter))
    prompt = m.tokenize("Emberbrook is a small village by the river. The smith works iron. " * 12)
    prompt = prompt[:160]
    prefill = 0.0
    for _ in range(3):
        ctx.clear()
        t = time.perf_counter()
        ctx.decode(prompt, 0, 0)
        prefill = max(prefill, len(prompt) / (time.perf_counter() - t))
    pos, tok = len(prompt), int(np.argmax(ctx.logits()))
    print("ready", flush=True)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds and pos < 2000:
        ctx.decode([tok], 0, pos)
        pos, n, tok = pos + 1, n + 1, int(np.argmax(ctx.logits()))
    print(json.dumps({"decode_tps": n / (time.perf_counter() - t0), "prefill_tps": prefill}),
          flush=True)


def frame_loop(until) -> list[float]:
    """Fixed work every 1/60 s; returns each frame's wall time (ms) while ``until()`` is false."""
    times, nxt = [], time.perf_counter()
    while not until():
        t = time.perf_counter()
        acc = 0
        for i in range(FRAME_WORK):
            acc += i * i
        times.append((time.perf_counter() - t) * 1e3)
        nxt += FRAME_S
        time.sleep(max(0.0, nxt - time.perf_counter()))
    return times


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98]


def run(model: str, policy: dict, threads: int, batch_threads: int, adapter: Path | None,
        seconds: float) -> tuple[dict, float]:
    """The worker's speeds and the frame loop's p99 (ms) while it decoded."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy)
    cmd = [sys.executable, __file__, "--worker", model, "--threads", str(threads),
           "--batch-threads", str(batch_threads), "--seconds", str(seconds)]
    cmd += ["--adapter", str(adapter)] if adapter else []
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if p.stdout.readline().strip() != "ready":
        raise SystemExit(f"decode worker failed ({' '.join(cmd)})")
    frames = frame_loop(lambda: p.poll() is not None)
    out = p.stdout.read().strip().splitlines()
    if p.wait() != 0 or not out:
        raise SystemExit(f"decode worker failed ({' '.join(cmd)})")
    return json.loads(out[-1]), p99(frames)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OpenMP wait policy and thread count for llama.cpp")
    ap.add_argument("--seconds", type=float, default=4.0, help="decode time per configuration")
    ap.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.batch_threads, args.adapter, args.seconds)
        return 0

    from npc.store import ModelStore
    store = ModelStore()
    model = str(store.path(store.ensure_default().blake3))
    cores = min(os.cpu_count() or 2, 8)
    game_t, old_t = max(1, cores - 1), cores
    t_end = time.perf_counter() + args.seconds
    idle = p99(frame_loop(lambda: time.perf_counter() > t_end))
    print(f"model {Path(model).name}, {cores} cores, prefill on {cores} threads; "
          f"frame loop alone p99 {idle:.2f} ms")
    print(f"{'policy':10s} {'decode threads':>14s} {'prefill':>8s} {'base':>7s} {'skin':>7s} "
          f"{'frame p99':>10s}   (tok/s; frame p99 while the skin decodes)")
    res = {}
    for name, env in POLICIES.items():
        for t in sorted({game_t, old_t}):
            base, _ = run(model, env, t, cores, None, args.seconds)
            skin, f99 = run(model, env, t, cores, SKIN, args.seconds)
            res[name, t] = (base["prefill_tps"], base["decode_tps"], skin["decode_tps"], f99)
            print(f"{name:10s} {t:14d} {base['prefill_tps']:8.1f} {base['decode_tps']:7.1f} "
                  f"{skin['decode_tps']:7.1f} {f99:7.2f} ms", flush=True)
    game, old = res["spin 10k", game_t], res["spin 0", old_t]
    print(f"decode_ratio={game[2] / old[2]:.2f} prefill_ratio={game[0] / old[0]:.2f} "
          f"frame_p99_ratio={game[3] / idle:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
