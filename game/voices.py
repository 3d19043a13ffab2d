"""Choosing who speaks for the villagers: the local model, or the scripted voice; and, for a new
game the model speaks for, the shipped skins its villagers wear.

``voice_for_play`` is the one way a game gets its voice, in the window (on a background thread,
while the scripted voice stands in) and headless alike.
"""

from __future__ import annotations

from typing import Callable

from engine.commands import WearSkin
from engine.state import WorldState
from game.notices import note
from npc.responder import Responder


class VoiceError(Exception):
    pass


#: Whether skins are worn on top of the village voice or instead of it. On top, a skin and the
#: village voice are worn as one composed adapter (npc/skins/compose.py), so the turn costs about
#: what the skin alone costs (stacked as two adapters it cost 1.02 s p95 against 0.76 s alone:
#: tools/bench/dialogue_stacked.txt); the shipped skins keep their voice and their actions either
#: way (tests/test_skin_training.py).
VILLAGE_UNDER_SKINS = True


def load_model_voice(say: Callable[[str], None] = print, retune: bool = False,
                     village: bool = True):
    """The local model: import it into the store on first run, pick the fastest stable
    configuration (measured once per machine), load it, with a pool for the skins NPCs wear and
    (unless ``village`` is False) the world-tuned village voice for villagers without one."""
    from npc.adapters import AdapterPool
    from npc.runtime import Runtime
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    from npc.tuning import choose
    from npc.voice import ModelVoice

    store = ModelStore()
    base = store.ensure_default()
    choice = choose(store, base, force=retune, say=say)
    runtime = Runtime(store.path(choice.model), use_extra_bufts=choice.use_extra_bufts,
                      n_threads=choice.n_threads, n_threads_batch=choice.n_threads_batch)
    # Skins are made for, and checked against, the base model; the runtime may run a
    # requantization of it, which has the same tensor shapes and so takes the same adapters.
    pool = AdapterPool(runtime, SkinStore(), base_model=base.blake3,
                       base_gguf=store.path(base.blake3))
    village_id = None
    if village:
        from game.village_skins import install_village_voice
        village_id = install_village_voice(say)
    return ModelVoice(runtime, pool=pool, base_model=base.blake3, village=village_id,
                      village_under_skins=VILLAGE_UNDER_SKINS)


def load_voice(kind: str, say: Callable[[str], None] = note) -> Responder:
    """``scripted``, ``model`` (VoiceError if it cannot load) or ``auto`` (the model, else the
    scripted voice)."""
    from npc.scripted import ScriptedResponder
    if kind == "scripted":
        return ScriptedResponder()
    if kind in ("model", "auto"):
        try:
            return load_model_voice(say)
        except Exception as e:
            if kind == "model":
                raise VoiceError(f"the local model could not be loaded: {e}") from e
            note(f"hearth: the local model could not be loaded ({e}); villagers use their "
                 f"scripted lines instead.")
            return ScriptedResponder()
    raise VoiceError(f"unknown voice {kind!r} (model, scripted or auto)")


def voice_for_play(kind: str, state: WorldState,
                   dress: bool) -> tuple[Responder, list[WearSkin]]:
    """The voice ``kind`` for the game ``state`` and, when ``dress`` is asked for (a new game)
    and the model speaks, the ``WearSkin`` commands putting the shipped skins on its villagers
    (see game/village_skins.py). Progress and problems are noted on stderr; skins that cannot be
    set up leave the villagers their base voice."""
    from npc.scripted import ScriptedResponder
    responder = load_voice(kind)
    if not dress or isinstance(responder, ScriptedResponder):
        return responder, []
    from game.village_skins import dress_villagers
    try:
        return responder, dress_villagers(state, say=lambda line: note(f"hearth: {line}"))
    except Exception as e:  # the villagers keep their base voice
        note(f"hearth: the demo skins could not be set up: {e}")
        return responder, []
