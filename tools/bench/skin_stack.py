"""What wearing a skin over the village voice costs, measured side by side in one run.

On the default model (Q4_1, as the game runs it), one context, the game's chat format: a prompt of
a villager's persona and a player's line is read, then tokens are decoded one at a time (greedy),
as a reply is. Four arms, interleaved round by round so a drift of machine speed hits all alike:

- base: no adapter;
- alone: the pirate skin alone (how skins were worn before the village voice);
- stacked: the village voice and the pirate skin as two adapters (llama.cpp sums both);
- composed: the one adapter the pool composes of both (npc/skins/compose.py), as the game wears it.

Per arm, the median of per-round means of milliseconds per decoded token, and of the prompt read.

Last line: decode_composed_over_alone=… decode_stacked_over_alone=… decode_composed_over_stacked=…
prefill_composed_over_alone=… (ratios; lower is cheaper).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPT = ("<|im_start|>system\nYou are Tobin, the merchant of Emberbrook, a small village. "
          "You sell rope, apples and daggers at the market.<|im_end|>\n<|im_start|>user\n"
          "Traveller says: \"What does a coil of rope cost?\"<|im_end|>\n<|im_start|>assistant\n"
          "{\"action\": \"")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12, help="rounds over the four arms")
    ap.add_argument("--tokens", type=int, default=40, help="tokens decoded per arm per round")
    args = ap.parse_args()

    from assets import ASSETS_DIR
    from npc.llama import Adapter, Context, LoadOptions, Model
    from npc.skins.compose import compose
    from npc.store import ModelStore

    store = ModelStore()
    base = store.path(store.ensure_default().blake3)
    village = ASSETS_DIR / "village" / "bundle" / "adapter.gguf"
    pirate = ASSETS_DIR / "skins" / "bundles" / "pirate" / "adapter.gguf"
    model = Model(base)
    ctx = Context(model, LoadOptions(n_ctx=1024, n_seq_max=1, n_batch=512, n_threads=2))
    with tempfile.TemporaryDirectory() as tmp:
        composed_path = compose([village, pirate], Path(tmp) / "composed.gguf")
        v, p, c = Adapter(model, village), Adapter(model, pirate), Adapter(model, composed_path)
        arms = {"base": None, "alone": p, "stacked": (v, p), "composed": c}
        prompt = model.tokenize(PROMPT, add_special=True, parse_special=True)
        decode_ms = {a: [] for a in arms}
        prefill_ms = {a: [] for a in arms}
        try:
            for r in range(args.rounds + 1):  # round 0 warms every arm up and is not counted
                for arm, adapter in arms.items():
                    ctx.set_adapter(adapter)
                    ctx.clear()
                    t0 = time.perf_counter()
                    ctx.decode(prompt, 0, 0)
                    t1 = time.perf_counter()
                    pos = len(prompt)
                    for i in range(args.tokens):
                        ctx.decode([int(ctx.logits(-1).argmax())], 0, pos + i)
                    t2 = time.perf_counter()
                    if r:
                        prefill_ms[arm].append((t1 - t0) * 1000)
                        decode_ms[arm].append((t2 - t1) * 1000 / args.tokens)
        finally:
            ctx.set_adapter(None)
            for a in (v, p, c):
                a.close()
            ctx.close()
            model.close()
    med = {a: statistics.median(x) for a, x in decode_ms.items()}
    pre = {a: statistics.median(x) for a, x in prefill_ms.items()}
    print(f"{len(prompt)}-token prompt, {args.tokens} tokens decoded, {args.rounds} rounds")
    for arm in arms:
        print(f"{arm:<9} decode {med[arm]:6.2f} ms/token   prompt {pre[arm]:7.1f} ms")
    print(f"decode_composed_over_alone={med['composed'] / med['alone']:.3f} "
          f"decode_stacked_over_alone={med['stacked'] / med['alone']:.3f} "
          f"decode_composed_over_stacked={med['composed'] / med['stacked']:.3f} "
          f"prefill_composed_over_alone={pre['composed'] / pre['alone']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
