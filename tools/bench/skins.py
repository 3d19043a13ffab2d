"""Many skins on one base model, measured side by side in one run.

64 distinct adapters are made cheaply from a demo skin: its A matrices, with each B replaced by
random values of the same spread, written by Hearth's converter (``npc.skins.convert``) into a
temp directory. All are loaded as ``npc.llama.Adapter`` against the one base model that a
``Runtime`` holds (the default Q4_1 model).

- throughput_ratio: generated tokens per second of whole requests (prefill + decode) with the 64
  skins round-robin, over the same requests all wearing one skin. Every request is the same short
  prompt in the game's chat format (~50 tokens) and generates the same number of tokens (greedy,
  no grammar, no early stop). Both arms miss the prefix cache on every request: the runtime keys
  its 8 slots by (adapter, NPC), so 64 adapters round-robin always miss, and the one-skin arm
  gives each request its own NPC key, which misses the same way. The arms run as alternating
  blocks of 32 requests (one-skin, 64-skin, one-skin, 64-skin), so a drift of machine speed hits
  both.
- swap_ms_p50: on a separate context over the same model, the cost of switching to a different
  adapter: ``Context.set_adapter`` (a llama.cpp ``llama_set_adapters_lora`` call) plus how much
  longer the first one-token decode after the switch takes than a decode with no switch (median
  of 64 no-switch decodes). Median over 64 switches. The switch itself is a pointer swap; the
  cost is llama.cpp re-planning its compute graph for the new adapter on the next decode. The
  same figure is printed with 8 loaded: with Hearth's llama.cpp patch
  (tools/llama/patches/) it no longer depends on how many adapters are loaded.
- rss_overhead_ratio: resident memory with the 64 adapters loaded and used, over the resident
  memory of the base alone plus the summed adapter file sizes ("resident memory against base
  plus adapters"; 1.0: the process costs exactly base + adapter files). RSS is VmRSS from
  /proc/self/status. Both states have run the same kind of work, so the compute buffer's pages
  are touched alike: the base alone is measured after short requests on all 8 slots and one
  full 512-token batch; the adapters after both arms and one full batch under an adapter. The
  report also prints the stricter figure, the RSS increase over the adapter file sizes, split
  into the adapters' tensors (measured right after loading; llama.cpp keeps a ggml tensor
  header per LoRA matrix, 420 per skin) and what using them added (a graph with a LoRA touches
  more of the compute buffer than the base graph does, once, whatever the number of skins).

Last line: adapters=64 throughput_ratio=… swap_ms_p50=… rss_overhead_ratio=…
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from npc.llama import Adapter, Context, LoadOptions  # noqa: E402
from npc.grammar import PREFIX  # noqa: E402
from npc.runtime import Runtime  # noqa: E402
from npc.skins.convert import convert_peft_to_gguf, read_peft  # noqa: E402
from npc.skins.manifest import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE  # noqa: E402
from npc.store import ModelStore  # noqa: E402

N_ADAPTERS = 64
BLOCK = 32


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_adapters(source: Path, base_gguf: Path, out: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` GGUF adapters: the source skin's A matrices, fresh random B matrices per adapter."""
    from safetensors.numpy import save_file
    config, tensors = read_peft(source)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        peft = out / f"peft-{i}"
        peft.mkdir()
        mixed = {}
        for name, t in tensors.items():
            if ".lora_B." in name:
                t = (rng.standard_normal(t.shape) * float(np.std(t.astype(np.float32))))
            mixed[name] = np.asarray(t, dtype=np.float16)
        save_file(mixed, str(peft / PEFT_WEIGHTS_FILE))
        (peft / PEFT_CONFIG_FILE).write_text(json.dumps(config))
        paths.append(convert_peft_to_gguf(peft, base_gguf, out / f"skin-{i:02d}.gguf"))
        shutil.rmtree(peft)
    return paths


