"""Render ``docs/screenshot.png``: the traveller at Maren's bar in The Amber Kettle, mid-conversation.

A new game (seed 7) with the scripted voice; the traveller is placed beside Maren, opens the
conversation, asks whether they can help, and once the reply is committed orders a mug of ale, which
the window's first tick carries out (so the pack and the notices have something to show).
Run with ``SDL_VIDEODRIVER=dummy`` where there is no display.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.commands import Buy, Interact  # noqa: E402
from engine.world import new_game  # noqa: E402
from game.client import run_window  # noqa: E402
from game.session import GameSession  # noqa: E402
from npc.scripted import ScriptedResponder  # noqa: E402

#: The tile in front of Maren's post behind the bar (she stands at (10, 4)).
BESIDE_MAREN = (10, 5)
#: Ticks to wait for the reply (ten seconds); the scripted voice answers within a few.
REPLY_TIMEOUT_TICKS = 600
TICK_SECONDS = 1 / 60


def staged_session() -> GameSession:
    state = new_game(seed=7)
    p = state.player
    p.x, p.y = BESIDE_MAREN
    p.from_x, p.from_y = BESIDE_MAREN
    p.facing = "up"
    session = GameSession(state, ScriptedResponder())
    session.queue(Interact("maren"))
    session.tick()
    if session.state.player.talking_to != "maren":
        raise RuntimeError("could not open the conversation with Maren")
    session.talk("maren", "Can I help with anything?")
    for _ in range(REPLY_TIMEOUT_TICKS):
        # Tick at the game's own pace, as the window would, so the voice's thread gets to answer.
        time.sleep(TICK_SECONDS)
        session.tick()
        if session.pending is None and not session.busy:
            break
    maren = session.state.npc("maren")
    if maren is None or not maren.memory or maren.memory[-1].speaker != "maren":
        raise RuntimeError("Maren's reply was not committed")
    return session


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args(argv)
    session = staged_session()
    session.queue(Buy(npc="maren", item="ale"))
    try:
        code = run_window(session, max_frames=args.frames, screenshot=args.out)
    finally:
        session.close()
    print(args.out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
