"""Engine throughput: headless ticks per second for the village, recording and replay speed.

Runs the demo walk-through (the player walking the quest, NPCs on their schedules) so the rules,
pathing and dialogue commits are all exercised. Prints a table, then the last line
``ticks_per_s=<N> realtime_x=<N/60>``. Target: >= 20,000 ticks/s on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.replay import Recorder, replay  # noqa: E402
from engine.sim import step  # noqa: E402
from engine.state import TICKS_PER_SECOND, clone  # noqa: E402
from engine.world import new_game  # noqa: E402
from game.headless import Director, load_script  # noqa: E402
from npc.scripted import ScriptedResponder  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    # Record the input log of a scripted session once; the timed runs feed the same inputs.
    base = new_game(seed=1)
    director = Director(clone(base), ScriptedResponder(),
                        load_script(ROOT / "assets" / "demo.script", base), record=True,
                        out=lambda line: None)
    director.run(args.ticks)
    log = director.recorder.finish()
    inputs = {t.tick: t.commands for t in log.inputs}

    plain, recorded, replayed = [], [], []
    for _ in range(args.repeats):
        s = clone(base)
        t0 = time.perf_counter()
        for i in range(args.ticks):
            step(s, inputs.get(i, ()))
        plain.append(args.ticks / (time.perf_counter() - t0))

        s = clone(base)
        rec = Recorder(s)
        t0 = time.perf_counter()
        for i in range(args.ticks):
            s, _ = rec.step(s, inputs.get(i, []))
        recorded.append(args.ticks / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        res = replay(log)
        replayed.append(res.ticks / (time.perf_counter() - t0))
        assert res.ok, "replay diverged"

    tps = statistics.median(plain)
    print(f"ticks={args.ticks} repeats={args.repeats} commands={sum(len(c) for c in inputs.values())}")
    print(f"step only          : {tps:10.0f} ticks/s  ({tps / TICKS_PER_SECOND:7.1f}x real time)")
    print(f"step + hash/record : {statistics.median(recorded):10.0f} ticks/s  "
          f"({statistics.median(recorded) / tps:.2f} of step only)")
    print(f"replay (re-check)  : {statistics.median(replayed):10.0f} ticks/s  "
          f"({statistics.median(replayed) / tps:.2f} of step only)")
    print(f"ticks_per_s={tps:.0f} realtime_x={tps / TICKS_PER_SECOND:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
