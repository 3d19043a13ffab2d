"""The worker's batched engine, measured side by side in one run: throughput of continuous
batching against single-stream decoding, exactness of batched generation against one-pass
re-scoring, the cost of re-scoring, pre-emption latency, and how often each kind of cheating
worker is caught.

Model files: the default model (Q4_1) and copies requantized from it (Q4_0 and Q8_0 through
``npc.tuning.requantized`` into the store under HEARTH_HOME, F16 into a temp dir). Items are
chat requests rendered with the model's template, greedy unless a row says otherwise.

1. Throughput per quantisation: the same items generated at width 1 (single stream) and at
   wider widths, alternating, each the best of ``--repeats`` runs. Tokens/s counts generated
   tokens over wall time (prompt reading included, as a worker spends it).
2. Exactness: at each width the logits every generated token was picked from (mixed prompt
   lengths: sequences reading prompts and generating share batches) compared bit for bit with
   the logits of a one-pass teacher-forced prefill of prompt + output.
3. verify_cost_ratio: re-scoring every item of a shard (one prefill each) over generating the
   shard at the serving width.
4. preempt_p99_ms: a gate paused at random moments during width-8 generation of long prompts
   and outputs; the time from the pause to the gate being waited on (the last llama.cpp call
   returned, the aborted step rolled back).
5. Detection: shards of 4 items (greedy and sampled), an honest worker and four cheats —
   another quantisation (Q8_0 generating every item), random tokens (every item), one token
   changed (one item of the shard, one position), output cut short (one item, claimed "stop").
   A shard is caught if re-scoring rejects any of its items.

detect_rate: a worker serves ``s`` shards of a job and the verifier re-scores
``m = max(1, ceil(0.10 * s))`` of them, chosen at random. A worker cheating on every shard is
caught with probability ``1 - (1 - r)^m >= r`` for per-shard catch rate ``r``; by default a
worker sees one shard of a job (``s = m = 1``), so ``detect_rate = min over kinds of r``.
Cheating on one shard in ten (``s = 10``, ``m = 1``): ``r / 10`` (``detect_rate_1in10``).

Last line: ``batch_ratio=<best aggregate over best single-stream, any exact quantisation>
verify_cost_ratio=<N> preempt_p99_ms=<N> detect_rate=<N> ...``. Timings are wall time on
whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from npc.llama import C, quantize  # noqa: E402  (npc.llama first: its OpenMP settings)
from npc.serving import Completion, Engine, EngineOptions, Released  # noqa: E402
from npc.serving.rescore import forced_logits  # noqa: E402
from npc.serving.types import Item, Message  # noqa: E402

TOPICS = ["a lighthouse keeper", "a lost key", "the first snow", "a market day", "a clockmaker",
          "a river crossing", "an old map", "a stubborn goat", "a night train", "a letter home",
          "a storm at sea", "a bakery at dawn", "a chess match", "a broken bell", "a fox",
          "a garden wall"]


def make_items(n: int, max_tokens: int, sampled: bool = False, tag: str = "i",
               long_prompt: int = 0, short: bool = False) -> list[Item]:
    """Story requests; ``short``: every prompt the bare request (about 18 tokens), otherwise
    every other one padded to 30-42 tokens."""
    out = []
    for i in range(n):
        ask = f"Tell a short story about {TOPICS[i % len(TOPICS)]}."
        if i % 2 and not short:
            ask = "Keep it plain and vivid. " * (1 + i % 4) + ask
        if long_prompt:
            ask = ("Background: the village sits between a river and a pine forest. " * long_prompt) + ask
        t, p = ((0.8, 1.0) if i % 3 == 1 else (0.9, 0.9) if i % 3 == 2 else (0.0, 1.0)) if sampled \
            else (0.0, 1.0)
        out.append(Item(f"{tag}{i}", [Message("user", ask)], max_tokens, t, p, seed=7000 + i))
    return out


def files(tmp: Path) -> dict[str, tuple[Path, str]]:
    from npc.store import ModelStore
    from npc.tuning import requantized
    store = ModelStore()
    base = store.ensure_default()
    out = {base.quantization: (store.path(base.blake3), base.blake3)}
    for q in ("Q4_0", "Q8_0"):
        rec = requantized(store, base, q)
        out[q] = (store.path(rec.blake3), rec.blake3)
    f16 = tmp / "f16.gguf"
    quantize(store.path(base.blake3), f16, C.LLAMA_FTYPE_MOSTLY_F16)
    from common.files import blake3_file
    out["F16"] = (f16, blake3_file(f16))
    return out


def timed_generate(engine: Engine, items, **kw) -> tuple[list[Completion], float]:
    t0 = time.perf_counter()
    got = engine.generate(items, **kw)
    return got, time.perf_counter() - t0


def exact_rows(engine: Engine, items) -> tuple[int, int, list[Completion]]:
    """(rows bit-identical to a one-pass prefill, rows, completions) for one batched generation."""
    rows: dict[tuple[int, int], np.ndarray] = {}
    prompts = [engine.prompt_tokens(it) for it in items]
    with engine._lock:
        engine._wear(engine.ctx, None)
        got = engine._run(list(items), prompts, None, None,
                          lambda i, p, l: rows.__setitem__((i, p), l.copy()))
    same = 0
    for i, (p, c) in enumerate(zip(prompts, got)):
        upto = len(c.tokens) if c.finish_reason == "stop" else len(c.tokens) - 1
        with engine._lock:
            for j, row in forced_logits(engine._check_ctx, p, c.tokens, upto):
                same += np.array_equal(rows[(i, j)].view(np.uint32), row.view(np.uint32))
    return same, len(rows), got


class RandomGate:
    """Paused by ``pause()``; records the delay until the engine waits on it, resumes after a
    short hold."""

    def __init__(self):
        self._paused = threading.Event()
        self.t_pause = 0.0
        self.delays: list[float] = []

    def pause(self):
        self.t_pause = time.perf_counter()
        self._paused.set()

    def paused(self):
        return self._paused.is_set()

    def wait_resumed(self, timeout):
        self.delays.append(time.perf_counter() - self.t_pause)
        time.sleep(0.01)
        self._paused.clear()
        return True


def preempt_delays(engine: Engine, items, n_pauses: int, rng: random.Random) -> list[float]:
    """Pause ``n_pauses`` times at random moments (0.3-1.5 s apart) while ``items`` are
    generated again and again; the delay of each pause."""
    gate = RandomGate()
    stop = threading.Event()

    def pauser():
        for _ in range(n_pauses):
            if stop.wait(rng.uniform(0.3, 1.5)):
                return
            gate.pause()
            while gate.paused() and not stop.is_set():
                time.sleep(0.005)

    th = threading.Thread(target=pauser, daemon=True)
    th.start()
    try:
        while th.is_alive():
            engine.generate(items, gate=gate)
    finally:
        stop.set()
        th.join()
    return gate.delays


def cheat_claims(kind: str, honest: list[Completion], other: list[Completion] | None,
                 engine: Engine, rng: np.random.Generator) -> list[Completion]:
    """One shard's claims by a worker cheating in ``kind``."""
    m = engine.model

    def claim(c, tokens, finish=None):
        return Completion(c.custom_id, tokens, m.detokenize(tokens), c.prompt_tokens,
                          finish or c.finish_reason)

    if kind == "honest":
        return list(honest)
    if kind == "other_quant":
        return list(other)
    if kind == "random_tokens":
        return [claim(c, [int(t) for t in rng.integers(0, m.n_vocab, len(c.tokens))])
                for c in honest]
    out = list(honest)
    cands = [i for i, c in enumerate(honest) if c.tokens]
    k = int(rng.choice(cands))
    c = honest[k]
    if kind == "one_token":
        toks = list(c.tokens)
        j = int(rng.integers(0, len(toks)))
        toks[j] = int((toks[j] + rng.integers(1, m.n_vocab)) % m.n_vocab)
        out[k] = claim(c, toks)
    elif kind == "cut_short":
        out[k] = claim(c, c.tokens[:int(rng.integers(0, len(c.tokens)))], "stop")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Batched serving: throughput, exactness, "
                                 "verification cost, pre-emption and cheat detection")
    ap.add_argument("--items", type=int, default=16, help="items per throughput run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--widths", default="8,16", help="batch widths compared with width 1")
    ap.add_argument("--quants", default="Q4_0,Q8_0,F16,Q4_1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shards", type=int, default=20, help="shards per cheat kind")
    ap.add_argument("--pauses", type=int, default=40)
    ap.add_argument("--short", action="store_true", help="throughput items with short prompts "
                    "only (decoding dominates)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (every engine)")
    ap.add_argument("--serve", default="Q4_0", help="quantisation for the cost, pre-emption "
                    "and detection measurements (the default serving choice)")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    key: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fs = files(Path(tmp))
        quants = args.quants.split(",")
        items = make_items(args.items, args.max_tokens, short=args.short)
        print(f"llama-cpp-python {C.__version__}; {args.items} items x {args.max_tokens} new "
              f"tokens (greedy); widths 1,{args.widths}; best of {args.repeats}; "
              f"{args.threads} thread(s)", flush=True)
        print(f"{'quant':5s} {'width':>5s} {'tok/s':>7s} {'x w1':>5s} {'bit-exact rows':>15s}",
              flush=True)
        best_ratio, best_at = 0.0, ""
        for q in quants:
            path, digest = fs[q]
            engines = {w: Engine(path, EngineOptions(width=w, ctx_per_seq=256, n_threads=args.threads), model_id=digest)
                       for w in [1] + widths}
            tps = {w: 0.0 for w in engines}
            for _ in range(args.repeats):
                for w, e in engines.items():  # alternating, so load drift hits every width
                    got, dt = timed_generate(e, items)
                    tps[w] = max(tps[w], sum(len(c.tokens) for c in got) / dt)
            for w, e in engines.items():
                same, n, _ = exact_rows(e, items[:8])
                ratio = tps[w] / tps[1]
                print(f"{q:5s} {w:5d} {tps[w]:7.1f} {ratio:5.2f} {same:>7d}/{n:<7d}", flush=True)
                key[f"{q.lower()}_w{w}_exact"] = f"{same}/{n}"
                if same == n and ratio > best_ratio:
                    best_ratio, best_at = ratio, f"{q}_w{w}"
            for e in engines.values():
                e.close()
        key["batch_ratio"] = f"{best_ratio:.2f}"
        key["batch_best"] = best_at

        # The serving configuration: cost of re-scoring, pre-emption, detection.
        path, digest = fs[args.serve]
        e = Engine(path, EngineOptions(width=8, ctx_per_seq=512, n_threads=args.threads), model_id=digest)
        shard = make_items(8, args.max_tokens, sampled=True, tag="v", short=True)
        got, gen_s = timed_generate(e, shard)
        t0 = time.perf_counter()
        verdicts = [e.rescore(it, c) for it, c in zip(shard, got)]
        check_s = time.perf_counter() - t0
        assert all(v.ok for v in verdicts), [v.reason for v in verdicts]
        single = Engine(path, EngineOptions(width=1, ctx_per_seq=512, n_threads=args.threads),
                        model_id=digest)
        got1, gen1_s = timed_generate(single, shard)
        single.close()
        assert got1 == got
        print(f"\nverify ({args.serve}, shard of 8 sampled/greedy items, {args.max_tokens} new "
              f"tokens): generate {gen_s:.2f} s at width 8 ({gen1_s:.2f} s at width 1), "
              f"re-score {check_s:.2f} s", flush=True)
        key["verify_cost_ratio"] = f"{check_s / gen_s:.3f}"
        key["verify_cost_ratio_w1"] = f"{check_s / gen1_s:.3f}"

        rng = random.Random(1)
        long_items = make_items(8, 16, tag="p", long_prompt=6)
        delays = sorted(preempt_delays(e, long_items, args.pauses, rng))
        p99 = delays[min(len(delays) - 1, math.ceil(0.99 * len(delays)) - 1)]
        print(f"pre-emption ({len(delays)} pauses at width 8): median "
              f"{statistics.median(delays) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
              f"max {delays[-1] * 1e3:.1f} ms", flush=True)
        key["preempt_p99_ms"] = f"{p99 * 1e3:.1f}"

        # Detection: per-shard catch rate by kind of cheat.
        other = Engine(fs["Q8_0"][0], EngineOptions(width=8, ctx_per_seq=512, n_threads=args.threads), model_id="q8")
        nrng = np.random.default_rng(5)
        kinds = ["honest", "other_quant", "random_tokens", "one_token", "cut_short"]
        caught = {k: 0 for k in kinds}
        print(f"\ndetection ({args.shards} shards of 4 items per kind; verifier {args.serve})",
              flush=True)
        for s in range(args.shards):
            shard = make_items(4, 24, sampled=True, tag=f"s{s}-")
            shard = [Item(it.custom_id, it.messages, it.max_tokens, it.temperature, it.top_p,
                          seed=it.seed + 100 * s) for it in shard]
            honest = e.generate(shard)
            swapped = other.generate(shard)
            for k in kinds:
                claims = cheat_claims(k, honest, swapped, e, nrng)
                caught[k] += any(not e.rescore(it, c).ok for it, c in zip(shard, claims))
        other.close()
        e.close()
        print(f"{'claim':15s} {'shards caught':>13s}")
        for k in kinds:
            print(f"{k:15s} {caught[k]:>6d}/{args.shards:<6d}", flush=True)
            key[f"caught_{k}"] = f"{caught[k]}/{args.shards}"
        rates = [caught[k] / args.shards for k in kinds if k != "honest"]
        key["honest_rejected"] = f"{caught['honest']}/{args.shards}"
        key["detect_rate"] = f"{min(rates):.2f}"
        key["detect_rate_1in10"] = f"{min(rates) / 10:.3f}"
    order = ["batch_ratio", "verify_cost_ratio", "preempt_p99_ms", "detect_rate"]
    print(" ".join(f"{k}={key[k]}" for k in order + [k for k in key if k not in order]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
