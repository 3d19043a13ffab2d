"""The ``hearth`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.replay import LogError, load_log, replay
from engine.saves import SaveError, load_game, save_game
from engine.state import TICKS_PER_SECOND, WorldState
from engine.world import WorldDataError, new_game
from game.headless import ScriptError
from game.skin_cli import add_commands as add_skin_commands
from game.swarm_cli import add_commands as add_swarm_commands
from game.swarm_cli import add_model_fetch
from npc.skins.manifest import SkinError

DEFAULT_HEADLESS_TICKS = 100 * TICKS_PER_SECOND


class CliError(Exception):
    pass


def _fail(msg: str, code: int = 2) -> int:
    print(f"hearth: error: {msg}", file=sys.stderr)
    return code


def has_display() -> bool:
    driver = os.environ.get("SDL_VIDEODRIVER", "")
    if driver in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or bool(driver)
    return True


def load_or_new(save: Path | None, seed: int, world: Path | None = None) -> WorldState:
    if save is not None and save.exists():
        return load_game(save)
    return new_game(seed, world)


def make_responder(voice: str):
    from game.voices import VoiceError, load_voice
    try:
        return load_voice(voice, say=lambda line: print(line, file=sys.stderr))
    except VoiceError as e:
        raise CliError(str(e)) from None


# ---- play --------------------------------------------------------------------------------------

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
        responder = make_responder(voice)
        if dress and _speaks_with_model(responder):
            state = _dress(state)
        return _play_headless(args, state, responder)
    from game.client import run_window
    from game.session import GameSession
    from npc.scripted import ScriptedResponder

    # The window opens at once with the scripted voice; the model loads (and, on first run, is
    # measured) in the background and takes over from the next reply.
    session = GameSession(state, ScriptedResponder(), record=args.record is not None)
    if voice != "scripted":
        session.voice_label = "scripted lines (the local model is loading)"
        _load_voice_in_background(session, voice, dress=dress)
    swarm = None if args.no_seed else _start_swarm()
    try:
        code = run_window(session, swarm_status=swarm.status if swarm else None)
    finally:
        session.close()
        if swarm is not None:
            swarm.close()
    _finish(args, session.state, session.recorder)
    return code


def _start_swarm():
    """The swarm node that seeds the local stores while the window is open (None if the swarm
    settings cannot be read; the game runs without it)."""
    from game.swarm_cli import GameSwarm
    from swarm.settings import SettingsError, load_settings
    try:
        return GameSwarm(load_settings()).start()
    except SettingsError as e:
        print(f"hearth: the swarm is off: {e}", file=sys.stderr)
        return None


def _note(line: str) -> None:
    print(f"hearth: {line}", file=sys.stderr)


def _speaks_with_model(responder) -> bool:
    from npc.scripted import ScriptedResponder
    return not isinstance(responder, ScriptedResponder)


def _dress(state: WorldState) -> WorldState:
    """Step the shipped skins onto a new game's villagers (see game/village_skins.py)."""
    from engine.commands import Rejected
    from engine.sim import step
    from game.village_skins import dress_villagers
    commands = dress_villagers(state, say=_note)
    if commands:
        state, events = step(state, commands)
        for e in events:
            if isinstance(e, Rejected):
                _note(f"a demo skin was refused: {e.reason.value}")
    return state


def _load_voice_in_background(session, voice: str, dress: bool = False) -> None:
    import threading

    def load() -> None:
        from game.voices import load_voice
        try:
            responder = load_voice(voice, say=lambda line: print(line, file=sys.stderr))
        except Exception as e:
            print(f"hearth: the local model could not be loaded ({e}); villagers keep their "
                  f"scripted lines.", file=sys.stderr)
            session.voice_label = "scripted lines (the local model failed to load)"
            return
        if dress and _speaks_with_model(responder):
            from game.village_skins import dress_villagers
            try:
                for cmd in dress_villagers(session.state, say=_note):
                    session.post(cmd)
            except Exception as e:  # the villagers keep their base voice
                _note(f"the demo skins could not be set up: {e}")
        session.set_responder(responder)

    threading.Thread(target=load, name="hearth-voice-loader", daemon=True).start()


def _play_headless(args: argparse.Namespace, state: WorldState, responder) -> int:
    from game.headless import Director, load_script, summary

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


