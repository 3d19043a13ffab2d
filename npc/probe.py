"""Measure one llama.cpp configuration in a throw-away process.

``python -m npc.probe MODEL --extra-bufts 0|1 --threads 1,2`` loads the model and, at each thread
count, prefills a multi-token batch (where an unstable configuration crashes) and decodes
greedily; it prints one JSON line with tokens per second per thread count. Run it in a
subprocess: a segfault then costs a probe, not the game.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PREFILL_TOKENS = 160
DECODE_TOKENS = 32
TEXT = ("Emberbrook is a small village by the river. The smith works iron, the innkeeper pours ale, "
        "the merchant haggles and the guard keeps watch. ")


def measure(path: str, use_extra_bufts: bool, threads: list[int], repeats: int = 2) -> dict:
    """{thread count: {"prefill_tps", "decode_tps"}} for one model file and buffer-type setting."""
    from npc.llama import Context, LoadOptions, Model

    model = Model(path, use_extra_bufts=use_extra_bufts)
    ctx = Context(model, LoadOptions(use_extra_bufts=use_extra_bufts, n_ctx=1024, n_seq_max=1,
                                     n_threads=threads[0]))
    try:
        out = {}
        for t in threads:
            ctx.set_threads(t, t)
            out[str(t)] = _measure(model, ctx, repeats)
        return out
    finally:
        ctx.close()
        model.close()


def _measure(model, ctx, repeats: int) -> dict:
    import numpy as np

    toks = (model.tokenize(TEXT * 20))[:PREFILL_TOKENS]
    best_p = best_d = 0.0
    for _ in range(repeats):
        ctx.clear()
        t = time.perf_counter()
        ctx.decode(toks, 0, 0)
        best_p = max(best_p, len(toks) / (time.perf_counter() - t))
        pos = len(toks)
        tok = int(np.argmax(ctx.logits()))
        t = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            ctx.decode([tok], 0, pos)
            pos += 1
            tok = int(np.argmax(ctx.logits()))
        best_d = max(best_d, DECODE_TOKENS / (time.perf_counter() - t))
    return {"prefill_tps": round(best_p, 1), "decode_tps": round(best_d, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--extra-bufts", type=int, choices=[0, 1], default=0)
    ap.add_argument("--threads", default="2", help="thread counts to measure, comma-separated")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--threads takes positive thread counts separated by commas, not {args.threads!r}")
    print(json.dumps(measure(args.model, bool(args.extra_bufts), threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
