"""Is sampled re-scoring of a worker's claimed output exact? Measured on this machine's llama.cpp.

A verifier re-runs prompt + claimed output teacher-forced in ONE prefill and checks each claimed
token against the logits at its position: either that the logits are bit-identical to the ones
the worker reported (exact-logit check), or that each claimed token is the argmax of the
verifier's own logits (greedy-argmax check). Both are only sound if a prefill reproduces what
the worker computed while generating, one step at a time and perhaps several sequences per batch.

16 prompts of 40 tokens (varied text) each generate 64 tokens greedily. A configuration is a
model file (Q4_0 / Q4_1 / Q8_0 requantized from the default SmolLM2-135M, as ``npc.tuning`` makes
them), extra buffer types (the repacked CPU kernels) on or off, flash attention, threads, and
optionally a demo skin's LoRA adapter ("xbuft": extra buffer types on; which tensors they repack
depends on the CPU). Per configuration:

- decode: what a worker computes. Per batch: the prompts of ``width`` sequences in one
  llama_batch (logits for each prompt's last token), then one token per sequence per batch, each
  sequence its own seq_id in a non-unified KV cache with ``n_seq_max=width``. Width 1 decodes
  greedily and is the reference; wider batches are fed the reference tokens (so positions line
  up), and "argmax agree" then says whether free-running greedy would have produced them.
- prefill: what the verifier computes. Per sequence, prompt + output[:-1] in one llama_batch,
  logits at the 64 positions that predict the output (one row puts 4 sequences in one batch).

Compared per row: sequences whose 64 logit vectors are bit-identical, the largest absolute logit
difference, and claimed tokens that are the argmax of the checking logits (of 1024).

Detection power, verifier = the game's configuration (Q4_0, repacked kernels):
- swap: the claim was produced by the Q8_0 file (its tokens and decode logits);
- altered: the honest Q4_0 claim with one token (random position) replaced by the runner-up
  token, the worker reporting its honest logits.
A claim is caught by the exact check if any verifier logit differs in any bit from the claimed
ones, by the argmax check if any claimed token is not the verifier's argmax.

Model files come from the store under HEARTH_HOME (the default model is imported and requantized
on first use). Last line: ``key=value ...`` (bit-exact counts are sequences of 16, argmax counts
positions of 1024).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# llama_cpp through npc.llama, whose OpenMP settings must be in place before the library loads.
from npc.llama import Adapter, C, Context, LoadOptions, Model  # noqa: E402

SKIN = ROOT / "assets" / "skins" / "bundles" / "pirate" / "adapter.gguf"
N_PROMPT = 40
N_NEW = 64
#: KV cells per sequence; the verifier's context is this size unless a row says otherwise.
CTX_PER_SEQ = 256
N_BATCH = 512

TEXTS = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, counting each of the "
    "two hundred steps aloud, because his father had done the same and the sea, he believed, "
    "was listening, and that one night it would answer him.",
    "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n",
    "Preheat the oven to 180 degrees. Whisk two eggs with a cup of sugar until pale, fold in the "
    "flour and a pinch of salt, then pour the batter into a buttered tin and bake for forty",
    "Q: What causes the seasons on Earth?\nA: The seasons are caused by the tilt of the Earth's "
    "axis relative to its orbit around the Sun, which changes how directly sunlight "
    "reaches each hemisphere over the course of a year",
    "Dear Ms. Alvarez,\n\nThank you for your letter of the fourteenth regarding the delayed "
    "shipment. We have investigated the matter with our warehouse in Rotterdam and found that "
    "the pallets were",
    "In 1848 a wave of revolutions swept across Europe, beginning in Sicily and spreading to "
    "France, the German states, the Austrian Empire and beyond. Historians still debate why "
    "the uprisings spread so quickly",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: Rough winds "
    "do shake the darling buds of May, And summer's lease hath all too short a date;",
    '{"id": 4821, "name": "Ember Valley Farm", "location": {"lat": 51.47, "lon": -0.21}, '
    '"crops": ["barley", "turnips", "flax"], "workers": 12, "owner": {"name": "',
    "To solve 3x + 7 = 22, subtract seven from both sides to get 3x = 15, then divide both sides "
    "by three, giving x = 5. Now consider the quadratic x^2 - 5x + 6 = 0, which factors",
    "Player: Have you seen the blacksmith today?\nInnkeeper: Not since the storm rolled in. He "
    "said something about the old mine road and a debt he meant to settle before the "
    "first snow",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts, chlorophyll "
    "absorbs mostly red and blue light, and water molecules are split to release oxygen while "
    "the energy is stored in ATP and NADPH, which the plant then uses",
    "Breaking news: the city council voted eight to three on Tuesday night to approve the new "
    "riverside tram line, ending two years of debate over its cost, its route and the "
    "noise it would bring to the old town",
    "SELECT customers.name, COUNT(orders.id) AS total\nFROM customers\nLEFT JOIN orders ON "
    "orders.customer_id = customers.id\nWHERE orders.created_at > '2023-01-01'\nGROUP BY",
    "Ten tips for better sleep: 1. Keep a regular schedule, even on weekends. 2. Avoid caffeine "
    "after noon. 3. Keep the bedroom cool and dark. 4. Put screens away an hour before",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How "
    "vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. The five",
    "Once upon a time, in a kingdom at the edge of a great salt desert, there lived a princess "
    "who could speak to lizards. Every morning she walked out past the palace walls to "
    "the dunes where the old ones lived",
]


@dataclass(frozen=True)
class Config:
    quant: str
    extra_bufts: bool = True
    flash_attn: bool = False
    threads: int = 2
    skin: bool = False
    ctx_per_seq: int = CTX_PER_SEQ

    @property
    def name(self) -> str:
        s = f"{self.quant} {'xbuft' if self.extra_bufts else 'no-xbuft'}"
        s += " fa" if self.flash_attn else ""
        s += f" t{self.threads}"
        s += " skin" if self.skin else ""
        s += f" ctx{self.ctx_per_seq}" if self.ctx_per_seq != CTX_PER_SEQ else ""
        return s


@dataclass
class Run:
    """Tokens [seq, step] and the logits that predicted them [seq, step, vocab]."""
    tokens: np.ndarray
    logits: np.ndarray


class Bench:
    def __init__(self, files: dict[str, Path], prompts_text: list[str]):
        self.files = files
        self._models: dict[tuple[str, bool], Model] = {}
        self._adapters: dict[tuple[str, bool], Adapter] = {}
        m = self.model(Config("Q4_0"))
        bos = [C.llama_vocab_bos(m.vocab)] if C.llama_vocab_get_add_bos(m.vocab) else []
        self.prompts = []
        for text in prompts_text:
            toks = (bos + m.tokenize(text))[:N_PROMPT]
            if len(toks) < N_PROMPT:
                raise SystemExit(f"prompt too short ({len(toks)} tokens): {text[:40]!r}")
            self.prompts.append(toks)

    def model(self, cfg: Config) -> Model:
        key = (cfg.quant, cfg.extra_bufts)
        if key not in self._models:
            self._models[key] = Model(self.files[cfg.quant], use_extra_bufts=cfg.extra_bufts)
        return self._models[key]

    def context(self, cfg: Config, width: int) -> Context:
        ctx = Context(self.model(cfg), LoadOptions(
            use_extra_bufts=cfg.extra_bufts, n_ctx=cfg.ctx_per_seq * width, n_batch=N_BATCH,
            n_seq_max=width, n_threads=cfg.threads, n_threads_batch=cfg.threads,
            flash_attn=cfg.flash_attn, kv_unified=False))
        if cfg.skin:
            key = (cfg.quant, cfg.extra_bufts)
            if key not in self._adapters:
                self._adapters[key] = Adapter(self.model(cfg), SKIN)
            ctx.set_adapter(self._adapters[key])
        return ctx

    def decode(self, cfg: Config, width: int = 1, forced: np.ndarray | None = None,
               prompts: list[list[int]] | None = None) -> Run:
        """Generate N_NEW tokens per prompt, ``width`` sequences per batch; greedy unless
        ``forced`` gives the tokens to feed back."""
        prompts = prompts or self.prompts
        n, vocab = len(prompts), self.model(cfg).n_vocab
        tokens = np.zeros((n, N_NEW), dtype=np.int64)
        logits = np.zeros((n, N_NEW, vocab), dtype=np.float32)
        ctx = self.context(cfg, width)
        batch = C.llama_batch_init(N_BATCH, 0, width)
        try:
            for g0 in range(0, n, width):
                group = list(range(g0, min(n, g0 + width)))
                ctx.clear()
                items = [(t, k, p, p == len(prompts[s]) - 1)
                         for k, s in enumerate(group) for p, t in enumerate(prompts[s])]
                outs = _submit(ctx, batch, items)
                for step in range(N_NEW):
                    for k, s in enumerate(group):
                        logits[s, step] = ctx.logits(outs[k])
                        tokens[s, step] = (forced[s, step] if forced is not None
                                           else int(np.argmax(logits[s, step])))
                    if step + 1 < N_NEW:
                        items = [(int(tokens[s, step]), k, len(prompts[s]) + step, True)
                                 for k, s in enumerate(group)]
                        outs = _submit(ctx, batch, items)
        finally:
            C.llama_batch_free(batch)
            ctx.close()
        return Run(tokens, logits)

    def prefill(self, cfg: Config, tokens: np.ndarray, width: int = 1) -> Run:
        """The verifier: prompt + claimed output in one batch, ``width`` sequences per batch."""
        n, vocab = len(self.prompts), self.model(cfg).n_vocab
        logits = np.zeros((n, N_NEW, vocab), dtype=np.float32)
        ctx = self.context(cfg, width)
        batch = C.llama_batch_init(N_BATCH, 0, width)
        try:
            for g0 in range(0, n, width):
                group = list(range(g0, min(n, g0 + width)))
                ctx.clear()
                items = []
                for k, s in enumerate(group):
                    seq = self.prompts[s] + [int(t) for t in tokens[s, :-1]]
                    items += [(t, k, p, p >= len(self.prompts[s]) - 1) for p, t in enumerate(seq)]
                outs = _submit(ctx, batch, items)
                for k, s in enumerate(group):
                    for step in range(N_NEW):
                        logits[s, step] = ctx.logits(outs[k * N_NEW + step])
        finally:
            C.llama_batch_free(batch)
            ctx.close()
        return Run(tokens.copy(), logits)

    def close(self) -> None:
        for a in self._adapters.values():
            a.close()
        for m in self._models.values():
            m.close()


def _submit(ctx: Context, batch, items: list[tuple[int, int, int, bool]]) -> list[int]:
    """One llama_batch of (token, seq_id, pos, wants logits); returns the batch indices that
    have logits, in order. (Which positions ask for logits changes which rows the last layer
    computes, so the batch is filled here, asking only where a logit is compared.)"""
    if len(items) > N_BATCH:
        raise ValueError("batch too large")
    outs = []
    for i, (t, seq, pos, want) in enumerate(items):
        batch.token[i] = t
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = want
        if want:
            outs.append(i)
    batch.n_tokens = len(items)
    rc = C.llama_decode(ctx.ptr, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode failed ({rc})")
    return outs


@dataclass
class Cmp:
    bitexact: int      # sequences whose every logit matches bit for bit
    max_abs: float
    argmax_agree: int  # claimed tokens that are the argmax of the checking logits
    seqs_argmax_ok: int
    n_seq: int
    n_pos: int


def compare(claim: Run, check: Run) -> Cmp:
    exact = ok = agree = 0
    max_abs = 0.0
    for s in range(len(claim.tokens)):
        a, b = claim.logits[s], check.logits[s]
        exact += bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))
        max_abs = max(max_abs, float(np.max(np.abs(a - b))))
        hits = int(np.sum(np.argmax(b, axis=-1) == claim.tokens[s]))
        agree += hits
        ok += hits == claim.tokens.shape[1]
    return Cmp(exact, max_abs, agree, ok, claim.tokens.shape[0], claim.tokens.size)


def min_margin(run: Run) -> float:
    """Smallest gap between the top two logits over all positions (how close greedy came to a tie)."""
    top2 = np.partition(run.logits, -2, axis=-1)[..., -2:]
    return float(np.min(top2[..., 1] - top2[..., 0]))


class Table:
    def __init__(self):
        print(f"{'claim (worker)':34s} {'checked by':32s} {'bit-exact':>9s} {'max |dlogit|':>12s} "
              f"{'argmax agree':>12s} {'secs':>5s}", flush=True)
        self.t = time.perf_counter()

    def row(self, claim: str, check: str, c: Cmp) -> Cmp:
        dt = time.perf_counter() - self.t
        print(f"{claim:34s} {check:32s} {c.bitexact:>4d}/{c.n_seq:<4d} {c.max_abs:12.3g} "
              f"{c.argmax_agree:>6d}/{c.n_pos:<5d} {dt:5.0f}", flush=True)
        self.t = time.perf_counter()
        return c


def model_files() -> dict[str, Path]:
    from npc.store import ModelStore
    from npc.tuning import requantized
    store = ModelStore()
    base = store.ensure_default()
    files = {base.quantization: store.path(base.blake3)}
    for q in ("Q4_0", "Q8_0"):
        files[q] = store.path(requantized(store, base, q).blake3)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Exactness of one-pass re-scoring in llama.cpp")
    ap.add_argument("--seed", type=int, default=7, help="picks the altered token positions")
    args = ap.parse_args(argv)

    files = model_files()
    for q, p in sorted(files.items()):
        print(f"{q}: {p.name[:16]}… ({p.stat().st_size / 2**20:.0f} MiB)")
    print(f"llama-cpp-python {C.__version__}; {len(TEXTS)} prompts x {N_PROMPT} tokens, "
          f"{N_NEW} new tokens, {CTX_PER_SEQ} KV cells per sequence", flush=True)
    b = Bench(files, TEXTS)
    tab = Table()
    key: dict[str, str] = {}

    def frac(c: Cmp, what: str = "bitexact") -> str:
        return (f"{c.bitexact}/{c.n_seq}" if what == "bitexact"
                else f"{c.argmax_agree}/{c.n_pos}")

    # The game's configuration on this machine: Q4_0 with the repacked kernels, 2 threads.
    game = Config("Q4_0")
    ref = b.decode(game)
    margin = min_margin(ref)
    c = tab.row(f"{game.name} decode w1", f"{game.name} decode w1 (again)",
                compare(ref, b.decode(game, forced=ref.tokens)))
    key["decode_repeat_bitexact"] = frac(c)
    ver = b.prefill(game, ref.tokens)
    c = tab.row(f"{game.name} decode w1", f"{game.name} prefill", compare(ref, ver))
    key["q4_0_repack_prefill_vs_decode_bitexact"] = frac(c)
    key["q4_0_repack_max_abs"] = f"{c.max_abs:.3g}"
    argmax_total = [c]
    honest = c
    for w in (2, 4, 8):
        bw = b.decode(game, width=w, forced=ref.tokens)
        c = tab.row(f"{game.name} decode w{w}", f"{game.name} decode w1", compare(bw, ref))
        key[f"batch{w}_vs_decode_bitexact"] = frac(c)
        c = tab.row(f"{game.name} decode w{w}", f"{game.name} prefill", compare(bw, ver))
        key[f"batch{w}_bitexact"] = frac(c)
        argmax_total.append(c)
        del bw

    # Threads, context size, several claims in one verifier batch: must the verifier match them?
    c = tab.row(f"{game.name} prefill", f"{game.name} prefill w4",
                compare(ver, b.prefill(game, ref.tokens, width=4)))
    key["prefill4_bitexact"] = frac(c)
    t1 = replace(game, threads=1)
    c = tab.row(f"{game.name} decode w1", f"{t1.name} decode w1",
                compare(ref, b.decode(t1, forced=ref.tokens)))
    key["threads1_decode_bitexact"] = frac(c)
    c = tab.row(f"{game.name} prefill", f"{t1.name} prefill", compare(ver, b.prefill(t1, ref.tokens)))
    key["threads1_prefill_bitexact"] = frac(c)
    big = replace(game, ctx_per_seq=2048)
    c = tab.row(f"{game.name} prefill", f"{big.name} prefill", compare(ver, b.prefill(big, ref.tokens)))
    key["ctx2048_prefill_bitexact"] = frac(c)

    # Detection power against the game's verifier. Altered: one token becomes the runner-up at a
    # random position; the worker reports the logits of its honest run.
    rng = np.random.default_rng(args.seed)
    alt = ref.tokens.copy()
    for s in range(len(alt)):
        j = int(rng.integers(0, N_NEW))
        alt[s, j] = int(np.argsort(ref.logits[s, j])[-2])
    altered = Run(alt, ref.logits)
    c = tab.row("altered (1 token, honest logits)", f"{game.name} prefill",
                compare(altered, b.prefill(game, alt)))
    key["altered_caught_exact"] = f"{c.n_seq - c.bitexact}/{c.n_seq}"
    key["altered_caught_argmax"] = f"{c.n_seq - c.seqs_argmax_ok}/{c.n_seq}"
    del ver

    # Other kernels, files, flash attention, a skin: prefill against decode within each.
    other = {"q4_0_plain": Config("Q4_0", extra_bufts=False), "q4_1": Config("Q4_1"),
             "q8_0": Config("Q8_0"), "fa_on": replace(game, flash_attn=True),
             "skin": replace(game, skin=True)}
    swap = None
    for name, cfg in other.items():
        d = b.decode(cfg)
        c = tab.row(f"{cfg.name} decode w1", f"{cfg.name} prefill", compare(d, b.prefill(cfg, d.tokens)))
        key[f"{name}_bitexact"] = frac(c)
        argmax_total.append(c)
        margin = min(margin, min_margin(d))
        if name in ("q4_0_plain", "fa_on"):  # fed the game's tokens, so positions line up
            c = tab.row(f"{game.name} decode w1", f"{cfg.name} decode w1",
                        compare(ref, b.decode(cfg, forced=ref.tokens)))
            key[f"{name}_vs_game_decode_bitexact"] = frac(c)
        if name == "skin":
            v = b.prefill(cfg, d.tokens)
            bw = b.decode(cfg, width=8, forced=d.tokens)
            c = tab.row(f"{cfg.name} decode w8", f"{cfg.name} prefill", compare(bw, v))
            key["skin_batch8_bitexact"] = frac(c)
            argmax_total.append(c)
            del v, bw
        if name == "q8_0":
            swap = d
        else:
            del d

    c = tab.row(f"{other['q8_0'].name} decode w1 (swap)", f"{game.name} prefill",
                compare(swap, b.prefill(game, swap.tokens)))
    key["swap_caught_exact"] = f"{c.n_seq - c.bitexact}/{c.n_seq}"
    key["swap_caught_argmax"] = f"{c.n_seq - c.seqs_argmax_ok}/{c.n_seq}"
    key["swap_tokens_differ"] = f"{int(np.sum(np.any(swap.tokens != ref.tokens, axis=1)))}/{len(ref.tokens)}"
    key["honest_flagged_exact"] = f"{honest.n_seq - honest.bitexact}/{honest.n_seq}"
    key["honest_flagged_argmax"] = f"{honest.n_seq - honest.seqs_argmax_ok}/{honest.n_seq}"
    key["argmax_agree"] = (f"{sum(x.argmax_agree for x in argmax_total)}/"
                           f"{sum(x.n_pos for x in argmax_total)}")
    key["min_top2_margin"] = f"{margin:.3g}"
    b.close()
    print(" ".join(f"{k}={v}" for k, v in key.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
