"""Choosing who speaks for the villagers: the local model, or the scripted voice."""

from __future__ import annotations

import sys
from typing import Callable

from npc.responder import Responder


class VoiceError(Exception):
    pass


def load_model_voice(say: Callable[[str], None] = print, retune: bool = False):
    """The local model: import it into the store on first run, pick the fastest stable
    configuration (measured once per machine), load it, with a pool for the skins NPCs wear."""
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
    return ModelVoice(runtime, pool=pool, base_model=base.blake3)


def load_voice(kind: str, say: Callable[[str], None] = print) -> Responder:
    if kind == "scripted":
        from npc.scripted import ScriptedResponder
        return ScriptedResponder()
    if kind in ("model", "auto"):
        try:
            return load_model_voice(say)
        except Exception as e:
            if kind == "model":
                raise VoiceError(f"the local model could not be loaded: {e}") from e
            print(f"hearth: the local model could not be loaded ({e}); villagers use their "
                  f"scripted lines instead.", file=sys.stderr)
            from npc.scripted import ScriptedResponder
            return ScriptedResponder()
    raise VoiceError(f"unknown voice {kind!r} (model, scripted or auto)")
