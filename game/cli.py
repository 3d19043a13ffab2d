"""The ``hearth`` command line: the parser, and ``main``, the one place where a command's error
becomes a ``hearth: error: ...`` line on stderr and an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.replay import LogError, load_log, replay
from engine.saves import SaveError, save_game
from engine.state import WorldState
from engine.world import WorldDataError
from game.chain_cli import add_command as add_chain_command
from game.cli_error import CliError
from game.headless import ScriptError
from game.jobs_cli import add_commands as add_jobs_commands
from game.model_cli import add_commands as add_model_commands
from game.play_cli import add_command as add_play_command
from game.play_cli import load_or_new
from game.serve_cli import add_commands as add_serve_commands
from game.settings_cli import add_command as add_settings_command
from game.skin_cli import add_commands as add_skin_commands
from game.swarm_cli import add_commands as add_swarm_commands
from game.voices import VoiceError, load_voice
from game.wallet_cli import add_commands as add_wallet_commands
from common.identity import IdentityError
from npc.gguf_info import GGUFError
from npc.skins.manifest import SkinError
from npc.skins.train import TrainingDataError
from npc.store import StoreError
from swarm.content import ContentError
from swarm.credits.chain import ChainError
from swarm.credits.ledger import LedgerError
from swarm.credits.settle import SettleError
from swarm.settings import SettingsError

#: What the layers below the command line raise when what was asked cannot be done (a bad file,
#: an unknown id, a failed download...): the message is the whole story, so no traceback is shown.
LIBRARY_ERRORS = (SaveError, LogError, WorldDataError, ScriptError, VoiceError, SkinError,
                  IdentityError, TrainingDataError, StoreError, GGUFError, ContentError, SettingsError,
                  LedgerError, ChainError, SettleError)


# ---- replay ------------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    log = load_log(args.log)
    res = replay(log)
    if res.ok:
        print(f"replayed {res.ticks} ticks: every state hash matches")
        print(f"state-hash: {res.final_hash}")
        return 0
    raise CliError(f"replay diverged at tick {res.first_mismatch} (after {res.ticks} ticks): "
                   f"state hash differs from the recording", exit_code=1)


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
        "quest": _quest_json(q),
        "quests": [_quest_json(q) for q in state.all_quests],
    }


def _quest_json(q) -> dict:
    return {"id": q.id, "title": q.title, "started": q.started, "complete": q.complete,
            "step": q.step, "steps": len(q.steps),
            "current": q.current.description if q.current else None}


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
    responder = load_voice(args.voice)
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


# ---- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hearth",
        description="Hearth: a village whose people speak through a language model on your own "
                    "machine. Play, replay recorded sessions, inspect saves.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    add_play_command(sub)

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

    add_model_commands(sub)

    p = sub.add_parser("state", help="print the world state of a save",
                       description="Load the save (creating a new game there if it does not "
                                   "exist) and print the world state.")
    p.add_argument("--save", type=Path, required=True, metavar="FILE")
    p.add_argument("--seed", type=int, default=1, help="seed if a new game is created (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_state)

    add_skin_commands(sub)
    add_swarm_commands(sub)
    add_settings_command(sub)
    add_jobs_commands(sub)
    add_wallet_commands(sub)
    add_chain_command(sub)
    add_serve_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        return args.func(args)
    except CliError as e:
        return _fail(e.message, e.exit_code)
    except LIBRARY_ERRORS as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, exit_code: int) -> int:
    print(f"hearth: error: {message}", file=sys.stderr, flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
