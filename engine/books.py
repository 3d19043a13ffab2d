"""The world's books: every good and every coin is held by someone, and only rules create or
destroy them (with an event saying so). Used to check that nothing else ever does."""

from __future__ import annotations

from collections import Counter

from engine.commands import GoldMinted, ItemConsumed, ItemMinted


def world_totals(state) -> tuple[Counter, int]:
    """(goods by item, gold) held by the player and every NPC together."""
    items = Counter(state.player.inventory)
    gold = state.player.gold
    for n in state.npcs:
        items.update(n.inventory)
        gold += n.gold
    return items, gold


def explained(before: tuple[Counter, int], after: tuple[Counter, int], events) -> bool:
    """Whether the change of the books from ``before`` to ``after`` is exactly what ``events``
    minted and consumed."""
    items, gold = Counter(before[0]), before[1]
    for e in events:
        if isinstance(e, ItemMinted):
            items[e.item] += e.qty
        elif isinstance(e, ItemConsumed):
            items[e.item] -= e.qty
        elif isinstance(e, GoldMinted):
            gold += e.amount
    return +items == +after[0] and gold == after[1]
