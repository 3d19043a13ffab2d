"""Playing without a window: a script of high-level player actions driven tick by tick.

A script line is one action; the director turns it into engine commands (``Move`` one tile at a
time, ``Interact``, ``Say`` ...), so the recorded input log holds only engine commands. Dialogue is
generated synchronously between ticks here, which keeps headless runs reproducible.

Script format (one action per line, ``#`` starts a comment)::

    goto maren            walk until within talking range of an NPC (or: goto 12,5 / goto "the plaza")
    talk maren Hello!     open a conversation if needed and say the rest of the line
    buy tobin iron_ingot [QTY]
    sell tobin rope [QTY]
    give bram iron_ingot [QTY]
    accept [QUEST]        accept the quest offered by the NPC you are talking to (or QUEST, by id)
    leave                 end the conversation
    wait 120              let 120 ticks pass
"""

from __future__ import annotations

import shlex
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import rules
from engine.commands import (
    AcceptQuest, Buy, Command, EndTalk, Event, Gave, GoldMinted, Interact, Move, NpcSaid, PlayerSaid,
    QuestAdvanced, QuestCompleted, QuestStarted, Rejected, Say, Sell, Give, TalkStarted, Traded,
)
from engine.dialogue import DialogueTurn
from engine.intent import offered_quest
from engine.hashing import state_hash
from engine.replay import Recorder
from engine.sim import step
from engine.state import TICKS_PER_SECOND, WorldState
from engine.world import distance_field
from npc.responder import Responder

GOTO_TIMEOUT_TICKS = 60 * TICKS_PER_SECOND


class ScriptError(ValueError):
    pass


@dataclass(frozen=True)
class Action:
    line: int
    verb: str
    args: tuple[str, ...]


_ARITY = {"goto": (1, 1), "talk": (2, 999), "buy": (2, 3), "sell": (2, 3), "give": (2, 3),
          "accept": (0, 1), "leave": (0, 0), "wait": (1, 1)}


def parse_script(text: str, state: WorldState | None = None) -> list[Action]:
    actions = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.split(None, 1)[0].lower() == "talk":
                parts = line.split(None, 2)  # the words are free text, '#' included
            else:
                parts = shlex.split(line.split("#", 1)[0])
        except ValueError as e:
            raise ScriptError(f"line {n}: {e}") from None
        verb, args = parts[0].lower(), tuple(parts[1:])
        if verb not in _ARITY:
            raise ScriptError(f"line {n}: unknown action {verb!r} (known: {', '.join(sorted(_ARITY))})")
        lo, hi = _ARITY[verb]
        if not lo <= len(args) <= hi:
            raise ScriptError(f"line {n}: {verb} takes {lo}..{hi} arguments, got {len(args)}")
        if verb in ("wait",) or (verb in ("buy", "sell", "give") and len(args) == 3):
            if not args[-1].isdigit():
                raise ScriptError(f"line {n}: {verb}: {args[-1]!r} is not a whole number")
        if state is not None and verb in ("talk", "buy", "sell", "give") and state.npc(args[0]) is None:
            raise ScriptError(f"line {n}: unknown npc {args[0]!r}")
        if state is not None and verb in ("buy", "sell", "give") and args[1] not in state.items:
            raise ScriptError(f"line {n}: unknown item {args[1]!r}")
        if state is not None and verb == "accept" and args and state.quest_by_id(args[0]) is None:
            raise ScriptError(f"line {n}: unknown quest {args[0]!r} "
                              f"(known: {', '.join(q.id for q in state.all_quests)})")
        actions.append(Action(line=n, verb=verb, args=args))
    return actions


def clock(state: WorldState) -> str:
    from engine.state import TICKS_PER_HOUR
    minutes = (state.tick % TICKS_PER_HOUR) * 60 // TICKS_PER_HOUR
    return f"day {state.day} {state.hour:02d}:{minutes:02d}"