def chat_prompt(rt: Runtime) -> list[int]:
    """A short prompt in the game's chat format: the bench is about decoding under many
    adapters, and every request prefills it in full (the game's own ~450-token prompt would
    make the run several times longer on a small machine without changing the comparison)."""
    return rt.tokenize_segments([
        ("<|im_start|>system\n", True),
        ("You are Tobin, the merchant of Emberbrook, a small village.", False),
        ("<|im_end|>\n<|im_start|>user\n", True),
        ('Traveller says: "What do you have for sale today?"', False),
        ("<|im_end|>\n<|im_start|>assistant\n", True),
        (PREFIX, False)])


def run_block(rt, prompt, requests, n_tokens) -> tuple[int, float, int, float]:
    """(tokens, seconds, decode tokens, decode seconds) over (adapter, adapter_key, npc key)."""
    toks = secs = dtoks = dsecs = 0
    for adapter, akey, key in requests:
        r = rt.generate(prompt, key=key, max_tokens=n_tokens, adapter=adapter, adapter_key=akey,
                        stop_at_eog=False)
        assert r.n_cached == 0, "a request hit the prefix cache; the arms would not compare"
        toks += r.n_tokens
        secs += r.total_s
        dtoks += r.n_tokens - 1
        dsecs += r.total_s - r.ttft_s
    return toks, secs, dtoks, dsecs


