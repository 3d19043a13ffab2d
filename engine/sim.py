"""``step(state, inputs) -> (state, events)``: the only way the world changes.

Live play, headless runs, replay and tests all call it. It advances exactly one tick. The state is
updated in place and returned (copy it with ``engine.state.clone`` to keep the old one).
"""

from __future__ import annotations

from typing import Iterable

from engine import rng, rules
from engine.commands import (
    AcceptQuest, Buy, Command, EndTalk, Event, Gave, Give, GiveItem, GoldMinted, Interact,
    ItemConsumed, ItemMinted, Move, NpcActivity, NpcMoved, NpcReply, NpcSaid, PlayerMoved,
    PlayerSaid, QuestAdvanced, QuestCompleted, QuestStarted, Rejected, Rejection, Say, Sell,
    SellItem, SkinWorn, StartQuest, TalkEnded, TalkStarted, Traded, WearSkin, command_name,
)
from engine.state import (
    MAX_SAY_CHARS, MEMORY_TURNS, NPC_MOVE_TICKS, PLAYER_MOVE_TICKS, Npc, Quest, Turn,
    WorldState, add_items,
)
from engine.world import distance_field, walkable

_DIRS = {(0, -1): "up", (1, 0): "right", (0, 1): "down", (-1, 0): "left"}
_NEIGHBOURS = ((0, -1), (1, 0), (0, 1), (-1, 0))
#: At its post an NPC takes an idle step about once in this many move slots (seeded RNG).
_IDLE_ODDS = 6
_IDLE_RADIUS = 2


def step(state: WorldState, inputs: Iterable[Command] = ()) -> tuple[WorldState, list[Event]]:
    events: list[Event] = []
    # The player's step finishes before this tick's input, so a held key walks without a pause.
    _advance_player(state)
    for cmd in inputs:
        _apply(state, cmd, events)
    _advance_npcs(state, events)
    _check_quest(state, events)
    state.tick += 1
    return state, events


# ---- commands ----------------------------------------------------------------------------------

def _reject(events: list[Event], cmd: Command, reason: Rejection) -> None:
    events.append(Rejected(command=command_name(cmd), reason=reason))


