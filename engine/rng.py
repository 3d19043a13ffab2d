"""PCG32: the one random number generator of the world.

Its whole state is a single 64-bit integer kept inside ``WorldState``, so a save, a replay or another
process continues the exact same sequence. Nothing in the engine may use the ``random`` module.
"""

from __future__ import annotations

_MULT = 6364136223846793005
_INC = 1442695040888963407  # odd stream constant
_MASK64 = (1 << 64) - 1


def seed_state(seed: int) -> int:
    """Initial generator state for a seed (PCG's recommended seeding sequence)."""
    state = (0 * _MULT + _INC) & _MASK64
    state = (state + (seed & _MASK64)) & _MASK64
    return (state * _MULT + _INC) & _MASK64


def next_u32(state: int) -> tuple[int, int]:
    """Return (new_state, 32-bit output)."""
    old = state
    state = (old * _MULT + _INC) & _MASK64
    xorshifted = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
    rot = old >> 59
    out = ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & 0xFFFFFFFF
    return state, out


def below(state: int, n: int) -> tuple[int, int]:
    """Return (new_state, uniform integer in [0, n)) without modulo bias."""
    if n <= 0:
        raise ValueError("n must be positive")
    threshold = (-n & 0xFFFFFFFF) % n
    while True:
        state, r = next_u32(state)
        if r >= threshold:
            return state, r % n