def _finish(args, state: WorldState, recorder) -> None:
    if args.save is not None:
        save_game(args.save, state)
        print(f"saved: {args.save}")
    if recorder is not None and args.record is not None:
        recorder.save(args.record)
        print(f"recorded: {args.record} ({recorder.finish().ticks} ticks)")


# ---- replay ------------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    log = load_log(args.log)
    res = replay(log)
    if res.ok:
        print(f"replayed {res.ticks} ticks: every state hash matches")
        print(f"state-hash: {res.final_hash}")
        return 0
    print(f"replay diverged at tick {res.first_mismatch} (after {res.ticks} ticks): "
          f"state hash differs from the recording", file=sys.stderr)
    return 1


# ---- state -------------------------------------------------------------------------------------

def state_json(state: WorldState) -> dict:
    q = state.quest
    return {
        "tick": state.tick,
        "day": state.day,
        "hour": state.hour,
        "player": {"x": state.player.x, "y": state.player.y, "gold": state.player.gold,
                   "inventory": dict(sorted(state.player.inventory.items())),
                   "talking_to": state.player.talking_to},
        "npcs": [{"id": n.id, "name": n.name, "role": n.role, "x": n.x, "y": n.y, "gold": n.gold,
                  "inventory": dict(sorted(n.inventory.items())), "skin": n.skin,
                  "activity": n.activity} for n in state.npcs],
        "quest": {"id": q.id, "title": q.title, "started": q.started, "complete": q.complete,
                  "step": q.step, "steps": len(q.steps),
                  "current": q.current.description if q.current else None},
    }


def cmd_state(args: argparse.Namespace) -> int:
    created = not args.save.exists()
    state = load_or_new(args.save, args.seed)
    if created:
        save_game(args.save, state)
    if args.json:
        print(json.dumps(state_json(state), ensure_ascii=False))
    else:
        from game.headless import summary
        print("\n".join(summary(state)))
    return 0


# ---- talk --------------------------------------------------------------------------------------

def action_json(action) -> dict | None:
    if action is None:
        return None
    import msgspec
    d = msgspec.to_builtins(action)
    return {"type": type(action).__struct_config__.tag, **{k: v for k, v in d.items() if k != "type"}}


def cmd_talk(args: argparse.Namespace) -> int:
    import time

    from engine.commands import Interact, NpcSaid, Rejected
    from engine.sim import step
    from game.headless import Director, parse_script
    from game.session import run_turn_sync

    state = load_or_new(args.save, args.seed)
    if state.npc(args.npc) is None:
        raise CliError(f"unknown npc {args.npc!r} (villagers: {', '.join(n.id for n in state.npcs)})")
    responder = make_responder(args.voice)
    if state.player.talking_to != args.npc:
        # Walk over by the rules (no teleporting), then open the conversation.
        director = Director(state, responder, parse_script(f"goto {args.npc}", state),
                            out=lambda line: None)
        limit = state.tick + 120 * 60
        while not director.finished and director.state.tick < limit:
            director.run(director.state.tick + 1)
        state = director.state
        state, events = step(state, [Interact(npc=args.npc)])
        refused = [e for e in events if isinstance(e, Rejected)]
        if refused:
            raise CliError(f"could not reach {args.npc}: {refused[0].reason.value}")
    t0 = time.perf_counter()
    state, turn, events = run_turn_sync(state, responder, args.npc, " ".join(args.words))
    latency = time.perf_counter() - t0
    committed = any(isinstance(e, NpcSaid) for e in events)
    save_game(args.save, state)
    out = {"npc": args.npc, "say": turn.reply.text, "action": action_json(turn.reply.action),
           "accepted": committed and not turn.fallback, "attempts": turn.attempts,
           "fallback": turn.fallback, "latency_s": round(latency, 3),
           "rejections": turn.rejections, "voice": getattr(responder, "name", "?"),
           "tick": state.tick}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        name = state.npc(args.npc).name
        print(f"{name}: {turn.reply.text}" + (f"  [{out['action']['type']}]" if out["action"] else ""))
        if turn.fallback:
            print(f"(fallback line after {turn.attempts} refused replies: {', '.join(turn.rejections)})")
    return 0


# ---- model -------------------------------------------------------------------------------------

