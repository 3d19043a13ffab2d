"""Fast frame fuzzing: random bytes, byte-level mutations of valid frames, and msgpack maps that
carry a real tag with fields of random type. Seeded, so a failure replays."""

from __future__ import annotations

import random

import msgspec


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 10**6)])
    if kind == 3:
        return "".join(rng.choice("0123456789abcdefé\x00 z") for _ in range(rng.choice([0, 5, 64, 65, 200])))
    if kind == 4:
        return rng.randbytes(rng.randrange(0, 80))
    if kind == 5:
        return rng.random() * 10 ** rng.randrange(-3, 30)
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["job", "shard", "items", "x", "role"]): _value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def fuzz_frames(rng: random.Random, valid: list[bytes], tags: list[str], fields: list[str],
                count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:
            frame = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 5)):
                op = rng.randrange(3)
                i = rng.randrange(len(frame) or 1)
                if op == 0 and frame:
                    frame[i] = rng.randrange(256)
                elif op == 1:
                    del frame[i:]
                else:
                    frame[i:i] = rng.randbytes(rng.randrange(1, 4))
            out.append(bytes(frame))
        else:
            msg = {"t": rng.choice(tags)}
            for name in rng.sample(fields, rng.randrange(0, len(fields) + 1)):
                msg[name] = _value(rng)
            out.append(msgspec.msgpack.encode(msg))
    return out
