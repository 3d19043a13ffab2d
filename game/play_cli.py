"""``hearth play``: the game window, or a headless run (optionally following a script)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from engine.saves import SaveError, load_game, save_game
from engine.state import TICKS_PER_SECOND, WorldState
from engine.world import new_game
from game.cli_error import CliError
from game.notices import note
from game.voices import VoiceError, voice_for_play

DEFAULT_HEADLESS_TICKS = 100 * TICKS_PER_SECOND


def has_display() -> bool:
    driver = os.environ.get("SDL_VIDEODRIVER", "")
    if driver in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or bool(driver)
    return True


def load_or_new(save: Path | None, seed: int, world: Path | None = None) -> WorldState:
    """The game in ``save`` if it exists, else a new one."""
    if save is not None and save.exists():
        return load_game(save)
    return new_game(seed, world)


def cmd_play(args: argparse.Namespace) -> int:
    headless = args.headless
    if not headless and not has_display():
        print("No display found: running a short headless session instead "
              "(open `hearth play` on a desktop to get the window).")
        headless = True
        if args.voice is None:
            args.voice = "auto"  # the demo shows the villagers' real voice when it can load
        if args.script is None:
            from assets import ASSETS_DIR
            args.script = ASSETS_DIR / "demo.script"
    voice = args.voice or ("scripted" if headless else "auto")
    if headless:
        # A headless run touches a save only when given one (--save): never the player's game.
        if args.new_game:
            raise CliError("--new-game is for the window; a headless run starts a new game "
                           "unless --save names an existing one")
        fresh = args.save is None or not args.save.exists()
        state = _load(args.save, args.seed, args.world)
        return _play_headless(args, state, voice, _dress(args, fresh, voice))
    # The window continues the player's game (or the one --save names) and keeps it saved.
    from game.autosave import default_save_path, set_aside
    if args.save is None:
        args.save = default_save_path()
    if args.new_game:
        kept = set_aside(args.save)
        if kept is not None:
            print(f"new game: the previous one is kept as {kept}")
    fresh = not args.save.exists()
    state = _load(args.save, args.seed, args.world)
    if not fresh:
        print(f"continuing {args.save} (day {state.day}, {state.hour:02d}:00); "
              f"`hearth play --new-game` starts over")
    return _play_window(args, state, voice, _dress(args, fresh, voice))


def _dress(args: argparse.Namespace, fresh: bool, voice: str) -> bool:
    """A new game played with the local model dresses the villagers in the shipped skins."""
    return fresh and not args.no_skins and voice != "scripted"


def _load(save: Path | None, seed: int, world: Path | None) -> WorldState:
    try:
        return load_or_new(save, seed, world)
    except SaveError as e:
        raise CliError(str(e)) from None


# ---- the window --------------------------------------------------------------------------------

def _play_window(args: argparse.Namespace, state: WorldState, voice: str, dress: bool) -> int:
    from game.autosave import Autosaver
    from game.client import WindowHooks, run_window
    from game.session import GameSession
    from npc.scripted import ScriptedResponder

    # The window opens at once with the scripted voice; the model loads (and, on first run, is
    # measured) in the background and takes over from the next reply.
    session = GameSession(state, ScriptedResponder(), record=args.record is not None)
    voice_ready = threading.Event()  # set once the model has loaded or failed to
    if voice != "scripted":
        session.voice_label = "scripted lines (the local model is loading)"
        threading.Thread(target=_load_voice, args=(session, voice, dress, voice_ready),
                         name="hearth-voice-loader", daemon=True).start()
    swarm = WindowSwarm(None if args.no_seed else _start_swarm())
    autosaver = Autosaver(args.save)
    autosaver.start(session.state)
    stop = threading.Event()
    restore = _stop_on_signals(stop)

    def new_game() -> str:
        """The in-window "New game": the current game is set aside and a fresh one begins."""
        from game.autosave import set_aside
        try:
            autosaver.save_now(session.state)
            kept = set_aside(args.save)
        except OSError as e:  # the old game could not be kept: keep playing it
            return f"No new game: could not keep this one ({e.strerror or e})"
        fresh = _load(None, args.seed, args.world)
        session.restart(fresh)
        autosaver.start(fresh)
        if voice != "scripted" and not args.no_skins:
            threading.Thread(target=_dress_new_game, args=(session, voice_ready),
                             name="hearth-dress", daemon=True).start()
        return f"New game started; the last one is kept as {kept.name}" if kept else "New game"

    worker = _window_worker(swarm)
    hooks = WindowHooks(stop=stop, autosaver=autosaver, new_game=new_game,
                        settings=_settings_screen(args, swarm, worker), worker=worker)

    def status():
        from dataclasses import replace

        from game.hud import NO_SWARM_NOTE
        from game.swarm_box import SwarmBox
        box = swarm.status() if not args.no_seed else SwarmBox(note=NO_SWARM_NOTE)
        return replace(box, jobs=worker.status()) if worker is not None else box

    try:
        code = run_window(session, swarm_status=status if (worker or not args.no_seed) else None,
                          hooks=hooks)
    finally:
        restore()
        session.close()
        if worker is not None:
            worker.close()
        swarm.close()
        # Whatever ended the window (closing it, Ctrl-C, SIGTERM, an error), the game is kept.
        autosaver.save_now(session.state)
        print(f"saved: {args.save}")
    _finish(args, session.state, session.recorder, saved=True)
    return code


def _stop_on_signals(stop: threading.Event):
    """Ctrl-C and SIGTERM ask the window to close (between ticks, so the save is one consistent
    moment); returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _sig, _frame: stop.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


