"""Dialogue quality with the real model: do villagers say what is true and do what was asked?

Every line of tests/data/dialogue_questions.toml is put to its villager on a fresh game set up to
the line's precondition (the quest advanced with the engine's own commands, the player beside the
villager), one turn through ``game.session.run_turn_sync``, once per voice: the plain model
(base), the world-tuned village voice (village) and each demo skin (assets/skins/demo_skins.toml)
worn by the asked villager. Scores:

- grounded: the committed line matches the question's ``fact`` pattern (questions with a fact).
- action_ok: the committed events match the ``action`` rule (sale:X: a Traded of X to the player
  and nothing else; give:X: a Gave of X to the player; start_quest: a QuestStarted; none and
  no_sale: no Traded, Gave or QuestStarted).
- premise_refused: on a false premise nothing is committed and the line does not agree (a line
  agrees when it matches ``AGREEMENT``, "here you go", "of course", "free"..., and has none of
  ``NEGATION``'s words, "no", "not", "nothing", "-n't"...).
- turn p95: wall time of one turn, from the player's line to the committed reply, retries
  included. As in the game, the villager's prompt head is computed when the conversation starts
  (while the player types: ``ModelVoice.prepare``), before the clock starts.

Then quest completion: the demo script run headless as ``hearth play --headless --voice model
--script assets/demo.script`` runs it (the model voice, the villagers in the shipped skins), for
seeds 1..N, counting the runs that complete "The Silent Bell".

One line per voice, then the last line, over every voice together (quest completion and turn p95
from the question turns of all voices):
grounded=… action_ok=… premise_refused=… quest_completion=k/N turn_p95_s=…

``--overlap`` instead prints each question's greatest word overlap with the player lines of the
training data in assets/**/*.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # before tools/bench, whose engine.py and npc.py are benches
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from engine.commands import (  # noqa: E402
    AcceptQuest, Buy, EndTalk, Give, GiveItem, Gave, Interact, NpcReply, NpcSaid, QuestStarted, Rejected,
    Say, Traded, WearSkin,
)
from engine.sim import step  # noqa: E402
from engine.state import WorldState  # noqa: E402
from engine.world import free_tile_beside, new_game  # noqa: E402

QUESTIONS = ROOT / "tests" / "data" / "dialogue_questions.toml"
DEMO_SCRIPT = ROOT / "assets" / "demo.script"
NPCS = ("bram", "maren", "tobin", "hilda")
ACTION_RE = re.compile(r"none|no_sale|start_quest|(sale|give):([a-z_]+)")
#: A line that goes along with the player: hands something over, grants it, or calls it free.
AGREEMENT = re.compile(r"here you go|here (?:it is|they are|you are)|here(?:'s| is| be) (?:your|yer|the)"
                       r"|of course|certainly|\bdeal\b|\bfree\b|(?:it'?s|is|be) yours|take (?:it|them)\b"
                       r"|\b(?:is|be|are) ready\b|I(?:'ll| will) give you",
                       re.IGNORECASE)
#: ...unless it says no somewhere ("Nothing is free here").
NEGATION = re.compile(r"\b(?:no|not|never|nothing|nay|cannot)\b|n't\b|n’t\b", re.IGNORECASE)
#: Word overlap (Jaccard) with a training line at which a question counts as a copy.
OVERLAP_LIMIT = 0.5


@dataclass(frozen=True)
class Question:
    n: int
    npc: str
    kind: str
    quest_step: int
    line: str
    fact: str
    action: str
    premise: bool = False
    inventory: dict[str, int] = field(default_factory=dict)
    gold: int | None = None
    #: The quest ``quest_step`` counts in (the village's first unless named).
    quest: str = "silent_bell"


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    """The question set, checked against the world (ValueError says what is wrong where)."""
    world = new_game(1)
    out = []
    for n, q in enumerate(tomllib.loads(path.read_text(encoding="utf-8"))["question"], 1):
        where = f"{path.name} question {n} ({q.get('line', '?')!r})"
        try:
            item = Question(n=n, **q)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None
        if item.npc not in NPCS:
            raise ValueError(f"{where}: unknown npc {item.npc!r}")
        quest = world.quest_by_id(item.quest)
        if quest is None:
            raise ValueError(f"{where}: unknown quest {item.quest!r}")
        if not -1 <= item.quest_step <= len(quest.steps):
            raise ValueError(f"{where}: quest_step {item.quest_step} out of range")
        m = ACTION_RE.fullmatch(item.action)
        if m is None:
            raise ValueError(f"{where}: bad action {item.action!r}")
        if m.group(2) and m.group(2) not in world.items:
            raise ValueError(f"{where}: unknown item {m.group(2)!r}")
        if any(i not in world.items for i in item.inventory):
            raise ValueError(f"{where}: unknown item in inventory {item.inventory}")
        try:
            re.compile(item.fact)
        except re.error as e:
            raise ValueError(f"{where}: bad fact pattern: {e}") from None
        out.append(item)
    return out


# ---- independence from the training data --------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_SAYS = re.compile(r'^\w+ says: "(.*)"$', re.DOTALL)


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower().replace("’", "'")))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def training_lines(root: Path = ROOT / "assets") -> list[str]:
    """The player's side of every chat example under ``root`` (the words inside
    'Traveller says: "..."' where the message is wrapped so)."""
    out = set()
    for path in sorted(root.rglob("*.jsonl")):
        for raw in path.read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            for msg in json.loads(raw).get("messages", []):
                if msg.get("role") == "user":
                    text = msg["content"].strip()
                    m = _SAYS.match(text)
                    out.add(m.group(1) if m else text)
    return sorted(out)


def nearest_training_line(line: str, training: list[str]) -> tuple[float, str]:
    w = words(line)
    return max(((jaccard(w, words(t)), t) for t in training), default=(0.0, ""))


# ---- the state a question is asked in -----------------------------------------------------------

class SetupError(RuntimeError):
    pass


def _beside(state: WorldState, npc_id: str) -> WorldState:
    """The player on a free tile next to the NPC, talking to it (as tests/conftest.py does)."""
    tile = free_tile_beside(state, npc_id)
    if tile is not None:
        state.player.x, state.player.y = tile
        state.player.from_x, state.player.from_y = tile
    state, events = step(state, [Interact(npc=npc_id)])
    if state.player.talking_to != npc_id:
        raise SetupError(f"could not start talking to {npc_id}: {events}")
    return state


def _do(state: WorldState, npc_id: str, cmd, want_step: int, quest: str = "silent_bell") -> WorldState:
    if state.player.talking_to != npc_id:
        state = _beside(state, npc_id)
    if cmd is not None:
        state, events = step(state, cmd if isinstance(cmd, list) else [cmd])
        bad = [e for e in events if isinstance(e, Rejected)]
        if bad:
            raise SetupError(f"{cmd} refused: {bad}")
    at = state.quest_by_id(quest).step
    if at != want_step:
        raise SetupError(f"quest {quest} at step {at}, wanted {want_step}")
    return state


def advance_quest(state: WorldState, to_step: int) -> WorldState:
    """Play "The Silent Bell" up to ``to_step`` (-1 not started ... 5 complete) with the engine's
    own commands, as a player and a cooperative Bram would."""
    plan = [
        ("maren", AcceptQuest(quest=state.quest.id)),                      # -> 0 buy an ingot
        ("tobin", Buy(npc="tobin", item="iron_ingot")),                    # -> 1 give it to Bram
        ("bram", Give(npc="bram", item="iron_ingot")),                     # -> 2 ask for the clapper
        ("bram", [Say(npc="bram", text="May I have the bell clapper?"),
                  NpcReply(npc="bram", text="The clapper is ready.",
                           action=GiveItem(item="bell_clapper"))]),       # -> 3 bring it to Maren
        ("maren", Give(npc="maren", item="bell_clapper")),                 # -> 4 tell Hilda
        ("hilda", None),                                                   # -> 5 complete
    ]
    for i, (npc_id, cmd) in enumerate(plan[:to_step + 1]):
        state = _do(state, npc_id, cmd, i)
    return state


def _said(npc_id: str, words: str, reply: str, action=None) -> list:
    return [Say(npc=npc_id, text=words), NpcReply(npc=npc_id, text=reply, action=action)]


def advance_other_quest(state: WorldState, quest_id: str, to_step: int) -> WorldState:
    """Play one of the village's later quests up to ``to_step`` with the engine's own commands:
    each entry is (villager, commands, the quest's step after them)."""
    q = state.quest_by_id(quest_id)
    reply = {i: s.reply for i, s in enumerate(q.steps) if s.reply}
    plans = {
        "watch_lantern": [
            ("hilda", AcceptQuest(quest=quest_id), 0),                           # -> 0 tell Tobin
            ("tobin", _said("tobin", "The watch needs a lantern.", reply.get(0, "")), 1),
            ("bram", Buy(npc="bram", item="nails"), 1),                          # -> 1 trade nails
            ("tobin", Give(npc="tobin", item="nails"), 2),                       # -> 2 ask for it
            ("tobin", _said("tobin", "May I have the lantern?", "Here.",
                            GiveItem(item="lantern")), 3),                       # -> 3 to Hilda
            ("hilda", Give(npc="hilda", item="lantern"), 4),                     # -> 4 complete
        ],
        "honest_price": [
            ("bram", AcceptQuest(quest=quest_id), 0),                            # -> 0 persuade
            ("tobin", _said("tobin", "Bram pays 8 gold for an ingot.", reply.get(0, "")), 1),
            ("tobin", _said("tobin", "May I have the ingot?", "Here.",
                            GiveItem(item="iron_ingot")), 2),                    # -> 2 to Bram
            ("bram", Give(npc="bram", item="iron_ingot"), 3),                    # -> 3 complete
        ],
    }
    for npc_id, cmd, after in plans[quest_id]:
        if q.step >= to_step:
            break
        state = _do(state, npc_id, cmd, after, quest_id)
        q = state.quest_by_id(quest_id)
    return state


def question_state(q: Question, seed: int = 1, skin: str | None = None) -> WorldState:
    """A new game at the question's precondition, the player talking to the asked villager (who
    wears ``skin``, a skin id, if given) with no conversation behind them."""
    if q.quest == "silent_bell":
        state = advance_quest(new_game(seed), q.quest_step)
    else:
        state = advance_other_quest(new_game(seed), q.quest, q.quest_step)
    if state.player.talking_to is not None:
        state, _ = step(state, [EndTalk()])
    for npc in state.npcs:
        npc.memory = []
    for item, n in q.inventory.items():
        state.player.inventory[item] = state.player.inventory.get(item, 0) + n
    if q.gold is not None:
        state.player.gold = q.gold
    if skin is not None:
        state, events = step(state, [WearSkin(npc=q.npc, skin=skin)])
        if any(isinstance(e, Rejected) for e in events):
            raise SetupError(f"skin {skin} refused: {events}")
    return _beside(state, q.npc)


# ---- scoring ------------------------------------------------------------------------------------

@dataclass
class Outcome:
    q: Question
    voice: str
    text: str
    seconds: float
    grounded: bool | None   # None: the question has no fact
    action_ok: bool
    refused: bool | None    # None: not a false premise
    did: str                # what was committed, for the report
    fallback: bool = False
    error: str = ""


def agrees(text: str) -> bool:
    return bool(AGREEMENT.search(text)) and not NEGATION.search(text)


def committed(events) -> list[tuple[str, str]]:
    """The actions the events commit, as (kind, item): ("sale", x), ("give", x), ("start_quest", "")."""
    out = []
    for e in events:
        if isinstance(e, Traded):
            out.append(("sale" if e.to_player else "bought", e.item))
        elif isinstance(e, Gave) and e.to_player:
            out.append(("give", e.item))
        elif isinstance(e, QuestStarted):
            out.append(("start_quest", ""))
    return out


def action_ok(rule: str, did: list[tuple[str, str]]) -> bool:
    if rule in ("none", "no_sale"):
        return not did
    if rule == "start_quest":
        return ("start_quest", "") in did
    kind, item = rule.split(":")
    if kind == "sale":
        return did == [("sale", item)]
    return ("give", item) in did


def score(q: Question, voice: str, text: str, events, seconds: float, fallback: bool) -> Outcome:
    did = committed(events)
    grounded = bool(re.search(q.fact, text, re.IGNORECASE)) if q.fact else None
    refused = (not did and not agrees(text)) if q.premise else None
    return Outcome(q=q, voice=voice, text=text, seconds=seconds, grounded=grounded,
                   action_ok=action_ok(q.action, did), refused=refused,
                   did=",".join(f"{k}:{i}" if i else k for k, i in did) or "-", fallback=fallback)


def ask(responder, q: Question, voice: str, seed: int, skin: str | None) -> Outcome:
    from game.session import run_turn_sync
    try:
        state = question_state(q, seed, skin)
    except SetupError as e:
        return Outcome(q, voice, "", 0.0, False if q.fact else None, False,
                       False if q.premise else None, "-", error=f"setup: {e}")
    prepare = getattr(responder, "prepare", None)
    if prepare is not None:
        # As in the game: the villager's prompt head is computed when the conversation starts,
        # while the player types (game/session.py), so it is not part of the turn's time.
        from engine.dialogue import build_request
        prepare(build_request(state, q.npc, ""))
    t0 = time.perf_counter()
    state, turn, events = run_turn_sync(state, responder, q.npc, q.line)
    dt = time.perf_counter() - t0
    said = [e.text for e in events if isinstance(e, NpcSaid)]
    return score(q, voice, said[-1] if said else "", events, dt, turn.fallback)


class EngineOnly:
    """A voice that says exactly the fact the engine decided and proposes exactly its action: what
    a perfect phrasing would commit. Asking the set with it measures the engine's part alone (its
    reading of the line and the fact it grounds the reply in), in a second, with no model."""

    name = "engine"

    def respond(self, request, feedback=None, on_text=None, cancel=None):
        from engine.dialogue import DialogueProposal
        return DialogueProposal(text=request.fact or "Good day to you.", action=request.action)


# ---- quest completion ---------------------------------------------------------------------------

def run_demo(responder, seed: int, dressing: list[WearSkin] | None = None,
             out=lambda line: None) -> tuple[bool, WorldState]:
    """The demo script on a new game of ``seed`` with the villagers in ``dressing``'s skins, for the
    ticks a headless ``hearth play`` runs. True if "The Silent Bell" was completed."""
    from game.headless import Director, load_script
    from game.play_cli import DEFAULT_HEADLESS_TICKS
    state = new_game(seed)
    if dressing:
        state, _ = step(state, dressing)
    director = Director(state, responder, load_script(DEMO_SCRIPT, state), out=out)
    director.run(state.tick + DEFAULT_HEADLESS_TICKS)
    return director.state.quest.complete, director.state


# ---- report -------------------------------------------------------------------------------------

def rate(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def p95(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]


def totals(outs: list[Outcome]) -> dict[str, float]:
    return {
        "grounded": rate([o.grounded for o in outs if o.grounded is not None]),
        "action_ok": rate([o.action_ok for o in outs]),
        "premise_refused": rate([o.refused for o in outs if o.refused is not None]),
        "turn_p95_s": p95([o.seconds for o in outs if not o.error]),
    }


def frac(xs: list[bool]) -> str:
    return f"{sum(xs)}/{len(xs)}" if xs else "-"


def print_voice(voice: str, outs: list[Outcome]) -> None:
    print(f"\n== voice {voice}: {len(outs)} questions")
    print(f"{'kind':<16}{'n':>4}{'grounded':>10}{'action_ok':>11}{'premise':>9}")
    for kind in sorted({o.q.kind for o in outs}):
        ko = [o for o in outs if o.q.kind == kind]
        print(f"{kind:<16}{len(ko):>4}{frac([o.grounded for o in ko if o.grounded is not None]):>10}"
              f"{frac([o.action_ok for o in ko]):>11}"
              f"{frac([o.refused for o in ko if o.refused is not None]):>9}")
    for npc in NPCS:
        ko = [o for o in outs if o.q.npc == npc]
        if ko:
            print(f"{'npc ' + npc:<16}{len(ko):>4}"
                  f"{frac([o.grounded for o in ko if o.grounded is not None]):>10}"
                  f"{frac([o.action_ok for o in ko]):>11}"
                  f"{frac([o.refused for o in ko if o.refused is not None]):>9}")
    for o in outs:
        marks = "".join([
            "" if o.grounded is None else ("G" if o.grounded else "g"),
            "A" if o.action_ok else "a",
            "" if o.refused is None else ("P" if o.refused else "p")])
        extra = " [fallback]" if o.fallback else ""
        extra += f" [{o.error}]" if o.error else ""
        print(f"  {marks:<3} q{o.q.n:<3} {o.q.npc:<5} s{o.q.quest_step:<2} {o.seconds:5.2f}s "
              f"want={o.q.action} did={o.did}{extra} | {o.q.line} -> {o.text}")
    t = totals(outs)
    print(f"voice={voice} grounded={t['grounded']:.3f} action_ok={t['action_ok']:.3f} "
          f"premise_refused={t['premise_refused']:.3f} turn_p95_s={t['turn_p95_s']:.3f}")


def print_overlap(questions: list[Question]) -> float:
    training = training_lines()
    worst = 0.0
    print(f"{len(training)} training player lines under assets/")
    for q in questions:
        sim, near = nearest_training_line(q.line, training)
        worst = max(worst, sim)
        print(f"{sim:.2f}  q{q.n:<3} {q.line!r}  ~ {near!r}")
    print(f"max_overlap={worst:.2f} (limit {OVERLAP_LIMIT})")
    return worst


def pick(questions: list[Question], limit: int | None) -> list[Question]:
    """``limit`` questions spread over the whole set (every villager and kind gets a share)."""
    if not limit or limit >= len(questions):
        return questions
    stride = len(questions) / limit
    return [questions[int(i * stride)] for i in range(limit)]


def main() -> int:
    from game.village_skins import shipped_skins
    skin_names = [s["dir"] for s in shipped_skins()]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", default=",".join(["base", "village", *skin_names]),
                    help=f"comma-separated: base (the plain model), village (the world-tuned "
                         f"village voice) and/or demo skins ({', '.join(skin_names)})")
    ap.add_argument("--seeds", type=int, default=10, help="demo runs for quest completion (seeds 1..N)")
    ap.add_argument("--question-seed", type=int, default=1, help="world seed the questions are asked in")
    ap.add_argument("--limit", type=int, default=None, help="ask only this many questions (spread out)")
    ap.add_argument("--overlap", action="store_true", help="only print the overlap with training lines")
    ap.add_argument("--questions", type=Path, default=QUESTIONS,
                    help="question file (default: %(default)s; a held-out set: "
                         "tests/data/dialogue_questions_heldout.toml)")
    ap.add_argument("--engine", action="store_true",
                    help="only the engine's part: reply with exactly the decided fact and action "
                         "(no model, no quest runs)")
    args = ap.parse_args()

    questions = load_questions(args.questions)
    if args.overlap:
        return 0 if print_overlap(questions) < OVERLAP_LIMIT else 1
    if args.engine:
        outs = [ask(EngineOnly(), q, "engine", args.question_seed, None) for q in questions]
        print_voice("engine", outs)
        return 0
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    unknown = [v for v in voices if v not in ("base", "village") and v not in skin_names]
    if unknown:
        ap.error(f"unknown voice(s) {unknown}: base, village or one of {skin_names}")
    asked = pick(questions, args.limit)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from game.village_skins import dress_villagers, install_shipped
    from game.voices import load_model_voice
    responder = load_model_voice(say=say)
    village = responder.village  # None when the village voice is not available
    installed = install_shipped(say=say)
    print(f"dialogue bench: {len(asked)} of {len(questions)} questions, voices {voices}, "
          f"question seed {args.question_seed}, quest seeds 1..{args.seeds}")

    everything: list[Outcome] = []
    per_voice: dict[str, list[Outcome]] = {}
    for voice in voices:
        if voice == "village" and village is None:
            say("the village voice is not available: skipped")
            continue
        # base: the plain model; village and every skin: as the game speaks (the village voice,
        # alone or under the skin).
        responder.village = None if voice == "base" else village
        skin = None if voice in ("base", "village") else installed.get(voice)
        if voice not in ("base", "village") and skin is None:
            say(f"skin {voice} is not installed: skipped")
            continue
        outs = []
        for i, q in enumerate(asked, 1):
            o = ask(responder, q, voice, args.question_seed, skin)
            outs.append(o)
            say(f"[{voice} {i}/{len(asked)}] {q.npc}: {q.line} -> {o.text!r} ({o.seconds:.2f}s)")
        if getattr(responder, "failed_skins", {}).get(skin or ""):
            say(f"skin {voice} failed to load: {responder.failed_skins[skin]}")
        per_voice[voice] = outs
        everything += outs
        print_voice(voice, outs)

    responder.village = village  # as the game plays
    print("\n== quest completion: demo script, model voice, villagers in the shipped skins")
    done = 0
    for seed in range(1, args.seeds + 1):
        t0 = time.perf_counter()
        ok, end = run_demo(responder, seed, dress_villagers(new_game(seed), say=say))
        done += ok
        q = end.quest
        where = ("complete" if q.complete else "not started" if not q.started
                 else f"stalled at step {q.step + 1}/{len(q.steps)} ({q.current.description})")
        print(f"seed {seed}: {where} ({time.perf_counter() - t0:.0f}s)")
        say(f"[quest seed {seed}] {where}")

    print()
    for voice, outs in per_voice.items():
        t = totals(outs)
        print(f"{voice}: grounded={t['grounded']:.3f} action_ok={t['action_ok']:.3f} "
              f"premise_refused={t['premise_refused']:.3f} turn_p95_s={t['turn_p95_s']:.3f}")
    t = totals(everything)
    print(f"grounded={t['grounded']:.3f} action_ok={t['action_ok']:.3f} "
          f"premise_refused={t['premise_refused']:.3f} quest_completion={done}/{args.seeds} "
          f"turn_p95_s={t['turn_p95_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
