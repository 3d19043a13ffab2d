"""The command line forms later work relies on."""

import functools
import json
from pathlib import Path

import pytest

from tests.conftest import command_parsers, hearth, help_names

ROOT = Path(__file__).resolve().parent.parent


#: Names each command's help must show whatever else the parser grows: its real subcommands and
#: options (the full list is read from the parser itself).
HELP_NAMES = {
    (): {"play", "replay", "talk", "model", "state", "id", "skin", "seed", "fetch", "settings"},
    ("play",): {"--headless", "--seed", "--ticks", "--script", "--record", "--save", "--world",
                "--voice", "--no-skins", "--no-seed", "--new-game"},
    ("settings",): {"list", "set"},
    ("settings", "set"): {"KEY", "VALUE"},
    ("replay",): {"LOG"},
    ("talk",): {"--save", "--npc", "--seed", "--json", "--voice", "words"},
    ("model",): {"add", "list", "tune", "fetch"},
    ("model", "fetch"): {"MAGNET", "--peer", "--timeout", "--listen", "--loopback"},
    ("state",): {"--save", "--seed", "--json"},
    ("seed",): {"PATH_OR_ID", "--duration", "--listen", "--bootstrap", "--upload-limit"},
    ("fetch",): {"MAGNET", "--out", "--peer"},
    ("id",): {"--json"},
    ("skin",): {"install", "list", "verify", "wear", "lineage", "train", "publish", "browse"},
    ("skin", "install"): {"PATH_OR_MAGNET", "--peer", "--timeout"},
    ("skin", "list"): {"--json"},
    ("skin", "verify"): {"PATH_OR_ID"},
    ("skin", "wear"): {"NPC_ID", "SKIN_ID", "--save", "--seed"},
    ("skin", "lineage"): {"ID", "--json"},
    ("skin", "train"): {"--data", "--name", "--out", "--base", "--parent", "--from-scratch",
                        "--royalty", "--steps", "--rank", "--description", "--license"},
    ("skin", "publish"): {"SKIN_ID"},
    ("skin", "browse"): {"CREATOR_KEY", "--json"},
}


@functools.cache
def _commands():
    """Every command's parser, built once (the tests only read them)."""
    from game.cli import build_parser
    return dict(command_parsers(build_parser()))


@pytest.mark.parametrize("path", list(_commands()), ids=lambda p: " ".join(("hearth", *p)))
def test_help_names_every_option_and_subcommand(path, capsys):
    from game.cli import main
    parser = _commands()[path]
    assert HELP_NAMES.get(path, set()) <= help_names(parser)
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: {' '.join(('hearth', *path))} ")
    missing = sorted(n for n in help_names(parser) if n not in out)
    assert not missing, f"`{' '.join(('hearth', *path))} --help` does not name {missing}"


@pytest.mark.slow
def test_help_from_the_command_line(tmp_path):
    r = hearth("--help", home=tmp_path / "home")
    assert r.returncode == 0 and r.stdout.startswith("usage: hearth ")
    assert HELP_NAMES[()] <= set(r.stdout.replace(",", " ").split())


@pytest.mark.slow
def test_headless_play_prints_hash_last_and_narrates(tmp_path):
    r = hearth("play", "--headless", "--seed", "3", "--ticks", "6000",
               "--script", str(ROOT / "assets" / "demo.script"), home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("state-hash: ") and len(lines[-1]) == len("state-hash: ") + 64
    out = r.stdout
    assert "You -> Maren:" in out and "Maren:" in out  # who said what
    assert "You walked from" in out  # where the player went
    assert "Quest complete: The Silent Bell" in out


@pytest.mark.model
@pytest.mark.slow
def test_play_without_display_falls_back_to_headless_demo(hearth_home):
    # The demo uses the villagers' real voice: the default model, imported and tuned in this home.
    # 300 ticks take the demo script through its first exchange (Maren, at about tick 250): one
    # model turn is what this test reads; the whole quest with the model voice is
    # tests/test_dialogue_quality.py's.
    r = hearth("play", "--ticks", "300", home=hearth_home)
    assert r.returncode == 0, r.stderr
    assert "No display found" in r.stdout
    assert "You -> Maren:" in r.stdout and "Maren:" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("state-hash: ")


@pytest.mark.model
@pytest.mark.slow
def test_talk_json_through_the_model(hearth_home, tmp_path):
    save = tmp_path / "talk.save"
    r = hearth("talk", "--save", str(save), "--npc", "tobin", "--json",
               "I want to buy an iron ingot.", home=hearth_home)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"npc", "say", "action", "accepted", "attempts", "fallback", "latency_s"} <= set(doc)
    assert doc["npc"] == "tobin" and doc["say"] and doc["attempts"] >= 1 and doc["voice"] == "model"
    assert doc["action"] is None or doc["action"] == {"type": "sell", "item": "iron_ingot", "price": 12}
    state = json.loads(hearth("state", "--save", str(save), "--json", home=hearth_home).stdout)
    tobin = next(n for n in state["npcs"] if n["id"] == "tobin")
    bought = doc["action"] is not None and doc["accepted"]
    assert state["player"]["inventory"].get("iron_ingot", 0) == (1 if bought else 0)
    assert tobin["inventory"]["iron_ingot"] == (4 if bought else 5)
    assert state["player"]["gold"] == (18 if bought else 30)
    r = hearth("talk", "--save", str(save), "--npc", "nobody", "hi", home=hearth_home)
    assert r.returncode == 2 and "unknown npc 'nobody'" in r.stderr


@pytest.mark.slow
def test_bad_script_is_named(tmp_path):
    script = tmp_path / "bad.script"
    script.write_text("goto maren\nfly away\n")
    r = hearth("play", "--headless", "--ticks", "10", "--script", str(script),
               home=tmp_path / "home")
    assert r.returncode == 2 and "line 2" in r.stderr and "unknown action 'fly'" in r.stderr
    script.write_text("buy tobin moonstone\n")
    r = hearth("play", "--headless", "--ticks", "10", "--script", str(script),
               home=tmp_path / "home")
    assert r.returncode == 2 and "unknown item 'moonstone'" in r.stderr


@pytest.mark.slow
def test_state_json_and_save_round_trip(tmp_path):
    save = tmp_path / "g.save"
    home = tmp_path / "home"
    r = hearth("state", "--save", str(save), "--seed", "5", "--json", home=home)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tick"] == 0 and doc["player"]["gold"] == 30 and doc["player"]["inventory"] == {}
    assert {n["id"] for n in doc["npcs"]} == {"bram", "hilda", "maren", "tobin"}
    assert all({"id", "name", "gold", "inventory", "skin"} <= set(n) for n in doc["npcs"])
    assert doc["quest"]["id"] == "silent_bell" and save.exists()
    r = hearth("play", "--headless", "--ticks", "300", "--save", str(save), home=home)
    assert r.returncode == 0, r.stderr
    doc2 = json.loads(hearth("state", "--save", str(save), "--json", home=home).stdout)
    assert doc2["tick"] == 300
