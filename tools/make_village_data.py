"""Write the world-tuned village voice's training data from the engine itself.

Every villager is asked, at every step of the quest, the kinds of things players ask (prices,
purchases, who sells what, where people and places are, the trade, the quest, offers of goods,
acceptances, refusals of free goods, other prices and false premises, small talk) in words from
the templates below. Each question is put to a real game state; the engine reads it
(``engine.intent``), decides the action and the fact (``engine.rules``, ``engine.grounding``) and
the example is the game's own prompt (``npc.prompt.persona_block`` + ``situation_block``, the
newest turn) answered as the game answers: the decided action, and a line that opens with the
fact, followed by one of the villager's own lines from assets/village/lines.toml. A template the
engine does not read as the kind it was written for is left out (and counted), so the voice never
learns to answer a question the engine understood differently.

No player line may be a question of the dialogue question sets or a close paraphrase: lines whose
word overlap (Jaccard) with any question reaches 0.5 are dropped and counted.

    python tools/make_village_data.py     # writes assets/village/village.jsonl
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "bench"))

from dialogue import advance_quest, jaccard, load_questions, words  # noqa: E402

from engine.commands import EndTalk, Interact, Say  # noqa: E402
from engine.dialogue import build_request  # noqa: E402
from engine.grounding import plural  # noqa: E402
from engine.sim import step  # noqa: E402
from engine.state import clone  # noqa: E402
from engine.world import free_tile_beside, new_game  # noqa: E402
from npc.grammar import PREFIX, ReplyGrammar, action_label  # noqa: E402
from npc.prompt import newest_turn, persona_block, reply_json, situation_block  # noqa: E402

OUT = ROOT / "assets" / "village" / "village.jsonl"
LINES = ROOT / "assets" / "village" / "lines.toml"
QUESTION_SETS = [ROOT / "tests" / "data" / "dialogue_questions.toml",
                 ROOT / "tests" / "data" / "dialogue_questions_heldout.toml"]
OVERLAP_LIMIT = 0.5

ASK_PRICE = ["How much is a {item}?", "What's the price of a {item}?", "What do you want for a {item}?",
             "Tell me the cost of a {item}."]
BUY = ["I'll buy a {item}.", "One {item} for me, please.", "Sell me a {item}, will you?",
       "I'd like a {item}."]
WHO_SELLS = ["Who sells {items}?", "Where do I get a {item}?", "Who has {items} for sale?"]
WHERE_NPC = ["Where is {name} right now?", "Where's {name}?", "I'm looking for {name}."]
WHERE_PLACE = ["How do I get to {place}?", "Which way is {place}?", "Where's {place}?"]
TRADE = ["What's your trade?", "What have you got?", "What do you sell here?", "What's for sale?"]
QUEST = ["What's wrong with the bell?", "Any news about the bell?", "What should I do next?",
         "How is the bell coming along?"]
ACCEPT = ["I'd be glad to help you.", "Let me help with that.", "Count me in."]
DECLINE = ["No, not today.", "Maybe later."]
GIVE = ["Is the clapper ready?", "I'm here for the clapper.", "Can I collect the clapper now?"]
OFFER = ["Will you buy my {item}?", "I have a {item} to sell you.", "Would you pay me for a {item}?"]
FREE = ["Give me a {item} for free.", "Hand me a {item}, no charge."]
PRICE = ["Sell me a {item} for 1 gold.", "I'll take a {item} for 2 gold."]
PREMISE = ["{other} says you must give me a {item}.", "The mayor ordered you to hand me a {item}."]
CHAT = ["Good morning!", "How are you today?", "Lovely weather.", "Hello there."]

#: The kind of the villager's own words after each intent's fact.
WORDS_FOR = {"ask_price": "price", "buy": "sale", "sell": "offer", "ask_who_sells": "who",
             "ask_where": "where", "ask_trade": "trade", "ask_quest": "quest", "give": "give",
             "accept": "start", "decline": "decline", "refused": "refuse", "small_talk": "chat"}


def _talking(state, npc: str):
    state = clone(state)
    if state.player.talking_to is not None:
        state, _ = step(state, [EndTalk()])
    for n in state.npcs:
        n.memory = []
    tile = free_tile_beside(state, npc)
    state.player.x, state.player.y = state.player.from_x, state.player.from_y = tile
    state, _ = step(state, [Interact(npc=npc)])
    return state


class Writer:
    def __init__(self, lines: dict, questions: list[set[str]]):
        self.lines = lines
        self.questions = questions
        self.rows: list[dict] = []
        self.counts = {"misread": 0, "overlap": 0}
        self.n = 0

    def own_words(self, npc: str, intent_kind: str, action) -> str:
        kind = WORDS_FOR[intent_kind]
        if intent_kind == "buy" and action is None:
            kind = "price"  # asked to buy what cannot be sold here: the fact says why
        if intent_kind == "give" and action is None:
            kind = "quest"
        pool = self.lines[npc].get(kind) or self.lines[npc]["chat"]
        self.n += 1
        return pool[self.n % len(pool)]

    def add(self, state, npc: str, said: str, kind: str) -> None:
        if max((jaccard(words(said), q) for q in self.questions), default=0.0) >= OVERLAP_LIMIT:
            self.counts["overlap"] += 1
            return
        state, _ = step(_talking(state, npc), [Say(npc=npc, text=said)])
        req = build_request(state, npc, said)
        if req.intent.kind != kind:
            self.counts["misread"] += 1
            return
        own = self.own_words(npc, kind, req.action)
        line = f"{req.fact} {own}" if req.fact else own
        reply = reply_json(line, action_label(req.action) if req.action is not None else "none")
        grammar = ReplyGrammar(req.legal_actions, req.max_chars, lead=req.fact,
                               required=req.action is not None)
        grammar.push(reply[len(PREFIX):].encode())
        if not grammar.done:
            raise SystemExit(f"the game's reply grammar refuses {reply!r} ({npc}: {said!r})")
        self.rows.append({"messages": [
            {"role": "system", "content": persona_block(req) + "\n" + situation_block(req)},
            {"role": "user", "content": newest_turn(req)},
            {"role": "assistant", "content": reply},
        ]})


def examples(w: Writer) -> None:
    base = new_game(seed=1)
    base.player.gold = 500
    states = {s: advance_quest(clone(base), s) for s in range(-1, 6)}
    items = base.items
    goods = sorted(i for i, it in items.items() if not it.quest)
    k = 0

    def pick(templates: list[str]) -> str:
        nonlocal k
        k += 1
        return templates[k % len(templates)]

    for npc in base.npcs:
        others = [n for n in base.npcs if n.id != npc.id]
        for qs in (-1, 0, 1, 2, 3, 4, 5):
            st = states[qs]
            for t in QUEST[:2] if qs in (-1, 5) else QUEST:
                w.add(st, npc.id, t, "ask_quest")
            for t in CHAT[:2]:
                w.add(st, npc.id, t, "small_talk")
        st = states[-1]
        for item in goods:
            name = items[item].name
            w.add(st, npc.id, pick(ASK_PRICE).format(item=name), "ask_price")
            if item in npc.sells:
                for t in BUY[:3]:
                    w.add(st, npc.id, t.format(item=name), "buy")
                w.add(st, npc.id, pick(FREE).format(item=name), "refused")
                w.add(st, npc.id, pick(PRICE).format(item=name), "refused")
                w.add(st, npc.id, pick(PREMISE).format(item=name, other=others[k % 3].name), "refused")
            else:
                w.add(st, npc.id, pick(WHO_SELLS).format(item=name, items=plural(name)), "ask_who_sells")
            if item in npc.buys:
                held = clone(st)
                held.player.inventory[item] = 1
                w.add(held, npc.id, pick(OFFER).format(item=name), "sell")
        for other in others:
            for t in WHERE_NPC[:2]:
                w.add(st, npc.id, t.format(name=other.name), "ask_where")
        for place in sorted(base.map.places):
            w.add(st, npc.id, pick(WHERE_PLACE).format(place=place), "ask_where")
        for t in TRADE:
            w.add(st, npc.id, t, "ask_trade")
        for t in CHAT[2:]:
            w.add(st, npc.id, t, "small_talk")
    for t in ACCEPT:
        w.add(states[-1], base.quest.giver, t, "accept")
    for t in DECLINE:
        w.add(states[-1], base.quest.giver, t, "decline")
    for t in GIVE:
        w.add(states[2], "bram", t, "give")


def main() -> int:
    lines = tomllib.loads(LINES.read_text(encoding="utf-8"))
    questions = [words(q.line) for path in QUESTION_SETS for q in load_questions(path)]
    w = Writer(lines, questions)
    examples(w)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in w.rows), encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(w.rows)} examples; left out: {w.counts['misread']} the "
          f"engine reads as another kind, {w.counts['overlap']} too close to a question-set line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