def swap_latency(model, adapters, n_threads: int) -> tuple[float, float, float]:
    """(p50 of set_adapter + extra first-decode ms, p50 set_adapter ms, steady decode ms)."""
    ctx = Context(model, LoadOptions(n_ctx=512, n_seq_max=1, n_batch=512, n_threads=n_threads))
    try:
        prompt = model.tokenize("<|im_start|>user\nHello there, how is the village?<|im_end|>\n"
                                "<|im_start|>assistant\n", parse_special=True)
        ctx.set_adapter(adapters[0])
        ctx.decode(prompt, 0, 0)
        pos = len(prompt)
        tok = prompt[-1]

        def one_decode() -> float:
            t = time.perf_counter()
            ctx.decode([tok], 0, pos)
            dt = time.perf_counter() - t
            ctx.seq_rm(0, pos, -1)
            return dt

        for _ in range(8):
            one_decode()
        steady = statistics.median(one_decode() for _ in range(N_ADAPTERS))
        swaps, sets = [], []
        for i in range(N_ADAPTERS):
            nxt = adapters[(i + 1) % len(adapters)]
            if nxt is ctx.adapter:
                nxt = adapters[(i + 2) % len(adapters)]
            t = time.perf_counter()
            ctx.set_adapter(nxt)
            t_set = time.perf_counter() - t
            first = one_decode()
            sets.append(t_set)
            swaps.append(t_set + first - steady)
        return (statistics.median(swaps) * 1e3, statistics.median(sets) * 1e3, steady * 1e3)
    finally:
        ctx.set_adapter(None)
        ctx.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="many skins on one base: throughput, swap, memory")
    ap.add_argument("--skin", type=Path, default=ROOT / "assets" / "skins" / "bundles" / "pirate",
                    help="a skin bundle (its PEFT weights seed the 64 adapters)")
    ap.add_argument("--tokens", type=int, default=24, help="tokens generated per request")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    store = ModelStore()
    base = store.ensure_default()
    base_path = store.path(base.blake3)
    with tempfile.TemporaryDirectory(prefix="hearth-bench-skins-") as tmp:
        t = time.perf_counter()
        paths = make_adapters(args.skin, base_path, Path(tmp), N_ADAPTERS)
        adapter_bytes = sum(p.stat().st_size for p in paths)
        print(f"made {len(paths)} adapters ({adapter_bytes / 2**20:.1f} MiB, "
              f"{adapter_bytes / len(paths) / 2**20:.2f} MiB each) in "
              f"{time.perf_counter() - t:.0f} s")
        gc.collect()

        rt = Runtime(base_path, n_ctx=8192, n_slots=8, n_threads=args.threads)
        prompt = chat_prompt(rt)
        full_batch = rt.model.tokenize("the village well " * 200)[: rt.opts.n_batch]
        for i in range(8):  # the base alone, warmed up on every slot
            rt.generate(prompt, key=f"warm-{i}", max_tokens=args.tokens, stop_at_eog=False)
        rt.generate(full_batch, key="warm-full", max_tokens=1, stop_at_eog=False)
        rss_base = rss_bytes()
        t = time.perf_counter()
        adapters = [Adapter(rt.model, p, key=f"skin-{i:02d}") for i, p in enumerate(paths)]
        load_s = time.perf_counter() - t
        rss_loaded = rss_bytes()
        print(f"base alone: RSS {rss_base / 2**20:.1f} MiB; 64 adapters loaded in {load_s:.2f} s: "
              f"RSS +{(rss_loaded - rss_base) / 2**20:.1f} MiB")
        print(f"prompt {len(prompt)} tokens, {args.tokens} tokens per request, "
              f"{N_ADAPTERS} requests per arm")

        one, many = adapters[0], adapters
        rt.generate(prompt, key="warm-one", max_tokens=args.tokens, adapter=one,
                    adapter_key=one.key, stop_at_eog=False)
        arms = {"one": [0, 0.0, 0, 0.0], "many": [0, 0.0, 0, 0.0]}
        for block in range(N_ADAPTERS // BLOCK):
            idx = range(block * BLOCK, (block + 1) * BLOCK)
            for arm, reqs in (
                ("one", [(one, one.key, f"npc-{i}") for i in idx]),
                ("many", [(many[i], many[i].key, "npc") for i in idx]),
            ):
                got = run_block(rt, prompt, reqs, args.tokens)
                arms[arm] = [a + b for a, b in zip(arms[arm], got)]
        rt.generate(full_batch, key="full", max_tokens=1, adapter=many[-1],
                    adapter_key=many[-1].key, stop_at_eog=False)
        rss_after = rss_bytes()
        tps = {arm: v[0] / v[1] for arm, v in arms.items()}
        dtps = {arm: v[2] / v[3] for arm, v in arms.items()}
        throughput_ratio = tps["many"] / tps["one"]
        print(f"one skin:  {tps['one']:.1f} tok/s per request end to end "
              f"(decode only {dtps['one']:.1f} tok/s)")
        print(f"64 skins:  {tps['many']:.1f} tok/s per request end to end "
              f"(decode only {dtps['many']:.1f} tok/s)")
        print(f"decode-only ratio {dtps['many'] / dtps['one']:.3f}")

        swap_p50, set_p50, steady = swap_latency(rt.model, adapters, args.threads)
        print(f"swap with 64 loaded: set_adapter p50 {set_p50:.3f} ms, one-token decode "
              f"{steady:.2f} ms without a swap; set_adapter + extra first-decode cost p50 "
              f"{swap_p50:.3f} ms")
        # llama.cpp re-plans the graph after a switch; unpatched, for a graph sized by every
        # loaded adapter: the same measurement with 8 loaded shows whether it depends on that.
        for a in adapters[8:]:
            rt.forget_adapter(a.key)
            a.close()
        swap8, _, steady8 = swap_latency(rt.model, adapters[:8], args.threads)
        print(f"swap with 8 loaded: {swap8:.3f} ms "
              f"(one-token decode {steady8:.2f} ms)")

        rss_overhead_ratio = rss_after / (rss_base + adapter_bytes)
        print(f"RSS base alone {rss_base / 2**20:.1f} MiB, with 64 adapters used "
              f"{rss_after / 2**20:.1f} MiB: +{(rss_after - rss_base) / 2**20:.1f} MiB for "
              f"{adapter_bytes / 2**20:.1f} MiB of adapter files = "
              f"{(rss_after - rss_base) / adapter_bytes:.3f}x their size (tensors "
              f"+{(rss_loaded - rss_base) / 2**20:.1f} MiB = "
              f"{(rss_loaded - rss_base) / adapter_bytes:.3f}x; using them "
              f"+{(rss_after - rss_loaded) / 2**20:.1f} MiB)")
        print(f"RSS with 64 adapters over base alone + adapter files: "
              f"{rss_overhead_ratio:.3f}")
        for a in adapters[:8]:
            rt.forget_adapter(a.key)
            a.close()
        rt.close()
    print(f"adapters={N_ADAPTERS} throughput_ratio={throughput_ratio:.3f} "
          f"swap_ms_p50={swap_p50:.3f} rss_overhead_ratio={rss_overhead_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
