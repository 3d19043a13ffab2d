"""NPC dialogue speed on the default model, measured side by side in one run.

- ttft / full line: time to first token (p50) and to a full 40-token line (p95) with the NPC's
  persona prefix already cached (the situation a player is in after the first exchange).
- overhead_ratio: tokens/s of Hearth's generation path (our decode, logits read, sampler,
  streaming) over a minimal reference loop (llama_decode plus llama.cpp's own C greedy sampler),
  same model file, load parameters, threads and token count.
- grammar_ratio: per-token decode time with the reply grammar over without it.
- frame_p99_ms: the game thread's frame work (tick + render to an offscreen surface) while replies
  are generated on the worker thread, at 60 frames per second.
- with ``--seeding``: the same frames in blocks alternating with blocks where the window's swarm
  node seeds the local stores on 127.0.0.1 (no bootstrap node, no public DHT router) while a
  second local libtorrent session downloads the model from it again and again, so the seed is
  uploading throughout (``swarm_load.py``). frame_p99_ms is then the blocks without the swarm,
  frame_p99_ms_seeding the blocks with it. The node keeps its state in a scratch data directory
  that links the player's stores.

Last line: ttft_p50_s=… full_p95_s=… overhead_ratio=… grammar_ratio=… frame_p99_ms=…
[frame_p99_ms_seeding=…]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
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
from swarm.settings import parse_rate  # noqa: E402

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


MAREN_LINES = ["Hello Maren!", "What is the news?", "Tell me about the bell.", "Do you sell stew?",
               "Thanks, goodbye."]


def maren_session(voice):
    from game.session import GameSession
    from tests.conftest import place_player_near
    return GameSession(place_player_near(new_game(seed=2), "maren"), voice)


def frame_block(session, surface, ui, replies: int, seconds: float, poll_swarm=None) -> list[float]:
    """The game thread's work per frame (ms), at 60 frames per second, for the frames during
    which a reply is being generated, until ``replies`` replies have come (or ``seconds`` pass).
    ``poll_swarm`` is asked for the swarm box once a second, as the window asks its node."""
    from game.client import SWARM_POLL_SECONDS
    from game.render import render
    frames, done, t_end = [], 0, time.perf_counter() + seconds
    words = iter(MAREN_LINES * 4)
    period = 1 / 60
    next_frame = time.perf_counter()
    polled = float("-inf")
    while time.perf_counter() < t_end and done < replies:
        if session.pending is None:
            done = len(session.completed)
            session.talk("maren", next(words))
        t0 = time.perf_counter()
        if poll_swarm is not None and t0 - polled >= SWARM_POLL_SECONDS:
            polled = t0
            ui.swarm_status = poll_swarm()
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
    return frames


def frames_with_and_without_seeding(voice, surface, args) -> tuple[list[float], list[float]]:
    """The frame block run alternately without and with the window's swarm node seeding (and a
    local downloader fetching the model from it), each block a fresh conversation with the same
    lines; pairs alternate their order (off-on, on-off, ...) so a drift in the machine's load
    falls on both arms alike."""
    from game.render import make_ui
    from tools.bench.swarm_load import SeedingLoad

    def block(seeding: bool) -> list[float]:
        session = maren_session(voice)
        ui = make_ui(session.state)
        load = SeedingLoad(voice.runtime.model.path, args.upload_limit).start() if seeding else None
        try:
            frames = frame_block(session, surface, ui, args.block_replies, 60,
                                 poll_swarm=load.poll_status if load else None)
        finally:
            session.close()
            upload = load.stop() if load else None
        line = (f"  {'seeding' if seeding else 'no swarm'}: {len(frames)} frames "
                f"p50={pct(frames, 50):.2f} ms p99={pct(frames, 99):.2f} ms "
                f"(replies: {len(session.completed)})")
        if upload is not None:
            uploads.append(upload)
            line += (f"  upload {upload.mean_rate / 1e6:.1f} MB/s mean, "
                     f"{upload.peak_rate / 1e6:.1f} MB/s peak, {upload.copies} copies")
        print(line, flush=True)
        time.sleep(1.0)  # the cancelled last reply and the closed node settle between blocks
        return frames

    uploads = []
    off, on = [], []
    block(False)  # warm-up, not counted: the persona prefixes are cached from here on
    for pair in range(args.pairs):
        for seeding in ((False, True) if pair % 2 == 0 else (True, False)):
            (on if seeding else off).extend(block(seeding))
    sent = sum(u.payload_bytes for u in uploads)
    secs = sum(u.seconds for u in uploads)
    print(f"frames while generating, no swarm: {len(off)}  p50={pct(off, 50):.2f} ms  "
          f"p99={pct(off, 99):.2f} ms")
    print(f"frames while generating, seeding:  {len(on)}  p50={pct(on, 50):.2f} ms  "
          f"p99={pct(on, 99):.2f} ms  upload {sent / secs / 1e6:.1f} MB/s mean "
          f"({sent / 1e6:.0f} MB in {secs:.0f} s, {sum(u.copies for u in uploads)} copies of the "
          f"model), peak {max(u.peak_rate for u in uploads) / 1e6:.1f} MB/s")
    print(f"p99 seeding/no swarm: {pct(on, 99) / pct(off, 99):.2f}")
    return off, on


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seeding", action="store_true",
                    help="also measure the frames with the window's swarm node seeding the local "
                         "stores on 127.0.0.1 while a second local node downloads the model from "
                         "it, in blocks alternating with blocks without the swarm")
    ap.add_argument("--pairs", type=int, default=2,
                    help="with --seeding: pairs of blocks (one without, one with seeding)")
    ap.add_argument("--block-replies", type=int, default=4,
                    help="with --seeding: replies generated in each block")
    ap.add_argument("--upload-limit", type=parse_rate, default=0,
                    help="with --seeding: the node's upload limit (e.g. 2M; default 0, unlimited, "
                         "as in a fresh swarm.toml)")
    args = ap.parse_args()
    if args.seeding:
        from common.paths import data_dir
        from tools.bench.swarm_load import mirror_home
        scratch = tempfile.TemporaryDirectory(prefix="hearth-bench-home-")
        os.environ["HEARTH_HOME"] = str(mirror_home(data_dir(), Path(scratch.name) / "home"))

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

    from game.render import make_ui
    pygame.init()
    surface = pygame.display.set_mode((1280, 720))  # the dummy video driver: same code path as play
    if args.seeding:
        frames, seeding_frames = frames_with_and_without_seeding(voice, surface, args)
    else:
        session = maren_session(voice)
        frames = frame_block(session, surface, make_ui(session.state), replies=6, seconds=60)
        session.close()
        print(f"frames while generating: {len(frames)}  p50={pct(frames, 50):.2f} ms  "
              f"p99={pct(frames, 99):.2f} ms (replies: {len(session.completed)})")
    frame_p99 = pct(frames, 99)
    last = (f"ttft_p50_s={pct(ttft, 50):.3f} full_p95_s={pct(full, 95):.3f} "
            f"overhead_ratio={overhead:.3f} grammar_ratio={grammar:.3f} "
            f"frame_p99_ms={frame_p99:.2f}")
    if args.seeding:
        last += f" frame_p99_ms_seeding={pct(seeding_frames, 99):.2f}"
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