class Director:
    """Runs a script against the engine, one tick at a time."""

    def __init__(self, state: WorldState, responder: Responder, actions: list[Action],
                 record: bool = False, out: Callable[[str], None] = print):
        self.state = state
        self.responder = responder
        self.actions = deque(actions)
        self.recorder = Recorder(state) if record else None
        self.out = out
        self._queued: list[Command] = []
        self._current: Action | None = None
        self._started_at = 0
        self._walk_from: tuple[int, int] | None = None
        self._walk_steps = 0
        self.turns: list[dict] = []
        self.rejections = 0

    # -- stepping ------------------------------------------------------------------------------

    def _step(self, cmds: list[Command]) -> list[Event]:
        if self.recorder is not None:
            self.state, events = self.recorder.step(self.state, cmds)
        else:
            self.state, events = step(self.state, cmds)
        self._report(events)
        return events

    @property
    def finished(self) -> bool:
        return self._current is None and not self.actions

    def run(self, ticks: int) -> WorldState:
        """Advance until ``state.tick == ticks`` (absolute), working through the script."""
        while self.state.tick < ticks:
            cmds = self._queued + self._next_commands()
            self._queued = []
            self._step(cmds)
        if self._current is not None or self.actions:
            left = len(self.actions) + (self._current is not None)
            self.out(f"[{clock(self.state)}] out of ticks with {left} script action(s) left")
        return self.state

    # -- the script ----------------------------------------------------------------------------

    def _next_commands(self) -> list[Command]:
        while True:
            if self._current is None:
                if not self.actions:
                    return []
                self._current = self.actions.popleft()
                self._started_at = self.state.tick
                self._walk_from = None
            done, cmds = self._advance(self._current)
            if done:
                self._current = None
                if cmds:
                    return cmds
                continue
            return cmds

    def _advance(self, a: Action) -> tuple[bool, list[Command]]:
        s = self.state
        p = s.player
        match a.verb:
            case "wait":
                return s.tick - self._started_at + 1 >= int(a.args[0]), []
            case "goto":
                return self._goto(a)
            case "talk" | "accept" if self._queued:
                return False, []  # the last reply commits first: a line answers the line before it
            case "talk":
                npc_id, words = a.args[0], " ".join(a.args[1:])
                if p.talking_to != npc_id:
                    npc = s.npc(npc_id)
                    if npc is not None and not rules.near(s, npc):
                        self.out(f"[{clock(s)}] line {a.line}: {npc.name} is too far away to talk to")
                        return True, []
                    self._step([Interact(npc=npc_id)])
                self._dialogue(npc_id, words)
                return True, []
            case "buy" | "sell" | "give":
                qty = int(a.args[2]) if len(a.args) == 3 else 1
                cls = {"buy": Buy, "sell": Sell, "give": Give}[a.verb]
                pre = [Interact(npc=a.args[0])] if p.talking_to != a.args[0] else []
                return True, pre + [cls(npc=a.args[0], item=a.args[1], qty=qty)]
            case "accept":
                talking = s.npc(p.talking_to) if p.talking_to else None
                quest = (s.quest_by_id(a.args[0]) if a.args
                         else offered_quest(s, talking) if talking is not None else s.quest)
                # Only if the villager has not already started it in conversation.
                return True, [] if quest is None or quest.started else [AcceptQuest(quest=quest.id)]
            case "leave":
                return True, [EndTalk()] if p.talking_to else []
        raise ScriptError(f"line {a.line}: unknown action {a.verb}")

    def _goto_target(self, a: Action) -> tuple[int, int, int] | None:
        """(x, y, range) to walk to, or None if the target is unknown."""
        s = self.state
        t = a.args[0]
        npc = s.npc(t)
        if npc is not None:
            return npc.x, npc.y, rules.TALK_RANGE
        if t in s.map.places:
            x, y = s.map.places[t]
            return x, y, 1
        if "," in t:
            try:
                x, y = (int(v) for v in t.split(","))
                return x, y, 0
            except ValueError:
                pass
        return None

    def _goto(self, a: Action) -> tuple[bool, list[Command]]:
        s = self.state
        p = s.player
        target = self._goto_target(a)
        if target is None:
            self.out(f"[{clock(s)}] line {a.line}: don't know where {a.args[0]!r} is")
            return True, []
        if self._walk_from is None:
            self._walk_from = (p.x, p.y)
            self._walk_steps = 0
        tx, ty, rng_ = target
        if max(abs(p.x - tx), abs(p.y - ty)) <= rng_ and p.move_left <= 1:
            if self._walk_steps:
                self.out(f"[{clock(s)}] You walked from {self._walk_from} to ({p.x}, {p.y}) "
                         f"toward {a.args[0]} ({self._walk_steps} steps)")
            return True, []
        if s.tick - self._started_at > GOTO_TIMEOUT_TICKS:
            self.out(f"[{clock(s)}] line {a.line}: gave up walking to {a.args[0]} (no way through)")
            return True, []
        if p.move_left > 1:
            return False, []  # the current step ends next tick; a Move then continues the walk
        m = s.map
        dist = distance_field(m.tiles, m.width, m.height, tx, ty)
        best, move = None, None
        for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
            nx, ny = p.x + dx, p.y + dy
            if not (0 <= nx < m.width and 0 <= ny < m.height):
                continue
            d = dist[ny * m.width + nx]
            if d < 0 or any(n.x == nx and n.y == ny for n in s.npcs):
                continue
            if best is None or d < best:
                best, move = d, (dx, dy)
        if move is None:
            return False, []  # boxed in by NPCs for now: wait a tick
        self._walk_steps += 1
        return False, [Move(dx=move[0], dy=move[1])]

    def _dialogue(self, npc_id: str, words: str) -> None:
        self._step([Say(npc=npc_id, text=words)])
        turn = DialogueTurn(npc_id, words)
        reply = None
        error = None
        while reply is None:
            try:
                proposal = self.responder.respond(turn.request(self.state), turn.feedback)
            except Exception as e:  # a broken voice must not end the session
                error = f"{type(e).__name__}: {e}"
                turn.attempts += 1
                reply = turn.give_up(self.state)
                break
            reply = turn.offer(self.state, proposal)
        self._queued.append(reply)
        self.turns.append({"npc": npc_id, "attempts": turn.attempts, "fallback": turn.fallback,
                           "rejections": [r.value for r in turn.rejections], "error": error})

    # -- narration -----------------------------------------------------------------------------

    def _name(self, npc_id: str) -> str:
        n = self.state.npc(npc_id)
        return n.name if n else npc_id

    def _item(self, item: str, qty: int = 1) -> str:
        it = self.state.items.get(item)
        name = it.name if it else item
        return name if qty == 1 else f"{qty} x {name}"

    def _report(self, events: list[Event]) -> None:
        t = clock(self.state)
        for e in events:
            match e:
                case TalkStarted(npc=n):
                    self.out(f"[{t}] You start talking to {self._name(n)}")
                case PlayerSaid(npc=n, text=text):
                    self.out(f"[{t}] You -> {self._name(n)}: {text}")
                case NpcSaid(npc=n, text=text, action=action):
                    extra = f"  [{type(action).__struct_config__.tag}]" if action else ""
                    self.out(f"[{t}] {self._name(n)}: {text}{extra}")
                case Traded(npc=n, item=item, qty=qty, gold=gold, to_player=True):
                    self.out(f"[{t}] You bought {self._item(item, qty)} from {self._name(n)} for {gold} gold")
                case Traded(npc=n, item=item, qty=qty, gold=gold, to_player=False):
                    self.out(f"[{t}] You sold {self._item(item, qty)} to {self._name(n)} for {gold} gold")
                case Gave(npc=n, item=item, qty=qty, to_player=to_player):
                    if to_player:
                        self.out(f"[{t}] {self._name(n)} gave you {self._item(item, qty)}")
                    else:
                        self.out(f"[{t}] You gave {self._item(item, qty)} to {self._name(n)}")
                case QuestStarted(quest=q):
                    self.out(f"[{t}] Quest started: {self.state.quest_by_id(q).title}")
                case QuestAdvanced(quest=q, step=i):
                    self.out(f"[{t}] Quest: {self.state.quest_by_id(q).steps[i].description}")
                case QuestCompleted(quest=q):
                    self.out(f"[{t}] Quest complete: {self.state.quest_by_id(q).title}")
                case GoldMinted(amount=a):
                    self.out(f"[{t}] Reward: {a} gold")
                case Rejected(command=c, reason=r) if c != "move":
                    self.rejections += 1
                    self.out(f"[{t}] Refused ({c}): {r.value.replace('_', ' ')}")