def _dress_new_game(session, voice_ready: threading.Event) -> None:
    """Dress a new game's villagers in the shipped skins once the model speaks for them."""
    from npc.scripted import ScriptedResponder
    voice_ready.wait()
    if isinstance(session.responder, ScriptedResponder):
        return  # the model did not load: skins would not be heard
    from game.village_skins import dress_villagers
    try:
        for cmd in dress_villagers(session.state, say=lambda line: note(f"hearth: {line}")):
            session.post(cmd)
    except Exception as e:  # the villagers keep their base voice
        note(f"hearth: the demo skins could not be set up: {e}")


def _load_voice(session, voice: str, dress: bool, ready: threading.Event) -> None:
    try:
        responder, dressing = voice_for_play(voice, session.state, dress)
    except VoiceError as e:
        note(f"hearth: {e}; villagers keep their scripted lines.")
        session.voice_label = "scripted lines (the local model failed to load)"
        ready.set()
        return
    for cmd in dressing:
        session.post(cmd)
    session.set_responder(responder)
    ready.set()


def _start_swarm():
    """The swarm node that seeds the local stores while the window is open (None if the swarm
    settings cannot be read; the game runs without it)."""
    from game.window_swarm import GameSwarm
    from swarm.settings import SettingsError, load_settings
    try:
        return GameSwarm(load_settings()).start()
    except SettingsError as e:
        note(f"hearth: the swarm is off: {e}")
        return None


