"""The decoding rule a worker follows and a verifier replays from re-scored logits.

Greedy when ``temperature == 0``: the argmax (the lowest token id on a tie). Otherwise
temperature + nucleus (top-p) sampling whose randomness is a pure function of (seed, position):
the uniform number for the token at output position ``i`` is the BLAKE3 of ``seed`` and ``i``.
Given bit-identical logits, the worker and the verifier therefore pick the same token, with no
sampler state carried from token to token.

The rule, exactly (float64 throughout, numpy's operations in the order written):

- ``z = logits / temperature``; ``p = exp(z - max(z))``; ``total = sum(p)`` (in token-id order).
- ``top_p >= 1``: the token is the first id whose running sum of ``p`` in token-id order exceeds
  ``u * total``.
- ``top_p < 1``: tokens sorted by ``z`` descending, ties by lower id; the nucleus is the shortest
  prefix whose running sum reaches ``top_p * total``; the token is the first in the nucleus whose
  running sum exceeds ``u`` times the nucleus's sum.

Only the few tokens above a threshold are sorted when their mass already covers the nucleus (the
common case), and tokens whose ``p`` is 0 (masked out) are never sorted; the result is the same as
sorting all of them, because the running sums over a prefix of the order are the same numbers and
a token adding 0 can be neither where the nucleus ends nor the token picked.

The arithmetic runs in per-thread scratch arrays (the same operations in place, so the same
numbers): a vocabulary-sized temporary is large enough that allocating a fresh one for every
token costs as much as the arithmetic.
"""

from __future__ import annotations

import threading

import blake3
import numpy as np

#: Candidates sorted first when looking for the nucleus; the whole vocabulary only if they fall short.
NUCLEUS_FIRST = 256


def uniform(seed: int, position: int) -> float:
    """A number in [0, 1) fixed by (seed, position): 53 bits of BLAKE3."""
    h = blake3.blake3(f"hearth-sampler:{seed}:{position}".encode()).digest(8)
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)


def check_params(temperature: float, top_p: float) -> None:
    if not (temperature >= 0.0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, not {temperature}")
    if not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")


def pick(logits: np.ndarray, temperature: float, top_p: float, seed: int, position: int) -> int:
    """The token the rule gives for the output token at ``position`` after these logits."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    z, p = _scratch(len(logits))
    np.copyto(z, logits)  # logits.astype(np.float64)
    z /= temperature
    np.subtract(z, z.max(), out=p)
    np.exp(p, out=p)
    total = float(np.sum(p))
    u = uniform(seed, position)
    if top_p >= 1.0:
        c = np.cumsum(p, out=z)
        return int(min(np.searchsorted(c, u * total, side="right"), len(p) - 1))
    need = top_p * total
    k = min(NUCLEUS_FIRST, len(z))
    cutoff = np.float64(np.partition(logits, len(z) - k)[len(z) - k]) / temperature
    # The k-th largest z is the k-th largest logit over the temperature (dividing by a positive
    # number keeps the order), so the partition runs on the smaller float32 logits.
    # Tokens whose p is 0 (masked out by a grammar: z = -inf) never move a running sum, so
    # neither the nucleus nor the pick can end on one: they are left out of the sort.
    live = p > 0
    order, c = _ranked(z, p, np.flatnonzero((z >= cutoff) & live))
    if c[-1] < need and len(order) < int(live.sum()):
        order, c = _ranked(z, p, np.flatnonzero(live))
    n = min(int(np.searchsorted(c, need, side="left")) + 1, len(c))
    i = int(np.searchsorted(c[:n], u * c[n - 1], side="right"))
    return int(order[min(i, n - 1)])


_local = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 arrays of length ``n`` owned by the calling thread."""
    b = getattr(_local, "buffers", None)
    if b is None or len(b[0]) != n:
        b = _local.buffers = (np.empty(n), np.empty(n))
    return b


def _ranked(z: np.ndarray, p: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` sorted by z descending then id ascending, and the running sum of their p."""
    order = ids[np.lexsort((ids, -z[ids]))]
    return order, np.cumsum(p[order])