def summary(state: WorldState) -> list[str]:
    p = state.player
    inv = ", ".join(f"{state.items[i].name} x{n}" for i, n in sorted(p.inventory.items())) or "nothing"
    lines = [f"ticks: {state.tick} ({clock(state)})",
             f"player: at ({p.x}, {p.y}), {p.gold} gold, carrying {inv}"]
    for q in state.all_quests:
        qs = ("not started" if not q.started else "complete" if q.complete
              else f"step {q.step + 1}/{len(q.steps)}: {q.current.description}")
        lines.append(f"quest '{q.title}': {qs}")
    for n in state.npcs:
        lines.append(f"  {n.name} the {n.role}: at ({n.x}, {n.y}), {n.activity or 'idle'}, "
                     f"{n.gold} gold, skin {n.skin or 'base voice'}")
    lines.append(f"state-hash: {state_hash(state)}")
    return lines


def walkthrough_script(quest_id: str) -> Path:
    """The script that plays one quest of the village from a new game: ``assets/demo.script`` for
    the first, ``assets/quests/<id>.script`` for the others."""
    from assets import ASSETS_DIR

    own = ASSETS_DIR / "quests" / f"{quest_id}.script"
    return own if own.exists() else ASSETS_DIR / "demo.script"


def load_script(path: Path, state: WorldState) -> list[Action]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScriptError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ScriptError(f"{path}: not UTF-8 text") from None
    try:
        return parse_script(text, state)
    except ScriptError as e:
        raise ScriptError(f"{path}: {e}") from None

