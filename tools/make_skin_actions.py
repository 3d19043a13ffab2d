"""Write each demo skin's action examples: the game's own prompts, answered in the skin's voice.

A skin trained only on chit-chat learns that a villager answers "none": worn by Tobin, it stops
selling when asked, and Bram never hands over the bell clapper. These examples put the skin's
voice on the decisions the game asks for. Each is built from a real game state with the game's
system prompt (``npc.prompt.persona_block`` + ``situation_block``) and newest turn
(``npc.prompt.newest_turn``), answered as the game answers: the action the engine decided from
the player's words, and a line that opens with the fact the engine states (the reply grammar
forces both in play) followed by the skin's own words. Kinds: a player asking a shopkeeper for each item it sells (the sale), asking Bram for
the clapper at that quest step (the hand-over), offering Maren help before the quest (its
start), and small talk (no action). The NPC lines come from the
``[skin.lines]`` templates in assets/skins/demo_skins.toml.

    python tools/make_skin_actions.py      # writes assets/skins/<dir>.actions.jsonl

The output is committed; tools/make_demo_skins.py trains on it together with ``<dir>.jsonl``.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.commands import Interact, Say  # noqa: E402
from engine.dialogue import build_request  # noqa: E402
from engine.sim import step  # noqa: E402
from engine.state import clone  # noqa: E402
from engine.world import free_tile_beside, new_game  # noqa: E402
from npc.grammar import PREFIX, ReplyGrammar, action_label  # noqa: E402
from npc.prompt import newest_turn, persona_block, reply_json, situation_block  # noqa: E402

SKINS_DIR = ROOT / "assets" / "skins"
#: Player lines for the examples. The tests ask with other words (tests/test_skin_training.py).
ASK = ["I want to buy a {}.", "Could I get a {}?", "A {}, please.", "How much for a {}? I will take one."]
CLAPPER = ["Is the bell clapper done yet?", "I am here for the bell clapper.",
           "May I take the clapper now?", "Did you forge the clapper?",
           "I brought you the iron. Where is the clapper?", "Hello Bram, how is the bell clapper?"]
HELP = ["Can I help you with anything?", "Do you need a hand with something?",
        "Anything I can do for you?", "Hello Maren! I would be glad to help.",
        "You look sad. Can I do something?", "I can help you, if you like."]
#: Small talk where no action is offered (nothing was asked for).
SMALL_TALK = [("tobin", "Nice weather today."), ("bram", "Your forge is hot.")]


_NAMES = ("I", "Bram", "Maren", "Tobin", "Hilda", "Emberbrook", "Traveller")


def one_sentence(line: str) -> str:
    """The skin's line as one sentence: in play the line after the engine's fact is one sentence
    (the reply grammar's bound), so "Hmph. Take it." becomes "Hmph, take it."."""
    parts = re.split(r"(?<=[.!?])\s+", line.strip())
    out = parts[0]
    for nxt in parts[1:]:
        head = nxt.split(" ", 1)[0].strip(",.!?")
        nxt = nxt if head in _NAMES else nxt[:1].lower() + nxt[1:]
        out = out[:-1] + ", " + nxt
    return out


def _state(quest_step: int):
    state = new_game(seed=1)
    state.player.gold = 500  # every sale affordable
    state.quest.step = quest_step
    return state


def example(state, npc: str, words: str, line: str, want: str) -> dict:
    """One chat example: the game's system prompt for this state, the player's words, the reply."""
    state = clone(state)
    state.player.x, state.player.y = state.player.from_x, state.player.from_y = \
        free_tile_beside(state, npc)
    state, _ = step(state, [Interact(npc=npc), Say(npc=npc, text=words)])
    if state.player.talking_to != npc:
        raise SystemExit(f"could not start talking to {npc}")
    req = build_request(state, npc, words)
    decided = action_label(req.action) if req.action is not None else "none"
    if decided != want:
        raise SystemExit(f"{npc} would {decided!r}, not {want!r}, after {words!r}")
    said = f"{req.fact} {one_sentence(line)}" if req.fact else line
    reply = reply_json(said, want)
    grammar = ReplyGrammar(req.legal_actions, req.max_chars, lead=req.fact,
                           required=req.action is not None)
    grammar.push(reply[len(PREFIX):].encode())
    if not grammar.done:
        raise SystemExit(f"the game's reply grammar refuses {reply!r}")
    return {"messages": [
        {"role": "system", "content": persona_block(req) + "\n" + situation_block(req)},
        {"role": "user", "content": newest_turn(req)},
        {"role": "assistant", "content": reply},
    ]}


def skin_examples(lines: dict[str, list[str]]) -> list[dict]:
    def pick(kind: str, i: int) -> str:
        return lines[kind][i % len(lines[kind])]

    out = []
    shop = _state(-1)
    n = 0
    for npc in shop.npcs:
        for item in sorted(npc.sells):
            name = shop.items[item].name
            for k in range(2):
                words = ASK[(n + k) % len(ASK)].format(name)
                out.append(example(shop, npc.id, words, pick("sell", n + k).format(name=name),
                                   f"sell {item} {npc.sells[item]}"))
            n += 1
    at_clapper = _state(2)
    for i, words in enumerate(CLAPPER):
        out.append(example(at_clapper, "bram", words, pick("give", i).format(name="bell clapper"),
                           "give bell_clapper"))
    before = _state(-1)
    for i, words in enumerate(HELP):
        out.append(example(before, "maren", words, pick("quest", i),
                           f"start_quest {before.quest.id}"))
    for i, (npc, words) in enumerate(SMALL_TALK):
        out.append(example(_state(-1), npc, words, pick("chat", i), "none"))
    return out


def main() -> int:
    skins = tomllib.loads((SKINS_DIR / "demo_skins.toml").read_text(encoding="utf-8"))["skin"]
    for skin in skins:
        rows = skin_examples(skin["lines"])
        path = SKINS_DIR / f"{skin['dir']}.actions.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(rows)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
