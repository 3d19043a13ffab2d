"""NPC dialogue speed on the default model, measured side by side in one run.

- ttft / full line: time to first token (p50) and to a full 40-token line (p95) with the NPC's
  persona prefix already cached (the situation a player is in after the first exchange).
- overhead_ratio: tokens/s of Hearth's generation path (our decode, logits read, sampler,
  streaming) over a minimal reference loop (llama_decode plus llama.cpp's own C greedy sampler),
  same model file, load parameters, threads and token count.
- grammar_ratio: per-token decode time with the reply grammar over without it.
- frame_p99_ms: the game thread's frame work (tick + render to an offscreen surface) while replies
  are generated on the worker thread, at 60 frames per second.

Last line: ttft_p50_s=… full_p95_s=… overhead_ratio=… grammar_ratio=… frame_p99_ms=…
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402

from engine.dialogue import build_request  # noqa: E402
from engine.world import new_game  # noqa: E402
from npc.grammar import ReplyGrammar  # noqa: E402
from npc.llama import C  # noqa: E402  (llama_cpp, after the game's OpenMP settings)
from npc.prompt import build_prompt  # noqa: E402

UTTERANCES = [
    ("tobin", "What do you sell?"), ("tobin", "I want to buy a coil of rope."),
    ("maren", "Good evening! Any news?"), ("maren", "Can I help you with anything?"),
    ("bram", "How is the forge today?"), ("bram", "I'd like a horseshoe, please."),
    ("hilda", "Is the village safe?"), ("hilda", "What do you watch for?"),
]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def reference_tps(model, ctx, prompt: list[int], n: int) -> float:
    """llama_decode + llama.cpp's greedy sampler, nothing else."""
    smpl = C.llama_sampler_init_greedy()
    seq = 7
    ctx.seq_rm(seq)
    ctx.decode(prompt, seq, 0)
    pos = len(prompt)
    batch = C.llama_batch_init(1, 0, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        tok = C.llama_sampler_sample(smpl, ctx.ptr, -1)
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = tok, pos, 1
        batch.seq_id[0][0], batch.logits[0], batch.n_tokens = seq, True, 1
        if C.llama_decode(ctx.ptr, batch) != 0:
            raise RuntimeError("decode failed")
        pos += 1
    dt = time.perf_counter() - t0
    C.llama_batch_free(batch)
    C.llama_sampler_free(smpl)
    ctx.seq_rm(seq)
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    from game.voices import load_model_voice
    voice = load_model_voice(say=lambda s: print(s, file=sys.stderr))
    rt = voice.runtime
    print(f"model file {rt.model.path.name}  extra_bufts={rt.opts.use_extra_bufts} "
          f"threads={rt.opts.n_threads} (decode) / {rt.opts.n_threads_batch or rt.opts.n_threads} "
          f"(prefill)")

    from tests.conftest import place_player_near
    state = new_game(seed=1)

    # 1. ttft and full 40-token lines with the persona prefix cached
    ttft, full = [], []
    for rnd in range(args.rounds + 1):
        for npc_id, words in UTTERANCES:
            if state.player.talking_to != npc_id:
                state = place_player_near(state, npc_id)
            req = build_request(state, npc_id, words)
            toks = rt.tokenize_segments(build_prompt(req).segments)
            g = ReplyGrammar(req.legal_actions, 400, max_sentences=99)
            r = rt.generate(toks, key=(npc_id, None), grammar=g, max_tokens=40)
            if rnd == 0:
                continue  # warms each NPC's prefix, as the first exchange does in play
            ttft.append(r.ttft_s)
            full.append(r.total_s)
            if r.total_s > 1.0:
                print(f"  slow line: {npc_id} {r.total_s:.2f}s prompt={r.n_prompt} cached={r.n_cached} "
                      f"tokens={r.n_tokens}+{r.n_forced} detours={r.grammar_detours} scans={r.full_scans}")
    print(f"turns={len(ttft)} ttft p50={pct(ttft, 50):.3f}s p95={pct(ttft, 95):.3f}s  "
          f"full-line p50={pct(full, 50):.3f}s p95={pct(full, 95):.3f}s")

    # 2. overhead and grammar ratios, interleaved so machine noise hits both sides alike
    state = place_player_near(state, "tobin")
    req = build_request(state, "tobin", "Tell me everything about your wares.")
    prompt = rt.tokenize_segments(build_prompt(req).segments)
    ours, ref, ratios = [], [], []
    for _ in range(args.rounds):
        ref.append(reference_tps(rt.model, rt.ctx, prompt, args.tokens))
        r = rt.generate(prompt, key="bench-plain", max_tokens=args.tokens, stop_at_eog=False)
        ours.append((r.n_tokens - 1) / (r.total_s - r.ttft_s))
        # Constrained vs unconstrained over the same number of generated positions (sampled plus
        # grammar-forced), each timed from the end of the prompt's prefill.
        g = ReplyGrammar(req.legal_actions, 2000, max_sentences=999)
        c = rt.generate(prompt, key="bench-grammar", grammar=g, max_tokens=args.tokens)
        n = c.n_tokens + c.n_forced
        u = rt.generate(prompt, key="bench-plain", max_tokens=n, stop_at_eog=False)
        ratios.append(((c.total_s - c.prefill_s) / n) / ((u.total_s - u.prefill_s) / u.n_tokens))
    overhead = statistics.median(ours) / statistics.median(ref)
    grammar = statistics.median(ratios)
    print(f"decode tok/s: ours {statistics.median(ours):.1f}  reference {statistics.median(ref):.1f}  "
          f"-> overhead_ratio {overhead:.3f}")
    print(f"constrained/unconstrained time per generated position: {[round(x, 3) for x in ratios]} "
          f"-> grammar_ratio {grammar:.3f}")

    # 3. frame time of the game thread while the worker generates
    import pygame

    from game.render import make_ui, render
    from game.session import GameSession
    pygame.init()
    session = GameSession(place_player_near(new_game(seed=2), "maren"), voice)
    surface = pygame.display.set_mode((1280, 720))  # the dummy video driver: same code path as play
    ui = make_ui(session.state)
    frames, replies, t_end = [], 0, time.perf_counter() + 60
    words = iter(["Hello Maren!", "What is the news?", "Tell me about the bell.",
                  "Do you sell stew?", "Thanks, goodbye."] * 4)
    period = 1 / 60
    next_frame = time.perf_counter()
    while time.perf_counter() < t_end and replies < 6:
        if session.pending is None:
            if replies or session.completed:
                replies = len(session.completed)
            session.talk("maren", next(words))
        t0 = time.perf_counter()
        session.tick()
        render(surface, session, 0.5, ui)
        work = time.perf_counter() - t0
        if session.pending is not None:
            frames.append(work * 1000)
        next_frame += period
        delay = next_frame - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_frame = time.perf_counter()
    session.close()
    frame_p99 = pct(frames, 99)
    print(f"frames while generating: {len(frames)}  p50={pct(frames, 50):.2f} ms  p99={frame_p99:.2f} ms "
          f"(replies: {len(session.completed)})")
    print(f"ttft_p50_s={pct(ttft, 50):.3f} full_p95_s={pct(full, 95):.3f} overhead_ratio={overhead:.3f} "
          f"grammar_ratio={grammar:.3f} frame_p99_ms={frame_p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
