"""The window keeps the player's game: autosave every game hour and on exit (closing, SIGTERM,
Ctrl-C), `hearth play` continues it, "New game" keeps the old one as a backup, old saves load or
are refused with advice, and headless runs never touch it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from engine import saves
from engine.hashing import state_hash
from engine.saves import SAVE_VERSION, SaveError, encode_save, load_game
from engine.sim import step
from engine.state import TICKS_PER_HOUR
from engine.world import new_game
from game.autosave import Autosaver, default_save_path, set_aside
from tests.conftest import hearth, sealed_env

ROOT = Path(__file__).resolve().parent.parent


# ---- the autosaver ------------------------------------------------------------------------------

def test_saves_once_per_game_hour_and_on_demand(tmp_path):
    state = new_game(seed=3)
    path = tmp_path / "saves" / "current.save"
    saver = Autosaver(path)
    saver.start(state)
    started = 0
    for _ in range(2 * TICKS_PER_HOUR + 10):
        state, _ = step(state, [])
        if saver.save_if_due(state):
            started += 1
            saver._writer.join()  # the disk keeps up here; a busy writer defers the next save
    assert started == 2 and len(saver.saved_ticks) == 2
    assert all(t % TICKS_PER_HOUR == 0 for t in saver.saved_ticks)  # each at an hour boundary
    assert load_game(path).tick == saver.saved_ticks[-1]
    saver.save_now(state)
    assert state_hash(load_game(path)) == state_hash(state)
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind


def test_a_failed_write_is_reported_and_the_game_goes_on(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    saver = Autosaver(blocker / "current.save", every_ticks=1)
    state = new_game(seed=1)
    saver.start(state)
    state, _ = step(state, [])
    assert saver.save_if_due(state)
    saver._writer.join()
    assert saver.error and "could not save" in saver.error


def test_set_aside_keeps_every_backup(tmp_path):
    path = tmp_path / "current.save"
    assert set_aside(path) is None
    kept = []
    for seed in (1, 2, 3):
        saves.save_game(path, new_game(seed=seed))
        kept.append(set_aside(path))
        assert not path.exists()
    assert len(set(kept)) == 3 and all(k.parent.name == "backups" for k in kept)
    assert [load_game(k).seed for k in kept] == [1, 2, 3]


# ---- old versions -------------------------------------------------------------------------------

def _rewrite_version(path: Path, version: int) -> None:
    raw = msgspec.msgpack.decode(path.read_bytes())
    raw["version"] = version
    path.write_bytes(msgspec.msgpack.encode(raw))


def test_older_save_is_upgraded_when_a_step_exists(tmp_path, monkeypatch):
    path = tmp_path / "old.save"
    state = new_game(seed=4)
    saves.save_game(path, state)
    # Pretend this Hearth reads version SAVE_VERSION + 1 and knows how to upgrade the old world.
    seen = []

    def upgrade(raw: dict) -> dict:
        seen.append(raw["tick"])
        raw["world_name"] = "Upgraded"
        return raw
    monkeypatch.setattr(saves, "SAVE_VERSION", SAVE_VERSION + 1)
    monkeypatch.setattr(saves, "UPGRADES", {SAVE_VERSION: upgrade})
    back = load_game(path)
    assert seen == [0] and back.world_name == "Upgraded" and back.seed == 4


def test_older_save_without_an_upgrade_is_refused_with_advice(tmp_path, monkeypatch):
    path = tmp_path / "old.save"
    saves.save_game(path, new_game(seed=4))
    before = path.read_bytes()
    monkeypatch.setattr(saves, "SAVE_VERSION", SAVE_VERSION + 1)
    monkeypatch.setattr(saves, "UPGRADES", {})
    with pytest.raises(SaveError, match="older Hearth") as e:
        load_game(path)
    assert "hearth play --new-game" in str(e.value) and "backup" in str(e.value)
    assert path.read_bytes() == before  # refused, never touched


def test_a_world_that_no_longer_fits_is_refused_with_advice(tmp_path):
    path = tmp_path / "odd.save"
    raw = msgspec.msgpack.decode(encode_save(new_game(seed=1)))
    del raw["state"]["player"]
    import blake3
    raw["state_hash"] = blake3.blake3(
        msgspec.msgpack.Encoder(order="sorted").encode(raw["state"])).hexdigest()
    path.write_bytes(msgspec.msgpack.encode(raw))
    with pytest.raises(SaveError, match="does not fit") as e:
        load_game(path)
    assert "--new-game" in str(e.value)


# ---- the window's lifecycle, through `hearth play` ---------------------------------------------

#: `hearth play` as on a desktop (the dummy video driver stands in for the display), asked to stop
#: by a real signal once the window has run for a while.
WINDOW = """
import os, signal, sys, threading, time
import game.play_cli as play_cli
play_cli.has_display = lambda: True
from game.cli import main
sig = getattr(signal, sys.argv[1])
def later():
    time.sleep(float(sys.argv[2]))
    os.kill(os.getpid(), sig)
