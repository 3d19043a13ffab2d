"""The state hash: BLAKE3 over the canonical msgpack encoding (dict keys and fields sorted)."""

from __future__ import annotations

import blake3
import msgspec

from engine.state import WorldState

_canonical = msgspec.msgpack.Encoder(order="sorted")


def canonical_bytes(state: WorldState) -> bytes:
    return _canonical.encode(state)


def state_digest(state: WorldState) -> bytes:
    return blake3.blake3(_canonical.encode(state)).digest()


def state_hash(state: WorldState) -> str:
    return blake3.blake3(_canonical.encode(state)).hexdigest()
