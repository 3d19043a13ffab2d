"""Rule checks. Each returns ``None`` when the action is legal or a ``Rejection`` saying why not.

The same checks serve player commands and the actions a language model proposes for an NPC, so a
proposal can never do what the rules would refuse a player.
"""

from __future__ import annotations

import unicodedata

from engine.commands import GiveItem, NpcAction, Rejection, SellItem, StartQuest
from engine.intent import PERSUADE, TELL, Intent, recognise
from engine.state import MAX_NPC_LINE_CHARS, Npc, Quest, WorldState

#: How far (Chebyshev distance, in tiles) the player may be from an NPC to talk or trade.
TALK_RANGE = 2


def near(state: WorldState, npc: Npc) -> bool:
    p = state.player
    return max(abs(p.x - npc.x), abs(p.y - npc.y)) <= TALK_RANGE


def check_talking(state: WorldState, npc_id: str) -> tuple[Npc | None, Rejection | None]:
    npc = state.npc(npc_id)
    if npc is None:
        return None, Rejection.UNKNOWN_NPC
    if state.player.talking_to != npc_id:
        return npc, Rejection.NOT_TALKING
    return npc, None


def check_buy(state: WorldState, npc: Npc, item: str, qty: int, price: int | None = None) -> Rejection | None:
    if item not in state.items:
        return Rejection.UNKNOWN_ITEM
    if not isinstance(qty, int) or qty <= 0 or qty > 99:
        return Rejection.BAD_QUANTITY
    if item not in npc.sells:
        return Rejection.NOT_FOR_SALE
    if price is not None and price != npc.sells[item]:
        return Rejection.WRONG_PRICE
    if npc.inventory.get(item, 0) < qty:
        return Rejection.OUT_OF_STOCK
    if state.player.gold < npc.sells[item] * qty:
        return Rejection.INSUFFICIENT_GOLD
    return None


def check_sell(state: WorldState, npc: Npc, item: str, qty: int) -> Rejection | None:
    if item not in state.items:
        return Rejection.UNKNOWN_ITEM
    if not isinstance(qty, int) or qty <= 0 or qty > 99:
        return Rejection.BAD_QUANTITY
    if state.items[item].quest:
        return Rejection.QUEST_ITEM
    if state.player.inventory.get(item, 0) < qty:
        return Rejection.PLAYER_LACKS_ITEM
    if item not in npc.buys:
        return Rejection.NPC_WONT_BUY
    if npc.gold < npc.buys[item] * qty:
        return Rejection.NPC_CANNOT_AFFORD
    return None


def check_give(state: WorldState, npc: Npc, item: str, qty: int) -> Rejection | None:
    if item not in state.items:
        return Rejection.UNKNOWN_ITEM
    if not isinstance(qty, int) or qty <= 0 or qty > 99:
        return Rejection.BAD_QUANTITY
    if state.player.inventory.get(item, 0) < qty:
        return Rejection.PLAYER_LACKS_ITEM
    return None


def check_accept_quest(state: WorldState, quest_id: str) -> Rejection | None:
    q = state.quest_by_id(quest_id)
    if q is None:
        return Rejection.UNKNOWN_QUEST
    if q.started:
        return Rejection.QUEST_NOT_AVAILABLE
    if state.player.talking_to != q.giver:
        return Rejection.NOT_QUEST_GIVER
    return None


def intended_action(state: WorldState, npc: Npc, intent: Intent) -> NpcAction | None:
    """The one action the engine takes for this intent, if any: a sale only when the player asked
    to buy goods this villager has and the player can pay for, the quest hand-over only when asked
    at the step that calls for it, the quest's start only when help is offered to its giver."""
    match intent.kind:
        case "buy" if intent.item in npc.sells:
            action = SellItem(item=intent.item, price=npc.sells[intent.item], qty=intent.qty)
        case "give" if intent.item is not None:
            action = GiveItem(item=intent.item)
        case "accept":
            action = StartQuest(quest=intent.quest or state.quest.id)
        case _:
            return None
    return action if _action_allowed(state, npc, action) is None else None


