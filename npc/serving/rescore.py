"""Teacher-forced re-scoring: one prefill over prompt + claimed tokens, every claimed token checked
against the decoding rule on the logits at its position, and the claimed finish checked too.

A claim passes only if:

- each claimed token is what ``sampler.pick`` gives on the re-scored logits before it (greedy:
  the argmax; sampled: the seeded sampler replayed), and none is end-of-generation (the rule
  stops there, so an end-of-generation token is never part of an output);
- finish ``"length"``: exactly ``max_tokens`` tokens;
- finish ``"stop"``: fewer than ``max_tokens`` tokens, and the rule gives end-of-generation right
  after the last one (so an output cut short is caught);
- its prompt token count and text are the ones the tokens give.

Sound only when the verifier's logits are bit-identical to the worker's: same model file, skin,
kernels and build, flash attention off, a non-unified KV cache (tools/bench/verify_exact.md;
``Engine.self_check`` re-measures it for the configuration served).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from npc.llama import Context
from npc.serving import sampler
from npc.serving.types import FINISH_LENGTH, FINISH_STOP, Verdict

SEQ = 0


def forced_logits(ctx: Context, prompt: list[int], tokens: list[int],
                  upto: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(i, logits predicting output token i) for i = 0..``upto`` (default ``len(tokens)``: one
    past the last claimed token), from prompt + tokens fed teacher-forced, ``n_batch`` tokens per
    llama_decode. The logits array is llama.cpp's buffer: use it before the next row."""
    upto = len(tokens) if upto is None else upto
    seq = list(prompt) + list(tokens[:upto])
    first = len(prompt) - 1  # the position whose logits predict output token 0
    ctx.seq_rm(SEQ)
    nb = ctx.opts.n_batch
    for start in range(0, len(seq), nb):
        chunk = seq[start:start + nb]
        entries = [(t, SEQ, start + j, start + j >= first) for j, t in enumerate(chunk)]
        if ctx.decode_entries(entries) != 0:
            raise RuntimeError("re-scoring was aborted")
        for j in range(len(chunk)):
            pos = start + j
            if pos >= first:
                yield pos - first, ctx.logits(j)
    ctx.seq_rm(SEQ)


def check_claim(ctx: Context, eog: np.ndarray, prompt: list[int], item, claim) -> Verdict:
    """Re-score ``claim`` (tokens, finish_reason) for ``item`` (max_tokens, temperature, top_p,
    seed) over ``prompt``. Shape checks (ids, counts, text) are the caller's."""
    tokens = [int(t) for t in claim.tokens]
    n = len(tokens)
    stop = claim.finish_reason == FINISH_STOP
    upto = n if stop else n - 1  # a "stop" claim also needs the row after its last token
    for i, row in forced_logits(ctx, prompt, tokens, upto):
        rule = sampler.pick(row, item.temperature, item.top_p, item.seed, i)
        if i == n:
            if not eog[rule]:
                return Verdict(False, n, n, f"cut short: after token {n - 1} the rule gives "
                                            f"{rule}, not end-of-generation")
            break
        if eog[tokens[i]]:
            return Verdict(False, i, i, f"token {i}: claimed {tokens[i]} is end-of-generation, "
                                        f"where the output ends")
        if rule != tokens[i]:
            return Verdict(False, i, i, f"token {i}: claimed {tokens[i]}, rule gives {rule}")
    return Verdict(True, n)


def finish_problem(claim, max_tokens: int) -> str:
    """Why the claimed finish cannot be right from the counts alone ("" when it can)."""
    n = len(claim.tokens)
    if claim.finish_reason == FINISH_LENGTH:
        return "" if n == max_tokens else f"finish \"length\" with {n} tokens, max_tokens is {max_tokens}"
    if claim.finish_reason == FINISH_STOP:
        return "" if n < max_tokens else f"finish \"stop\" with {n} tokens, max_tokens is {max_tokens}"
    return f"finish_reason {claim.finish_reason!r} is neither \"stop\" nor \"length\""
