"""What batching can give on this machine before any of Hearth's code runs: a bare loop of
``llama_decode`` calls, one token per sequence per call, at 1 and at N sequences, in the
configuration ``hearth serve`` runs (``--config tuned``: the quantization, buffer types and
threads ``npc.tuning.choose`` measured fastest here) or the shipped file swarm jobs run
(``--config shipped``). No sampling and no Python per token beyond filling the batch: the
token fed is a fixed one, so only llama.cpp's own time is measured.

Each round decodes ``--steps`` steps at each width, widths alternating (first width alternating
between rounds), after a 40-token prompt per sequence that is not timed; the ratio is taken
within a round and the median over ``--rounds`` is reported (this machine's speed swings
between runs minutes apart).

``ceiling_ratio`` = tokens/s at the widest width over tokens/s at 1 sequence: the most any
scheduler (``hearth serve``'s concurrency_ratio, the jobs engine's batch_ratio) can reach here.

Last line: ``ceiling_ratio=<N> tok_s_1=<N> tok_s_<W>=<N> quantization=<Q> threads=<N>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPT = ("Emberbrook is a small village by the river. The smith works iron, the innkeeper "
          "pours ale, the merchant haggles and the guard keeps watch. ") * 4
PROMPT_TOKENS = 40


def configuration(which: str):
    """(model path, use_extra_bufts, threads, quantization) of what ``hearth serve``
    (``tuned``) or a swarm job (``shipped``) runs: ``game.jobs_backend.engine_configuration``."""
    from game.jobs_backend import engine_configuration
    from npc.store import ModelStore
    store = ModelStore()
    base = store.ensure_default()
    record, options = engine_configuration(store, base, "tuned" if which == "tuned" else "default",
                                           say=lambda s: print(s, flush=True))
    return (store.path(record.blake3), options.use_extra_bufts, options.n_threads,
            record.quantization)


def tokens_per_second(ctx, prompt: list[int], width: int, steps: int) -> float:
    ctx.clear()
    for seq in range(width):
        ctx.decode(prompt, seq, 0, logits_last=False)
    pos, tok = len(prompt), prompt[-1]
    start = time.perf_counter()
    for step in range(steps):
        ctx.decode_entries([(tok, seq, pos + step, True) for seq in range(width)])
    return width * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["tuned", "shipped"], default="tuned",
                    help="tuned: what hearth serve runs; shipped: the file swarm jobs run")
    ap.add_argument("--width", type=int, default=8, help="sequences decoded at once")
    ap.add_argument("--steps", type=int, default=48, help="decode steps timed per width")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.width < 2 or args.steps < 1 or args.rounds < 1:
        ap.error("--width must be at least 2, --steps and --rounds at least 1")

    from npc.llama import Context, LoadOptions, Model
    path, extra, threads, quant = configuration(args.config)
    model = Model(path, use_extra_bufts=extra)
    ctx = Context(model, LoadOptions(use_extra_bufts=extra, n_ctx=args.width * 256,
                                     n_seq_max=args.width, n_threads=threads,
                                     n_threads_batch=threads))
    prompt = model.tokenize(PROMPT, parse_special=False)[:PROMPT_TOKENS]
    rows = []
    try:
        tokens_per_second(ctx, prompt, args.width, 4)  # warm: graphs, caches
        for rnd in range(args.rounds):
            widths = [1, args.width] if rnd % 2 == 0 else [args.width, 1]
            got = {w: tokens_per_second(ctx, prompt, w, args.steps) for w in widths}
            rows.append((got[1], got[args.width]))
            print(f"round {rnd}: 1 sequence {got[1]:.1f} tok/s, {args.width} sequences "
                  f"{got[args.width]:.1f} tok/s ({got[args.width] / got[1]:.2f}x)", flush=True)
    finally:
        ctx.close()
        model.close()
    med = statistics.median
    print(f"ceiling_ratio={med(w / one for one, w in rows):.2f} "
          f"tok_s_1={med(r[0] for r in rows):.1f} tok_s_{args.width}={med(r[1] for r in rows):.1f} "
          f"quantization={quant} extra_bufts={int(extra)} threads={threads}")


if __name__ == "__main__":
    main()