def cmd_model(args: argparse.Namespace) -> int:
    from npc.store import ModelStore, StoreError
    store = ModelStore()
    try:
        if args.model_cmd == "add":
            done = [0]

            def progress(n: int, total: int) -> None:
                pct = 100 * n // max(1, total)
                if pct >= done[0] + 10 or n == total:
                    done[0] = pct
                    print(f"  hashing {pct}%", file=sys.stderr)
            rec = store.import_file(args.path, progress=progress)
            print(f"{rec.blake3}  {rec.name} ({rec.architecture}, {rec.parameters / 1e6:.0f}M "
                  f"parameters, {rec.quantization})")
        elif args.model_cmd == "list":
            store.ensure_default()
            recs = store.records()
            if args.json:
                import msgspec
                print(msgspec.json.encode(recs).decode())
            else:
                for r in recs:
                    origin = f"derived from {r.derived_from[:12]}" if r.derived_from else r.source
                    print(f"{r.blake3[:16]}  {r.quantization:6s} {r.parameters / 1e6:5.0f}M  "
                          f"{r.size / 1e6:6.1f} MB  {r.name}  ({origin})")
                print(f"store: {store.root}")
        elif args.model_cmd == "tune":
            from npc.tuning import choose
            base = store.ensure_default()
            c = choose(store, base, force=True, say=print)
            print(f"chosen: {c.quantization} extra_bufts={int(c.use_extra_bufts)} "
                  f"threads={c.n_threads} (decode) / {c.n_threads_batch or c.n_threads} (prefill): "
                  f"prefill {c.prefill_tps} tok/s, decode {c.decode_tps} tok/s")
    except StoreError as e:
        raise CliError(str(e)) from None
    return 0


# ---- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hearth",
        description="Hearth: a village whose people speak through a language model on your own "
                    "machine. Play, replay recorded sessions, inspect saves.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

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

    p = sub.add_parser("replay", help="re-simulate a recorded session and check every tick's hash",
                       description="Re-run a log written by `hearth play --record LOG` from its "
                                   "initial state and check the state hash after every tick. "
                                   "Exits 0 only if every hash matches, 1 on divergence, 2 on a "
                                   "bad file.")
    p.add_argument("log", type=Path, metavar="LOG")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("talk", help="say something to a villager and get one reply",
                       description="Load the save (or start a new game there), walk to the villager "
                                   "if needed, say the words, let the local model answer within "
                                   "what the world allows, commit what the engine accepts and write "
                                   "the save. --json prints one object: npc, say, action, accepted, "
                                   "attempts, fallback, latency_s.")
    p.add_argument("--save", type=Path, required=True, metavar="FILE")
    p.add_argument("--npc", required=True, metavar="ID", help="villager id (bram, hilda, maren, tobin)")
    p.add_argument("--seed", type=int, default=1, help="seed if a new game is created (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--voice", default="model", choices=["model", "scripted"],
                   help="who answers (default: the local model)")
    p.add_argument("words", nargs="+", help="what you say")
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("model", help="the local model store: add a GGUF, list, re-measure, fetch",
                       description="Models live in a content-addressed store in your data "
                                   "directory, each file named by its BLAKE3 hash. The default "
                                   "model is imported from its package on first use.")
    msub = p.add_subparsers(dest="model_cmd", metavar="ACTION", required=True)
    q = msub.add_parser("add", help="import a GGUF model file into the store",
                        description="Check that PATH is a GGUF base model, hash it and copy it "
                                    "into the store; prints its id.")
    q.add_argument("path", type=Path)
    q = msub.add_parser("list", help="list stored models",
                        description="List stored models: id, quantization, size, origin.")
    q.add_argument("--json", action="store_true")
    msub.add_parser("tune", help="re-measure llama.cpp configurations for this machine",
                    description="Benchmark the shipped and requantized model files with and "
                                "without llama.cpp's extra buffer types, each in its own process, "
                                "and record the fastest stable one (done automatically once).")
    p.set_defaults(func=cmd_model)
    add_model_fetch(msub)

    p = sub.add_parser("state", help="print the world state of a save",
                       description="Load the save (creating a new game there if it does not "
                                   "exist) and print the world state.")
    p.add_argument("--save", type=Path, required=True, metavar="FILE")
    p.add_argument("--seed", type=int, default=1, help="seed if a new game is created (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_state)

    add_skin_commands(sub)
    add_swarm_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        return args.func(args)
    except (CliError, SaveError, LogError, WorldDataError, ScriptError, SkinError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
