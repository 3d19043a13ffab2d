"""Quest completion with the model voice: each quest's walk-through script played on new games of
seeds 1..N with the villagers in the shipped skins, for every quest of the village.

Each quest is played by its own script (``game.headless.walkthrough_script``: assets/demo.script
for The Silent Bell, assets/quests/<id>.script for the others) on a fresh game, so one quest's
result never depends on another's. For each run: whether that quest was completed, how many
dialogue turns it took, and how many ticks committed something the books cannot explain (goods or
gold appearing or vanishing without the engine's own ``ItemMinted``, ``ItemConsumed`` or
``GoldMinted`` event) -- an illegal commit.

    python tools/bench/quests.py [--seeds 10] [--quests silent_bell,watch_lantern] [--voice model]

Last line: ``quest_completion=<completed>/<runs> turns_per_quest_p50=<N> illegal_commits=<N>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.books import explained, world_totals as books  # noqa: E402
from engine.sim import step  # noqa: E402
from engine.world import new_game  # noqa: E402


def run(responder, seed: int, say, quest_id: str = "silent_bell",
        dress: bool = True) -> tuple[bool, int, int, str, int]:
    """(completed, dialogue turns, illegal commits, where the quest ended, turns answered by the
    engine's fallback line) for one quest's script on a new game of ``seed``; ``dress`` puts the
    villagers in the shipped skins first."""
    from game.headless import Director, load_script, walkthrough_script
    from game.play_cli import DEFAULT_HEADLESS_TICKS
    state = new_game(seed)
    if dress:
        from game.village_skins import dress_villagers
        state, _ = step(state, dress_villagers(state, say=say))
    director = Director(state, responder, load_script(walkthrough_script(quest_id), state),
                        out=lambda line: None)
    illegal = 0
    real_step = director._step

    def checked(cmds):
        nonlocal illegal
        before = books(director.state)
        events = real_step(cmds)
        illegal += not explained(before, books(director.state), events)
        return events
    director._step = checked
    director.run(state.tick + DEFAULT_HEADLESS_TICKS)
    q = director.state.quest_by_id(quest_id)
    where = ("complete" if q.complete else "not started" if not q.started
             else f"stalled at step {q.step + 1}/{len(q.steps)}")
    return q.complete, len(director.turns), illegal, where, sum(t["fallback"] for t in director.turns)


def main() -> int:
    village = new_game(1)
    ids = [q.id for q in village.all_quests]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="runs per quest (seeds 1..N)")
    ap.add_argument("--quests", default=",".join(ids),
                    help=f"quest ids to play, comma-separated (default: all: {','.join(ids)})")
    ap.add_argument("--voice", choices=("model", "engine"), default="model",
                    help="model: the language model in the shipped skins (the measure); engine: "
                         "the scripted voice, a quick check of the scripts and rules")
    args = ap.parse_args()
    wanted = [q.strip() for q in args.quests.split(",") if q.strip()]
    unknown = [q for q in wanted if q not in ids]
    if unknown or not wanted or args.seeds < 1:
        ap.error(f"--quests: unknown quest {', '.join(unknown)} (known: {', '.join(ids)})"
                 if unknown else "--quests and --seeds must name at least one run")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.voice == "model":
        from game.voices import load_model_voice
        responder = load_model_voice(say=say)
    else:
        from npc.scripted import ScriptedResponder
        responder = ScriptedResponder()
    done = runs = illegal = 0
    turns: list[int] = []
    for quest_id in wanted:
        print(f"== {village.quest_by_id(quest_id).title} ({args.voice} voice)", flush=True)
        for seed in range(1, args.seeds + 1):
            t0 = time.perf_counter()
            ok, n_turns, bad, where, fallbacks = run(responder, seed, say, quest_id,
                                                     dress=args.voice == "model")
            runs += 1
            done += ok
            illegal += bad
            if ok:
                turns.append(n_turns)
            print(f"seed {seed}: {where}, {n_turns} turns ({fallbacks} by the fallback line), "
                  f"{bad} illegal commits ({time.perf_counter() - t0:.0f}s)", flush=True)
    p50 = statistics.median(turns) if turns else float("nan")
    print(f"quest_completion={done}/{runs} turns_per_quest_p50={p50:g} illegal_commits={illegal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
