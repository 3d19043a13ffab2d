"""First-run choices, the settings screen (F2), the help overlay (F1) and `hearth settings`: one
list of entries, written to the same config files the command line and the swarm node read."""

from __future__ import annotations

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402
import pytest  # noqa: E402

from engine.world import new_game  # noqa: E402
from game import client  # noqa: E402
from game.client import WindowHooks  # noqa: E402
from game.config_files import read_config, write_config  # noqa: E402
from game.render import make_ui, play_rect, window_size  # noqa: E402
from game.session import GameSession  # noqa: E402
from game.settings_entries import ENTRIES, RATE_STEPS, SETTINGS_FILES, entry  # noqa: E402
from game.settings_screen import NEW_GAME, SettingsScreen  # noqa: E402
from npc.scripted import ScriptedResponder  # noqa: E402
from swarm.settings import PUBLIC_DHT_ROUTERS, load_settings  # noqa: E402
from tests.conftest import hearth  # noqa: E402


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A private, empty config directory, as on a fresh install."""
    monkeypatch.setenv("HEARTH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def key(k: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="")


def test_every_entry_names_a_known_file_a_unique_key_and_a_valid_default(config):
    assert len({e.key for e in ENTRIES}) == len(ENTRIES)
    for e in ENTRIES:
        assert e.file in SETTINGS_FILES and e.help and e.label
        SETTINGS_FILES[e.file].check({e.key: e.default})


def test_fresh_install_asks_first_and_joins_no_public_router(config):
    screen = SettingsScreen.load()
    assert screen.needs_first_run()
    assert load_settings().bootstrap == []  # nothing public until the player agrees
    screen.open(first_run=True)
    assert screen.handle_key(pygame.K_ESCAPE) == "closed"  # "not now"
    assert read_config("swarm.toml") == {"public_dht": False}  # the answer is recorded...
    assert not SettingsScreen.load().needs_first_run()  # ...so it is not asked again
    assert load_settings().bootstrap == []


def test_agreeing_adds_the_public_routers_and_limits_reach_the_swarm(config):
    screen = SettingsScreen.load()
    saved = []
    screen.on_saved.append(saved.append)
    screen.open(first_run=True)
    assert ENTRIES[screen.selected].key == "public_dht"
    screen.handle_key(pygame.K_RETURN)  # on
    screen.handle_key(pygame.K_DOWN)
    screen.handle_key(pygame.K_DOWN)  # upload limit
    for _ in range(4):
        screen.handle_key(pygame.K_RIGHT)
    screen.handle_key(pygame.K_DOWN)  # download limit
    screen.handle_key(pygame.K_RIGHT)
    screen.handle_key(pygame.K_LEFT)
    screen.handle_key(pygame.K_LEFT)  # cannot go below unlimited
    assert screen.handle_key(pygame.K_F2) == "closed" and not screen.is_open
    s = load_settings()
    assert s.public_dht and list(PUBLIC_DHT_ROUTERS) == s.bootstrap
    assert s.upload_limit == RATE_STEPS[4] and s.download_limit == 0
    # The first-run question about serving jobs was shown and left at no: that answer is kept.
    assert saved == [[("swarm.toml", "public_dht"), ("swarm.toml", "upload_limit"),
                      ("worker.toml", "serve")]]
    from game.window_worker import player_agreed
    assert not player_agreed()


def test_keys_the_screen_does_not_show_are_kept(config):
    write_config("swarm.toml", {"listen": "127.0.0.1:0", "bootstrap": ["127.0.0.1:7000"]})
    screen = SettingsScreen.load()
    screen.open()
    screen.handle_key(pygame.K_DOWN)
    screen.handle_key(pygame.K_RETURN)  # seeding off
    screen.handle_key(pygame.K_ESCAPE)
    s = load_settings()
    assert not s.seeding and s.listen == "127.0.0.1:0" and s.bootstrap == ["127.0.0.1:7000"]


def test_a_bad_hand_edited_file_is_named_and_left_alone(config):
    config.mkdir(parents=True)
    write_config("worker.toml", {"serve": False})  # answered: only swarm.toml is in question
    (config / "swarm.toml").write_text('listen = "nowhere"\n')
    screen = SettingsScreen.load()
    screen.open()
    screen.handle_key(pygame.K_RETURN)
    assert screen.handle_key(pygame.K_ESCAPE) == "closed"  # never traps the player...
    assert screen.message_is_error and "swarm.toml not saved" in screen.message  # ...says why
    assert screen.values["public_dht"] is False  # and shows what the file holds
    assert (config / "swarm.toml").read_text() == 'listen = "nowhere"\n'
    (config / "swarm.toml").write_text("listen = [\n")
    broken = SettingsScreen.load()
    assert broken.message_is_error and "swarm.toml" in broken.message
    assert not broken.needs_first_run()  # no welcome over a file that cannot be read
    broken.open()
    broken.handle_key(pygame.K_RETURN)
    assert broken.handle_key(pygame.K_ESCAPE) == "closed" and broken.message_is_error
    assert (config / "swarm.toml").read_text() == "listen = [\n"  # never rewritten


def test_new_game_asks_before_starting_over(config):
    screen = SettingsScreen.load()
    screen.open()
    screen.selected = screen.rows.index(NEW_GAME)
    screen.handle_key(pygame.K_RETURN)
    assert screen.confirming_new_game
    assert screen.handle_key(pygame.K_n) is None and screen.is_open  # anything but Y keeps playing
    screen.handle_key(pygame.K_RETURN)
    assert screen.handle_key(pygame.K_y) == "new_game" and not screen.is_open


def test_window_keys_open_help_and_settings_and_start_a_new_game(config, tmp_path):
    pygame.font.init()
    session = GameSession(new_game(seed=2), ScriptedResponder())
    try:
        for _ in range(30):
            session.tick()
        ui = make_ui(session.state)
        started = []

        def start_over() -> str:
            session.restart(new_game(seed=3))
            started.append(True)
            return "New game"
        hooks = WindowHooks(new_game=start_over, settings=SettingsScreen.load())
        handle = client._handle_overlay_event
        assert handle(key(pygame.K_F1), session, ui, hooks) and ui.help_open
        assert handle(key(pygame.K_UP), session, ui, hooks)  # no walking under the overlay
        assert handle(key(pygame.K_ESCAPE), session, ui, hooks) and not ui.help_open
        assert not handle(key(pygame.K_UP), session, ui, hooks)  # the world has the keys again
        assert handle(key(pygame.K_F2), session, ui, hooks) and hooks.settings.is_open
        hooks.settings.selected = hooks.settings.rows.index(NEW_GAME)
        handle(key(pygame.K_RETURN), session, ui, hooks)
        handle(key(pygame.K_y), session, ui, hooks)
        assert started and session.state.seed == 3 and session.state.tick == 0
        assert ui.notice.text == "New game"
        surface = pygame.Surface(window_size(session.state))
        ui.help_open = True
        client.draw_help(surface, play_rect(session.state))
        hooks.settings.open(first_run=True)
        hooks.settings.draw(surface, play_rect(session.state))
    finally:
        session.close()


@pytest.mark.slow
def test_settings_from_the_command_line(tmp_path):
    home = tmp_path / "home"
    r = hearth("settings", "set", "upload_limit", "512K", home=home)
    assert r.returncode == 0, r.stderr
    assert read_config_at(home / "config" / "swarm.toml") == {"upload_limit": 512 << 10}
    r = hearth("settings", "set", "public_dht", "maybe", home=home)
    assert r.returncode == 2 and "on or off" in r.stderr
    r = hearth("settings", "set", "colour", "blue", home=home)
    assert r.returncode == 2 and "no setting 'colour'" in r.stderr
    r = hearth("settings", "list", home=home)
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "512 KiB/s" in lines["upload_limit"] and "(swarm.toml)" in lines["upload_limit"]
    assert "off" in lines["public_dht"] and "(default)" in lines["public_dht"]
    assert entry("public_dht").first_run


def read_config_at(path):
    import tomllib
    return tomllib.loads(path.read_text())


def test_saved_swarm_settings_restart_the_windows_node(config):
    """The window's node picks up new limits without a restart of the game (127.0.0.1 only)."""
    import time

    from game.play_cli import WindowSwarm, _start_swarm
    write_config("swarm.toml", {"listen": "127.0.0.1:0", "loopback": True, "public_dht": False})
    swarm = WindowSwarm(_start_swarm())
    try:
        assert swarm._swarm.settings.upload_limit == 0
        screen = SettingsScreen.load()
        screen.on_saved.append(lambda changed: swarm.restart())
        screen.open()
        screen.selected = ENTRIES.index(entry("upload_limit"))
        screen.handle_key(pygame.K_RIGHT)
        screen.handle_key(pygame.K_ESCAPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current = swarm._swarm
            if current is not None and current.settings.upload_limit == RATE_STEPS[1]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the node was not restarted with the new upload limit")
        assert swarm.status() is not None and current.settings.bootstrap == []
    finally:
        swarm.close()


def test_serving_jobs_is_asked_on_first_run_and_set_like_any_other_setting(config, capsys):
    """worker.toml joins the screen through its file check and entries alone."""
    from game.cli import main
    from game.window_worker import player_agreed
    write_config("swarm.toml", {"public_dht": False})
    screen = SettingsScreen.load()
    assert screen.needs_first_run()  # serving while away has not been asked yet
    screen.open(first_run=True)
    screen.selected = next(i for i, e in enumerate(ENTRIES) if e.key == "serve")
    screen.handle_key(pygame.K_RETURN)  # yes
    screen.selected = next(i for i, e in enumerate(ENTRIES) if e.key == "idle_seconds")
    screen.handle_key(pygame.K_RIGHT)
    screen.selected = next(i for i, e in enumerate(ENTRIES) if e.key == "cpu_cap_percent")
    for _ in range(3):
        screen.handle_key(pygame.K_RIGHT)
    assert screen.handle_key(pygame.K_ESCAPE) == "closed"
    assert read_config("worker.toml") == {"serve": True, "idle_seconds": 240,
                                          "cpu_cap_percent": 40}
    assert read_config("swarm.toml") == {"public_dht": False}
    assert player_agreed()
    assert main(["settings", "set", "cpu_cap_percent", "50"]) == 0
    assert read_config("worker.toml")["cpu_cap_percent"] == 50
    assert main(["settings", "set", "idle_seconds", "5000"]) == 2
    assert "between 60 and 1800" in capsys.readouterr().err
    assert read_config("worker.toml")["idle_seconds"] == 240  # a refused value changes nothing