def _apply(state: WorldState, cmd: Command, events: list[Event]) -> None:
    p = state.player
    match cmd:
        case Move(dx=dx, dy=dy):
            if (dx, dy) not in _DIRS:
                return _reject(events, cmd, Rejection.BAD_DIRECTION)
            if p.move_left > 0:
                return _reject(events, cmd, Rejection.STILL_MOVING)
            p.facing = _DIRS[(dx, dy)]
            nx, ny = p.x + dx, p.y + dy
            if not walkable(state.map, nx, ny) or any(n.x == nx and n.y == ny for n in state.npcs):
                return _reject(events, cmd, Rejection.BLOCKED)
            p.from_x, p.from_y, p.x, p.y = p.x, p.y, nx, ny
            p.move_left = PLAYER_MOVE_TICKS
            events.append(PlayerMoved(x=nx, y=ny))
            if p.talking_to is not None:
                npc = state.npc(p.talking_to)
                if npc is None or not rules.near(state, npc):
                    events.append(TalkEnded(npc=p.talking_to))
                    p.talking_to = None
        case Interact(npc=npc_id):
            npc = state.npc(npc_id)
            if npc is None:
                return _reject(events, cmd, Rejection.UNKNOWN_NPC)
            if not rules.near(state, npc):
                return _reject(events, cmd, Rejection.TOO_FAR)
            if p.talking_to is not None and p.talking_to != npc_id:
                events.append(TalkEnded(npc=p.talking_to))
            p.talking_to = npc_id
            events.append(TalkStarted(npc=npc_id))
            _quest_talk(state, npc_id, events)
        case EndTalk():
            if p.talking_to is None:
                return _reject(events, cmd, Rejection.NOT_TALKING)
            events.append(TalkEnded(npc=p.talking_to))
            p.talking_to = None
        case Say(npc=npc_id, text=text):
            npc, why = rules.check_talking(state, npc_id)
            if why:
                return _reject(events, cmd, why)
            clean = rules.clean_player_text(text, MAX_SAY_CHARS)
            _remember(state, npc, "player", clean)
            events.append(PlayerSaid(npc=npc_id, text=clean))
        case Buy(npc=npc_id, item=item, qty=qty):
            npc, why = rules.check_talking(state, npc_id)
            why = why or rules.check_buy(state, npc, item, qty)
            if why:
                return _reject(events, cmd, why)
            _sell_to_player(state, npc, item, qty, events)
        case Sell(npc=npc_id, item=item, qty=qty):
            npc, why = rules.check_talking(state, npc_id)
            why = why or rules.check_sell(state, npc, item, qty)
            if why:
                return _reject(events, cmd, why)
            price = npc.buys[item] * qty
            add_items(p.inventory, item, -qty)
            add_items(npc.inventory, item, qty)
            npc.gold -= price
            p.gold += price
            events.append(Traded(npc=npc_id, item=item, qty=qty, gold=price, to_player=False))
        case Give(npc=npc_id, item=item, qty=qty):
            npc, why = rules.check_talking(state, npc_id)
            why = why or rules.check_give(state, npc, item, qty)
            if why is None and state.items[item].quest and _quest_wanting(state, npc_id, item) is None:
                why = Rejection.QUEST_ITEM  # a quest item handed to the wrong person would strand the quest
            if why:
                return _reject(events, cmd, why)
            add_items(p.inventory, item, -qty)
            events.append(Gave(npc=npc_id, item=item, qty=qty, to_player=False))
            quest = _quest_wanting(state, npc_id, item)
            if quest is not None:
                # The quest uses one up (the smith melts the ingot, the bell takes the clapper).
                _consume(state, item, 1, f"quest {quest.id}", events)
                add_items(npc.inventory, item, qty - 1)
                _advance_quest(state, quest, events)
            else:
                add_items(npc.inventory, item, qty)
        case AcceptQuest(quest=quest_id):
            why = rules.check_accept_quest(state, quest_id)
            if why:
                return _reject(events, cmd, why)
            _start_quest(state.quest_by_id(quest_id), events)
        case WearSkin(npc=npc_id, skin=skin):
            npc = state.npc(npc_id)
            if npc is None:
                return _reject(events, cmd, Rejection.UNKNOWN_NPC)
            if skin is not None and not _is_skin_id(skin):
                return _reject(events, cmd, Rejection.BAD_SKIN_ID)
            npc.skin = skin
            events.append(SkinWorn(npc=npc_id, skin=skin))
        case NpcReply(npc=npc_id, text=text, action=action):
            npc, why = rules.check_talking(state, npc_id)
            why = why or rules.check_line(text)
            if why is None and action is not None:
                why = rules.check_npc_action(state, npc, action)
            if why:
                return _reject(events, cmd, why)
            # A message delivered or a villager won over: the reply to that line completes the step.
            spoken = rules.spoken_step_done(state, npc)
            _remember(state, npc, npc_id, text, action)
            events.append(NpcSaid(npc=npc_id, text=text, action=action))
            match action:
                case SellItem(item=item, qty=qty):
                    _sell_to_player(state, npc, item, qty, events)
                case GiveItem(item=item):
                    quest = rules.quest_receiving(state, npc_id, item)
                    if npc.inventory.get(item, 0) > 0:
                        add_items(npc.inventory, item, -1)  # goods the villager has: handed over
                    else:
                        _mint(state, item, 1, f"quest {quest.id}", events)  # made for the quest
                    add_items(p.inventory, item, 1)
                    events.append(Gave(npc=npc_id, item=item, qty=1, to_player=True))
                    _advance_quest(state, quest, events)
                case StartQuest(quest=quest_id):
                    _start_quest(state.quest_by_id(quest_id), events)
            if spoken is not None:
                _advance_quest(state, spoken, events)


def _is_skin_id(skin: str) -> bool:
    return len(skin) == 64 and all(c in "0123456789abcdef" for c in skin)


def _sell_to_player(state: WorldState, npc: Npc, item: str, qty: int, events: list[Event]) -> None:
    price = npc.sells[item] * qty
    add_items(npc.inventory, item, -qty)
    add_items(state.player.inventory, item, qty)
    state.player.gold -= price
    npc.gold += price
    events.append(Traded(npc=npc.id, item=item, qty=qty, gold=price, to_player=True))


def _remember(state: WorldState, npc: Npc, speaker: str, text: str, action=None) -> None:
    npc.memory.append(Turn(tick=state.tick, speaker=speaker, text=text, action=action))
    if len(npc.memory) > MEMORY_TURNS:
        del npc.memory[: len(npc.memory) - MEMORY_TURNS]


def _mint(state: WorldState, item: str, qty: int, reason: str, events: list[Event]) -> None:
    add_items(state.items_minted, item, qty)
    events.append(ItemMinted(item=item, qty=qty, reason=reason))


def _consume(state: WorldState, item: str, qty: int, reason: str, events: list[Event]) -> None:
    add_items(state.items_consumed, item, qty)
    events.append(ItemConsumed(item=item, qty=qty, reason=reason))