class WindowSwarm:
    """The window's swarm node, restarted (off the game thread) when its settings change."""

    def __init__(self, swarm):
        self._swarm = swarm
        self._lock = threading.Lock()
        self._closed = False
        self._restarting = False

    def node(self):
        """The running swarm node, if any (for announcing in its DHT)."""
        swarm = self._swarm
        return swarm.node if swarm is not None else None

    def status(self):
        from game.swarm_box import SwarmBox
        swarm = self._swarm
        if swarm is not None:
            return swarm.status()
        return SwarmBox(note="restarting" if self._restarting
                        else "off: swarm.toml could not be read")

    def restart(self) -> None:
        def run() -> None:
            with self._lock:
                if self._closed:
                    return  # the window closed before the restart began
                self._restarting = True
                old, self._swarm = self._swarm, None
                if old is not None:
                    old.close()
                self._swarm = _start_swarm()
                self._restarting = False
        threading.Thread(target=run, name="hearth-swarm-restart", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._swarm is not None:
                self._swarm.close()
                self._swarm = None


def _window_worker(swarm: WindowSwarm):
    """The window's worker (serving other people's jobs while the player is away, if they said
    so in worker.toml); None when worker.toml cannot be read (the game runs without it)."""
    from swarm.settings import SettingsError
    from game.window_worker import WindowWorker

    def announce(model_id: str, port: int) -> None:
        from swarm.jobs.discovery import announce as dht_announce
        node = swarm.node()
        if node is not None:
            dht_announce(node, [model_id], port)
    try:
        return WindowWorker(announce=announce, node=swarm.node)
    except SettingsError as e:
        note(f"hearth: serving jobs is off: {e}")
        return None


def _settings_screen(args: argparse.Namespace, swarm: WindowSwarm, worker=None):
    """The settings screen, opened by itself on first run to ask the first-run choices."""
    from game.settings_screen import SettingsScreen
    screen = SettingsScreen.load()
    if not args.no_seed:
        screen.on_saved.append(lambda changed: swarm.restart()
                               if any(f == "swarm.toml" for f, _ in changed) else None)
    if worker is not None:
        screen.on_saved.append(lambda changed: worker.reconfigure()
                               if any(f == "worker.toml" for f, _ in changed) else None)
    if screen.needs_first_run():
        screen.open(first_run=True)
    return screen


# ---- headless ----------------------------------------------------------------------------------

def _play_headless(args: argparse.Namespace, state: WorldState, voice: str, dress: bool) -> int:
    from engine.commands import Rejected
    from engine.sim import step
    from game.headless import Director, load_script, summary

    responder, dressing = voice_for_play(voice, state, dress)
    if dressing:
        state, events = step(state, dressing)
        for e in events:
            if isinstance(e, Rejected):
                note(f"hearth: a demo skin was refused: {e.reason.value}")
    actions = load_script(args.script, state) if args.script else []
    ticks = args.ticks if args.ticks is not None else DEFAULT_HEADLESS_TICKS
    if ticks < 0:
        raise CliError("--ticks must be zero or more")
    director = Director(state, responder, actions, record=args.record is not None)
    target = state.tick + ticks
    print(f"Emberbrook, seed {state.seed}: running {ticks} ticks headless"
          + (f" with script {args.script}" if args.script else ""))
    director.run(target)
    _finish(args, director.state, director.recorder)
    fallbacks = sum(t["fallback"] for t in director.turns)
    print(f"dialogue turns: {len(director.turns)} (fallback lines: {fallbacks}); "
          f"refused commands: {director.rejections}")
    for line in summary(director.state):
        print(line)
    return 0


def _finish(args: argparse.Namespace, state: WorldState, recorder, saved: bool = False) -> None:
    if args.save is not None and not saved:
        save_game(args.save, state)
        print(f"saved: {args.save}")
    if recorder is not None and args.record is not None:
        recorder.save(args.record)
        print(f"recorded: {args.record} ({recorder.finish().ticks} ticks)")


# ---- parser ------------------------------------------------------------------------------------

def add_command(sub) -> None:
    """Register ``play`` on the main parser's subcommands."""
    p = sub.add_parser("play", help="play in a window (or headless with --headless)",
                       description="Open the game window. Arrow keys/WASD walk, E or Space talks to "
                                   "a nearby villager, Enter sends what you typed, Esc ends the "
                                   "conversation, F1 shows help and F2 the settings. The window "
                                   "continues your last game and saves it every game hour and "
                                   "when it closes. With --headless (or when there is no display) "
                                   "the game runs without a window, optionally following a script, "
                                   "and prints what happened and the final state hash.")
    p.add_argument("--headless", action="store_true", help="run without a window")
    p.add_argument("--seed", type=int, default=1, help="world seed for a new game (default 1)")
    p.add_argument("--ticks", type=int, default=None,
                   help=f"headless: ticks to run, {TICKS_PER_SECOND} per game second "
                        f"(default {DEFAULT_HEADLESS_TICKS})")
    p.add_argument("--script", type=Path, default=None,
                   help="headless: a script of player actions (see assets/demo.script)")
    p.add_argument("--record", type=Path, default=None, metavar="LOG",
                   help="record every tick's inputs and state hash to LOG for `hearth replay`")
    p.add_argument("--save", type=Path, default=None, metavar="FILE",
                   help="load this save if it exists, and write the game to it at the end. The "
                        "window continues and autosaves your game in the data directory "
                        "(saves/current.save) when this is not given; a headless run writes a "
                        "save only when it is given")
    p.add_argument("--new-game", action="store_true",
                   help="window: start a new game instead of continuing the last one (the last "
                        "one is moved to saves/backups/, never deleted)")
    p.add_argument("--world", type=Path, default=None, help="world data file (default: Emberbrook)")
    p.add_argument("--voice", default=None, choices=["auto", "model", "scripted"],
                   help="who speaks for the villagers: the local language model, the scripted "
                        "lines, or auto (the model if it loads; default for the window). Headless "
                        "runs default to scripted, which is instant and reproducible")
    p.add_argument("--no-skins", action="store_true",
                   help="a new game's villagers keep the base model's voice instead of wearing "
                        "the demo skins Hearth ships (a loaded save keeps what it has)")
    p.add_argument("--no-seed", action="store_true",
                   help="window: do not start the swarm node (no seeding of your models and "
                        "skins while you play)")
    p.set_defaults(func=cmd_play)
