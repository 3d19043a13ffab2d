"""``hearth play``: the game window, or a headless run (optionally following a script)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from engine.saves import load_game, save_game
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
    fresh = args.save is None or not args.save.exists()
    state = load_or_new(args.save, args.seed, args.world)
    voice = args.voice or ("scripted" if headless else "auto")
    # A new game played with the local model dresses the villagers in the shipped skins.
    dress = fresh and not args.no_skins and voice != "scripted"
    if headless:
        return _play_headless(args, state, voice, dress)
    return _play_window(args, state, voice, dress)


# ---- the window --------------------------------------------------------------------------------

def _play_window(args: argparse.Namespace, state: WorldState, voice: str, dress: bool) -> int:
    from game.client import run_window
    from game.session import GameSession
    from npc.scripted import ScriptedResponder

    # The window opens at once with the scripted voice; the model loads (and, on first run, is
    # measured) in the background and takes over from the next reply.
    session = GameSession(state, ScriptedResponder(), record=args.record is not None)
    if voice != "scripted":
        session.voice_label = "scripted lines (the local model is loading)"
        threading.Thread(target=_load_voice, args=(session, voice, dress),
                         name="hearth-voice-loader", daemon=True).start()
    swarm = None if args.no_seed else _start_swarm()
    try:
        code = run_window(session, swarm_status=swarm.status if swarm else None)
    finally:
        session.close()
        if swarm is not None:
            swarm.close()
    _finish(args, session.state, session.recorder)
    return code


def _load_voice(session, voice: str, dress: bool) -> None:
    try:
        responder, dressing = voice_for_play(voice, session.state, dress)
    except VoiceError as e:
        note(f"hearth: {e}; villagers keep their scripted lines.")
        session.voice_label = "scripted lines (the local model failed to load)"
        return
    for cmd in dressing:
        session.post(cmd)
    session.set_responder(responder)


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


def _finish(args: argparse.Namespace, state: WorldState, recorder) -> None:
    if args.save is not None:
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
                                   "conversation. With --headless (or when there is no display) "
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
                   help="load this save if it exists, and write the game to it at the end")
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
