"""The command line forms later work relies on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hearth(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "game.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "SDL_VIDEODRIVER": "dummy"})


@pytest.mark.parametrize("sub", [[], ["play"], ["replay"], ["state"]])
def test_help_explains(sub):
    r = hearth(*sub, "--help")
    assert r.returncode == 0 and "usage: hearth" in r.stdout and len(r.stdout) > 200


def test_headless_play_prints_hash_last_and_narrates(tmp_path):
    r = hearth("play", "--headless", "--seed", "3", "--ticks", "6000",
               "--script", str(ROOT / "assets" / "demo.script"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("state-hash: ") and len(lines[-1]) == len("state-hash: ") + 64
    out = r.stdout
    assert "You -> Maren:" in out and "Maren:" in out  # who said what
    assert "You walked from" in out  # where the player went
    assert "Quest complete: The Silent Bell" in out


def test_play_without_display_falls_back_to_headless_demo():
    r = hearth("play", "--ticks", "600")
    assert r.returncode == 0, r.stderr
    assert "No display found" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("state-hash: ")


def test_bad_script_is_named(tmp_path):
    script = tmp_path / "bad.script"
    script.write_text("goto maren\nfly away\n")
    r = hearth("play", "--headless", "--ticks", "10", "--script", str(script))
    assert r.returncode == 2 and "line 2" in r.stderr and "unknown action 'fly'" in r.stderr
    script.write_text("buy tobin moonstone\n")
    r = hearth("play", "--headless", "--ticks", "10", "--script", str(script))
    assert r.returncode == 2 and "unknown item 'moonstone'" in r.stderr


def test_state_json_and_save_round_trip(tmp_path):
    save = tmp_path / "g.save"
    r = hearth("state", "--save", str(save), "--seed", "5", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tick"] == 0 and doc["player"]["gold"] == 30 and doc["player"]["inventory"] == {}
    assert {n["id"] for n in doc["npcs"]} == {"bram", "hilda", "maren", "tobin"}
    assert all({"id", "name", "gold", "inventory", "skin"} <= set(n) for n in doc["npcs"])
    assert doc["quest"]["id"] == "silent_bell" and save.exists()
    r = hearth("play", "--headless", "--ticks", "300", "--save", str(save))
    assert r.returncode == 0, r.stderr
    doc2 = json.loads(hearth("state", "--save", str(save), "--json").stdout)
    assert doc2["tick"] == 300