# ---- quest -------------------------------------------------------------------------------------

def _start_quest(quest: Quest, events: list[Event]) -> None:
    quest.step = 0
    events.append(QuestStarted(quest=quest.id))


def _advance_quest(state: WorldState, q: Quest, events: list[Event]) -> None:
    done = q.current
    if done is not None and done.reward_gold:
        state.player.gold += done.reward_gold
        state.gold_minted += done.reward_gold
        events.append(GoldMinted(amount=done.reward_gold, reason=f"quest {q.id} step {q.step}"))
    q.step += 1
    if q.complete:
        events.append(QuestCompleted(quest=q.id))
    else:
        events.append(QuestAdvanced(quest=q.id, step=q.step))


def _quest_wanting(state: WorldState, npc_id: str, item: str) -> Quest | None:
    """The first quest whose current step is giving this item to this villager."""
    return rules.quest_at_step(state, "give", npc_id, item)


def _quest_talk(state: WorldState, npc_id: str, events: list[Event]) -> None:
    for q in state.all_quests:
        s = q.current
        if s is not None and s.kind == "talk" and s.npc == npc_id:
            _advance_quest(state, q, events)


def _check_quest(state: WorldState, events: list[Event]) -> None:
    for q in state.all_quests:
        s = q.current
        if s is not None and s.kind == "obtain" and state.player.inventory.get(s.item or "", 0) > 0:
            _advance_quest(state, q, events)


# ---- movement ----------------------------------------------------------------------------------

def _advance_player(state: WorldState) -> None:
    p = state.player
    if p.move_left > 0:
        p.move_left -= 1
        if p.move_left == 0:
            p.from_x, p.from_y = p.x, p.y


def schedule_entry(npc: Npc, hour: int):
    current = npc.schedule[-1]  # before the first entry of the day: still doing last night's thing
    for e in npc.schedule:
        if e.hour <= hour:
            current = e
        else:
            break
    return current


def _advance_npcs(state: WorldState, events: list[Event]) -> None:
    m = state.map
    p = state.player
    hour = state.hour
    for npc in state.npcs:
        if npc.move_left > 0:
            npc.move_left -= 1
            if npc.move_left == 0:
                npc.from_x, npc.from_y = npc.x, npc.y
            continue
        # NPCs stand still while the player talks to them; others only move on their own beat.
        if p.talking_to == npc.id or (state.tick + _offset(npc.id)) % NPC_MOVE_TICKS:
            continue
        entry = schedule_entry(npc, hour)
        if npc.activity != entry.activity:
            npc.activity = entry.activity
            events.append(NpcActivity(npc=npc.id, activity=entry.activity))
        dist = distance_field(m.tiles, m.width, m.height, entry.x, entry.y)
        here = dist[npc.y * m.width + npc.x]
        target = None
        if here > 0:
            best = here
            for dx, dy in _NEIGHBOURS:
                nx, ny = npc.x + dx, npc.y + dy
                if 0 <= nx < m.width and 0 <= ny < m.height:
                    d = dist[ny * m.width + nx]
                    if 0 <= d < best and not _occupied(state, nx, ny):
                        best, target = d, (nx, ny)
        elif here == 0:
            state.rng, roll = rng.below(state.rng, _IDLE_ODDS * 4)
            if roll < 4:
                dx, dy = _NEIGHBOURS[roll]
                nx, ny = npc.x + dx, npc.y + dy
                if (walkable(m, nx, ny) and abs(nx - entry.x) + abs(ny - entry.y) <= _IDLE_RADIUS
                        and not _occupied(state, nx, ny)):
                    target = (nx, ny)
        else:
            # Off its path graph (cannot happen with validated data): move toward the post anyway.
            target = None
        if target is not None:
            nx, ny = target
            npc.facing = _DIRS[(nx - npc.x, ny - npc.y)]
            npc.from_x, npc.from_y, npc.x, npc.y = npc.x, npc.y, nx, ny
            npc.move_left = NPC_MOVE_TICKS
            events.append(NpcMoved(npc=npc.id, x=nx, y=ny))


def _offset(npc_id: str) -> int:
    # A stable per-NPC beat so they do not all step on the same tick (no hash(): it is salted).
    return sum(npc_id.encode()) % NPC_MOVE_TICKS


def _occupied(state: WorldState, x: int, y: int) -> bool:
    p = state.player
    if p.x == x and p.y == y:
        return True
    for n in state.npcs:
        if n.x == x and n.y == y:
            return True
    return False

