"""The shipped demo skins on the villagers of a new game (game/village_skins.py, `hearth play`)."""

import json
import os
import shutil

import pytest

from engine.commands import Rejected, WearSkin
from engine.sim import step
from engine.world import new_game
from game import village_skins
from game.village_skins import dress_villagers, shipped_skins
from tests.conftest import hearth


@pytest.fixture
def fresh_home(tmp_path, monkeypatch, hearth_home):
    """A new user's data directory that already holds the default model (the session's, linked
    in, not imported again: importing it is test_store's subject) and no skin."""
    from npc.store import ModelStore
    rec = ModelStore(hearth_home).ensure_default()
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    for name in (f"{rec.blake3}.gguf", f"{rec.blake3}.json"):
        os.link(hearth_home / "models" / name, models / name)
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_every_shipped_skin_has_a_villager():
    state = new_game(seed=1)
    wearers = [s["wear"] for s in shipped_skins()]
    assert len(wearers) >= 3 and len(set(wearers)) == len(wearers)
    assert all(state.npc(w) is not None for w in wearers)


def test_a_new_game_dresses_the_villagers_once(fresh_home):
    from npc.skins.store import SkinStore
    said = []
    state = new_game(seed=1)
    commands = dress_villagers(state, say=said.append)
    skins = {s["wear"]: s for s in shipped_skins()}
    assert {c.npc for c in commands} == set(skins)
    assert sum("installed demo skin" in line for line in said) == len(skins)
    store = SkinStore()
    for c in commands:
        assert isinstance(c, WearSkin) and store.get(c.skin).manifest.name == skins[c.npc]["name"]
    state, events = step(state, commands)
    assert not [e for e in events if isinstance(e, Rejected)]
    assert all(state.npc(npc).skin for npc in skins)
    # Installed already: nothing is installed again, and dressed villagers keep their skins.
    said.clear()
    assert dress_villagers(state, say=said.append) == [] and said == []


def test_a_broken_shipped_bundle_is_reported_and_skipped(tmp_path, monkeypatch, fresh_home):
    bundles = tmp_path / "bundles"
    shutil.copytree(village_skins.BUNDLES_DIR, bundles)
    broken = shipped_skins()[0]
    with open(bundles / broken["dir"] / "adapter.gguf", "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(village_skins, "BUNDLES_DIR", bundles)
    said = []
    commands = dress_villagers(new_game(seed=1), say=said.append)
    assert broken["wear"] not in {c.npc for c in commands}
    assert len(commands) == len(shipped_skins()) - 1
    assert any(f"demo skin {broken['name']} is not available" in line and "adapter.gguf" in line
               for line in said), said


@pytest.mark.model
def test_play_with_the_model_dresses_a_new_game_only(hearth_home, tmp_path):
    save = tmp_path / "game.save"
    r = hearth("play", "--headless", "--voice", "model", "--ticks", "3", "--save", str(save),
               home=hearth_home)
    assert r.returncode == 0, r.stderr
    doc = json.loads(hearth("state", "--save", str(save), "--json", home=hearth_home).stdout)
    worn = {n["id"]: n["skin"] for n in doc["npcs"]}
    for skin in shipped_skins():
        assert worn[skin["wear"]], (skin, worn)
    # Scripted voice, or --no-skins: the villagers keep the base voice.
    for extra in (["--voice", "scripted"], ["--voice", "model", "--no-skins"]):
        plain = tmp_path / f"plain{len(extra)}.save"
        r = hearth("play", "--headless", "--ticks", "3", "--save", str(plain), *extra,
                   home=hearth_home)
        assert r.returncode == 0, r.stderr
        doc = json.loads(hearth("state", "--save", str(plain), "--json", home=hearth_home).stdout)
        assert not any(n["skin"] for n in doc["npcs"]), extra
