"""Saves round-trip, reject bad files clearly, and survive a kill mid-write."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from engine.hashing import state_hash
from engine.saves import SAVE_VERSION, SaveError, encode_save, load_game, save_game
from engine.sim import step
from engine.world import new_game
from tests.conftest import hearth

ROOT = Path(__file__).resolve().parent.parent


def test_round_trip(tmp_path, world):
    for _ in range(500):
        step(world, [])
    path = tmp_path / "slot.save"
    save_game(path, world)
    back = load_game(path)
    assert state_hash(back) == state_hash(world)
    # and it keeps simulating identically
    for _ in range(200):
        step(back, [])
        step(world, [])
    assert state_hash(back) == state_hash(world)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b"", "empty"),
    (lambda b: b[: len(b) // 2], "corrupt"),
    (lambda b: b"garbage" * 10, "not a Hearth save"),
    (lambda b: b.replace(b"Bram", b"Brom"), "hash"),
])
def test_bad_files_give_clear_errors(tmp_path, world, mutate, message):
    path = tmp_path / "bad.save"
    path.write_bytes(mutate(encode_save(world)))
    with pytest.raises(SaveError, match=message):
        load_game(path)


def test_future_version_is_refused_by_name(tmp_path, world):
    raw = msgspec.msgpack.decode(encode_save(world))
    raw["version"] = SAVE_VERSION + 1
    path = tmp_path / "future.save"
    path.write_bytes(msgspec.msgpack.encode(raw))
    with pytest.raises(SaveError, match="newer than this Hearth"):
        load_game(path)


def test_other_format_is_refused(tmp_path, world):
    raw = msgspec.msgpack.decode(encode_save(world))
    raw["format"] = "something-else"
    path = tmp_path / "other.save"
    path.write_bytes(msgspec.msgpack.encode(raw))
    with pytest.raises(SaveError, match="not a Hearth save"):
        load_game(path)


WRITER = """
import sys
from engine.world import new_game
from tests.conftest import hearth
from engine.saves import save_game
from engine.sim import step
s = new_game(1)
# A fat state makes each write long enough to be killed in the middle of it.
s.npcs[0].facts.extend(["x" * 4000] * 2000)
print("ready", flush=True)
while True:
    step(s, [])
    save_game(sys.argv[1], s)
"""


@pytest.mark.slow
def test_killed_mid_save_leaves_a_loadable_save(tmp_path, world):
    path = tmp_path / "slot.save"
    save_game(path, world)
    good = state_hash(world)
    for attempt in range(5):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.17 * attempt)
        p.send_signal(signal.SIGKILL)
        p.wait()
        state = load_game(path)  # never torn: the old save or a complete new one
        assert state_hash(state) == good or state.tick > 0
    leftovers = [f for f in tmp_path.iterdir() if f.name != "slot.save"]
    # temp files of killed writers may remain, but they never replace the save
    assert all(f.name.startswith(".slot.save.") for f in leftovers)


def test_cli_state_on_corrupt_save_fails_cleanly(tmp_path):
    path = tmp_path / "c.save"
    path.write_bytes(b"\x93\x01\x02")
    r = hearth("state", "--save", path, "--json", home=tmp_path / "home")
    assert r.returncode == 2
    assert "hearth: error:" in r.stderr and str(path) in r.stderr
    assert path.read_bytes() == b"\x93\x01\x02"  # untouched