def requested_action(state: WorldState, npc: Npc) -> NpcAction | None:
    """The action the player's latest line asks of this NPC, while it is still unanswered. The
    sim's check of a reply and a replay re-derive it from the same state and words."""
    if not npc.memory or npc.memory[-1].speaker != "player":
        return None
    return intended_action(state, npc, recognise(state, npc.id, npc.memory[-1].text))


def spoken_step_done(state: WorldState, npc: Npc) -> Quest | None:
    """The quest whose current step the player's latest, still unanswered line to this NPC does (a
    message delivered, a villager persuaded), or None. The engine decides it from the words; the
    reply to that line completes the step."""
    if not npc.memory or npc.memory[-1].speaker != "player":
        return None
    intent = recognise(state, npc.id, npc.memory[-1].text)
    if intent.kind not in (TELL, PERSUADE):
        return None
    return state.quest_by_id(intent.quest)


def quest_at_step(state: WorldState, kind: str, npc_id: str, item: str) -> Quest | None:
    """The first quest whose current step is of ``kind`` with this villager and this item:
    "receive" (the villager hands it to the player) or "give" (the player brings it)."""
    for q in state.all_quests:
        s = q.current
        if s is not None and s.kind == kind and s.npc == npc_id and s.item == item:
            return q
    return None


def quest_receiving(state: WorldState, npc_id: str, item: str) -> Quest | None:
    """The first quest whose current step is this villager handing this item to the player."""
    return quest_at_step(state, "receive", npc_id, item)


def _action_allowed(state: WorldState, npc: Npc, action: NpcAction) -> Rejection | None:
    """Could this NPC take this action now, had the player asked for it?"""
    match action:
        case SellItem(item=item, price=price, qty=qty):
            return check_buy(state, npc, item, qty, price)
        case GiveItem(item=item):
            if item not in state.items:
                return Rejection.UNKNOWN_ITEM
            if quest_receiving(state, npc.id, item) is None:
                return Rejection.QUEST_STEP_MISMATCH
            return None
        case StartQuest(quest=quest_id):
            quest = state.quest_by_id(quest_id)
            if quest is None:
                return Rejection.UNKNOWN_QUEST
            if npc.id != quest.giver:
                return Rejection.NOT_QUEST_GIVER
            if quest.started:
                return Rejection.QUEST_NOT_AVAILABLE
            return None
    return Rejection.UNKNOWN_ITEM  # unreachable for well-typed input


def check_npc_action(state: WorldState, npc: Npc, action: NpcAction) -> Rejection | None:
    """May this NPC take this action right now? Only the rules allow it and only if it is the
    action the player's latest line asked for: a reply cannot sell what was only mentioned, or
    start the quest when the player asked what is for sale."""
    why = _action_allowed(state, npc, action)
    if why is None and requested_action(state, npc) != action:
        return Rejection.NOT_REQUESTED
    return why


def possible_npc_actions(state: WorldState, npc: Npc) -> list[NpcAction]:
    """Every action this NPC could take for some request right now, in a deterministic order."""
    out: list[NpcAction] = []
    for item in sorted(npc.sells):
        a = SellItem(item=item, price=npc.sells[item])
        if _action_allowed(state, npc, a) is None:
            out.append(a)
    for q in state.all_quests:
        step = q.current
        if step is not None and step.kind == "receive" and step.npc == npc.id and step.item:
            give = GiveItem(item=step.item)
            if give not in out:
                out.append(give)
    for q in state.all_quests:
        start = StartQuest(quest=q.id)
        if _action_allowed(state, npc, start) is None:
            out.append(start)
    return out


def check_line(text: str, max_chars: int = MAX_NPC_LINE_CHARS) -> Rejection | None:
    """Shape checks for a line an NPC would speak."""
    if not text or not text.strip():
        return Rejection.TEXT_EMPTY
    if len(text) > max_chars:
        return Rejection.TEXT_TOO_LONG
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") :
            return Rejection.TEXT_BAD_CHARS
    return None


def clean_player_text(text: str, max_chars: int) -> str:
    """What the player typed, made safe to store: control and unassigned characters dropped,
    lone surrogates replaced, whitespace collapsed, length capped."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace") if _has_surrogates(text) else text
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(" " if ch in "\t\n\r" else "")
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())[:max_chars]


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
