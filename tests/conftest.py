import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def world():
    from engine.world import new_game
    return new_game(seed=1)


def world_totals(state):
    """(goods by item, gold) held by the player and every NPC together: the books rules keep."""
    from collections import Counter
    items = Counter(state.player.inventory)
    gold = state.player.gold
    for n in state.npcs:
        items.update(n.inventory)
        gold += n.gold
    return items, gold


def place_player_near(state, npc_id):
    """Put the player on a free walkable tile next to an NPC and open the conversation."""
    from engine.commands import Interact
    from engine.sim import step
    from engine.world import free_tile_beside
    tile = free_tile_beside(state, npc_id)
    if tile is not None:
        state.player.x, state.player.y = tile
        state.player.from_x, state.player.from_y = tile
    state, events = step(state, [Interact(npc=npc_id)])
    assert state.player.talking_to == npc_id, events
    return state


@pytest.fixture(scope="session")
def hearth_home(tmp_path_factory):
    """A user data directory for the whole test session (the model store, tuning records)."""
    home = tmp_path_factory.mktemp("hearth-home")
    old = os.environ.get("HEARTH_HOME")
    os.environ["HEARTH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("HEARTH_HOME", None)
    else:
        os.environ["HEARTH_HOME"] = old


@pytest.fixture(scope="session")
def model_voice(hearth_home):
    """The real default model, imported, tuned and loaded exactly as the game does it."""
    from game.voices import load_model_voice
    lines = []
    voice = load_model_voice(say=lines.append)
    voice.tuning_log = lines
    yield voice
    voice.runtime.close()
