"""Short lines telling the player what just happened (or why it did not).

In the window they come from a tick's events (``describe``); on the command line every progress
line, note and warning goes through ``note``, to stderr, so stdout holds only a command's result.
"""

from __future__ import annotations

import sys

from engine.commands import (
    Event, Gave, GoldMinted, QuestAdvanced, QuestCompleted, QuestStarted, Rejected, Rejection, Traded,
)
from engine.state import WorldState

#: Movement refusals are the normal feel of walking into a wall, not news.
QUIET_REJECTIONS = frozenset({"move"})

_REASONS = {
    Rejection.TOO_FAR: "too far away",
    Rejection.NOT_TALKING: "you are not talking to them",
    Rejection.NOT_FOR_SALE: "they don't sell that",
    Rejection.OUT_OF_STOCK: "out of stock",
    Rejection.INSUFFICIENT_GOLD: "not enough gold",
    Rejection.PLAYER_LACKS_ITEM: "you don't have that",
    Rejection.NPC_WONT_BUY: "they don't buy that",
    Rejection.NPC_CANNOT_AFFORD: "they can't afford it",
    Rejection.QUEST_ITEM: "that is needed for the quest",
    Rejection.QUEST_NOT_AVAILABLE: "the quest is not on offer",
    Rejection.NOT_QUEST_GIVER: "ask the quest giver",
    Rejection.TEXT_EMPTY: "say something first",
    Rejection.TEXT_TOO_LONG: "that is too long to say",
}


def rejection_text(ev: Rejected) -> str:
    reason = _REASONS.get(ev.reason, ev.reason.value.replace("_", " "))
    if ev.command == "npc_reply":
        # The line was valid when generated but the world moved on before it was committed.
        return f"The reply did not land ({ev.reason.value.replace('_', ' ')}). Try again."
    return f"Can't {ev.command.replace('_', ' ')}: {reason}."


def describe(state: WorldState, ev: Event) -> tuple[str, bool] | None:
    """``(text, is_refusal)`` for an event worth a notice, else ``None``."""

    def item_name(item: str, qty: int = 1) -> str:
        name = state.items[item].name if item in state.items else item
        return name if qty == 1 else f"{qty} x {name}"

    def npc_name(npc_id: str) -> str:
        npc = state.npc(npc_id)
        return npc.name if npc else npc_id

    match ev:
        case Rejected(command=command) if command not in QUIET_REJECTIONS:
            return rejection_text(ev), True
        case Traded(npc=npc, item=item, qty=qty, gold=gold, to_player=True):
            return f"Bought {item_name(item, qty)} from {npc_name(npc)} for {gold} gold.", False
        case Traded(npc=npc, item=item, qty=qty, gold=gold, to_player=False):
            return f"Sold {item_name(item, qty)} to {npc_name(npc)} for {gold} gold.", False
        case Gave(npc=npc, item=item, qty=qty, to_player=True):
            return f"{npc_name(npc)} gave you the {item_name(item, qty)}.", False
        case Gave(npc=npc, item=item, qty=qty, to_player=False):
            return f"You gave the {item_name(item, qty)} to {npc_name(npc)}.", False
        case QuestStarted(quest=quest):
            return f"Quest started: {(state.quest_by_id(quest) or state.quest).title}.", False
        case QuestAdvanced(quest=quest, step=step):
            q = state.quest_by_id(quest) or state.quest
            return f"{q.title}: step {step + 1} of {len(q.steps)}.", False
        case QuestCompleted(quest=quest):
            return f"Quest complete: {(state.quest_by_id(quest) or state.quest).title}!", False
        case GoldMinted(amount=amount):
            return f"Reward: {amount} gold.", False
    return None


def note(line: str) -> None:
    """Tell the person at the command line ``line`` (on stderr, at once)."""
    print(line, file=sys.stderr, flush=True)
