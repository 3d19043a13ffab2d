"""Hearth's deterministic simulation.

The engine owns the world. It is pure Python (msgspec, blake3, numpy at most) and imports nothing
from ``game``, ``npc`` or ``swarm``; a test walks the imports to keep it that way.
"""

from engine.state import TICKS_PER_SECOND, WorldState
from engine.sim import step
from engine.hashing import state_hash
from engine.world import new_game

__all__ = ["TICKS_PER_SECOND", "WorldState", "step", "state_hash", "new_game"]
