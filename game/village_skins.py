"""The skins Hearth ships: installed on first use, worn by the villagers of a new game.

``assets/skins/demo_skins.toml`` lists each demo skin and, under ``wear``, the villager who wears
it. A new game played with the local model dresses those villagers (through the engine's
``WearSkin`` command, so the choice is part of the world state and of any recording); a loaded
save keeps whatever its villagers wear. A bundle that is missing or does not verify is reported
and skipped: that villager keeps the base voice.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Callable

from assets import ASSETS_DIR
from engine.commands import WearSkin
from engine.state import WorldState
from npc.skins.manifest import SkinError

SKINS_DIR = ASSETS_DIR / "skins"
BUNDLES_DIR = SKINS_DIR / "bundles"
#: The world-tuned village voice (tools/make_village_voice.py), worn by villagers without a skin.
VILLAGE_BUNDLE = ASSETS_DIR / "village" / "bundle"


def shipped_skins(path: Path = SKINS_DIR / "demo_skins.toml") -> list[dict]:
    """The demo skin entries (``dir``, ``name``, ``wear``, ...)."""
    return tomllib.loads(path.read_text(encoding="utf-8"))["skin"]


def _install(bundle: Path, what: str, say: Callable[[str], None]) -> str | None:
    """Install one shipped bundle unless it is installed (verified against the default base model
    first); its skin id, or None (said why) when it is missing or does not verify."""
    from npc.skins.bundle import read_signed
    from npc.skins.store import SkinStore
    from npc.store import ModelStore

    models = ModelStore()
    base = models.ensure_default()
    store = SkinStore()
    try:
        skin_id = read_signed(bundle).skin_id
        if not store.is_installed(skin_id):
            store.install(bundle, base_model=base.blake3, base_gguf=models.path(base.blake3))
            say(f"installed {what} ({skin_id[:16]}…)")
    except (SkinError, OSError) as e:
        say(f"{what} is not available: {e}")
        return None
    return skin_id


def install_shipped(say: Callable[[str], None] = lambda line: None) -> dict[str, str]:
    """Install every shipped demo skin that is not installed yet; returns {bundle dir: skin id}
    for those that are installed now."""
    out = {}
    for skin in shipped_skins():
        skin_id = _install(BUNDLES_DIR / skin["dir"], f"demo skin {skin['name']}", say)
        if skin_id is not None:
            out[skin["dir"]] = skin_id
    return out


def install_village_voice(say: Callable[[str], None] = lambda line: None) -> str | None:
    """Install the shipped village voice; its skin id, or None when it is not available."""
    return _install(VILLAGE_BUNDLE, "the village voice", say)


def dress_villagers(state: WorldState,
                    say: Callable[[str], None] = lambda line: None) -> list[WearSkin]:
    """``WearSkin`` commands putting the shipped skins on the villagers named under ``wear``
    (villagers who already wear a skin keep it)."""
    installed = install_shipped(say)
    commands = []
    for skin in shipped_skins():
        npc = state.npc(skin.get("wear", ""))
        if npc is None or npc.skin is not None or skin["dir"] not in installed:
            continue
        commands.append(WearSkin(npc=npc.id, skin=installed[skin["dir"]]))
        say(f"{npc.name} wears the skin {skin['name']}: {skin['description']}")
    return commands