threading.Thread(target=later, daemon=True).start()
sys.exit(main(["play", "--voice", "scripted", "--no-seed", *sys.argv[3:]]))
"""


def _window(home: Path, sig: str, seconds: float, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WINDOW, sig, str(seconds), *extra], cwd=ROOT,
                          env=sealed_env(home), capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_window_saves_on_signals_continues_and_starts_over(tmp_path):
    home = tmp_path / "home"
    save = home / "saves" / "current.save"
    r = _window(home, "SIGTERM", 2.0)
    assert r.returncode == 0, r.stderr
    assert f"saved: {save}" in r.stdout
    first = load_game(save).tick
    assert first > 0

    r = _window(home, "SIGINT", 2.0)  # Ctrl-C
    assert r.returncode == 0, r.stderr
    assert "continuing" in r.stdout
    second = load_game(save).tick
    assert second > first  # the same game, played on

    r = _window(home, "SIGTERM", 1.0, "--new-game")
    assert r.returncode == 0, r.stderr
    backups = list((home / "saves" / "backups").iterdir())
    assert len(backups) == 1 and load_game(backups[0]).tick == second
    assert load_game(save).tick < second


@pytest.mark.slow
def test_window_names_what_to_do_with_a_save_it_cannot_read(tmp_path):
    home = tmp_path / "home"
    save = home / "saves" / "current.save"
    saves.save_game(save, new_game(seed=1))
    _rewrite_version(save, SAVE_VERSION + 1)
    r = _window(home, "SIGTERM", 30.0)
    assert r.returncode == 2
    assert "newer than this Hearth" in r.stderr and save.exists()


@pytest.mark.slow
def test_headless_runs_leave_the_players_save_alone(tmp_path):
    home = tmp_path / "home"
    r = hearth("play", "--headless", "--ticks", "30", home=home)
    assert r.returncode == 0, r.stderr
    assert not (home / "saves").exists()
    r = hearth("play", "--headless", "--new-game", "--ticks", "3", home=home)
    assert r.returncode == 2 and "--new-game is for the window" in r.stderr


def test_default_save_lives_in_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    assert default_save_path() == tmp_path / "saves" / "current.save"


#: `hearth play` with keys posted to SDL's event queue (the dummy driver has no keyboard): open
#: the settings screen, pick "New game", confirm, then close the window with SIGTERM.
NEW_GAME_KEYS = """
import os, signal, sys, threading, time
import pygame
import game.play_cli as play_cli
play_cli.has_display = lambda: True
from game.cli import main
def later():
    time.sleep(3.0)
    for key in (pygame.K_ESCAPE, pygame.K_F2, pygame.K_UP, pygame.K_RETURN, pygame.K_y):
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode=""))
        time.sleep(0.3)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=later, daemon=True).start()
sys.exit(main(["play", "--voice", "scripted", "--no-seed"]))
"""


@pytest.mark.slow
def test_new_game_in_the_window_keeps_the_last_one(tmp_path):
    home = tmp_path / "home"
    save = home / "saves" / "current.save"
    played = new_game(seed=1)
    for _ in range(3 * TICKS_PER_HOUR):
        played, _ = step(played, [])
    saves.save_game(save, played)
    r = subprocess.run([sys.executable, "-c", NEW_GAME_KEYS], cwd=ROOT, env=sealed_env(home),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    backups = list((home / "saves" / "backups").iterdir())
    assert len(backups) == 1
    kept = load_game(backups[0])
    assert kept.tick > played.tick  # the continued game, as it was when New game was chosen
    assert load_game(save).tick < TICKS_PER_HOUR  # the new one, a few seconds old
