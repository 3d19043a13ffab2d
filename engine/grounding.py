"""The fact a villager's line must carry, stated by the engine from the live state.

For a factual intent (a price, who sells what, where someone is, the villager's trade, the quest)
the engine writes a short plain sentence in the villager's own voice ("A coil of rope is 6 gold.");
the reply starts with it word for word and the voice may add one sentence of its own. The voice
only phrases: it cannot get a price, a seller or a place wrong. Facts hold no double quotes or
backslashes (the reply format forbids them).
"""

from __future__ import annotations

from engine.commands import GiveItem, NpcAction, SellItem, StartQuest
from engine.intent import Intent, true_price
from engine.sim import schedule_entry
from engine.state import Npc, Quest, WorldState


def a(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def count_words(n: int) -> str:
    return _COUNT_WORDS[n] if 0 <= n < len(_COUNT_WORDS) else str(n)


def plural(name: str) -> str:
    """"coil of rope" -> "coils of rope", "loaf of bread" -> "loaves of bread"."""
    head, sep, rest = name.partition(" of ")
    words = head.split()
    last = words[-1]
    if last.endswith("f"):
        last = last[:-1] + "ves"
    elif not last.endswith("s"):
        last += "s"
    return " ".join(words[:-1] + [last]) + (sep + rest if sep else "")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def nearest_place(state: WorldState, x: int, y: int) -> str:
    places = state.map.places
    return min(sorted(places), key=lambda p: max(abs(places[p][0] - x), abs(places[p][1] - y)))


def workplace(state: WorldState, npc: Npc) -> str:
    """Where this villager works: the named place nearest its first post of the day."""
    first = npc.schedule[0]
    return nearest_place(state, first.x, first.y)


def direction(state: WorldState, x: int, y: int) -> str:
    """"the north-west", "the east" or "the middle" of the map."""
    m = state.map
    dx, dy = x - m.width / 2, y - m.height / 2
    ns = "north" if dy < -m.height / 6 else "south" if dy > m.height / 6 else ""
    ew = "west" if dx < -m.width / 6 else "east" if dx > m.width / 6 else ""
    return "the " + ("-".join(p for p in (ns, ew) if p) or "middle")


def _sellers(state: WorldState, item: str) -> list[Npc]:
    return [n for n in state.npcs if item in n.sells]


def _seller_sentence(state: WorldState, npc: Npc, item: str) -> str:
    name = state.items[item].name
    others = [n for n in _sellers(state, item) if n.id != npc.id]
    if not others:
        return f"Nobody here sells {plural(name)}."
    parts = [f"{n.name} at {workplace(state, n)}, {n.sells[item]} gold" for n in others]
    return f"{'; '.join(parts)}: that is where to buy {plural(name)}." if len(parts) > 1 else \
        f"{others[0].name} sells {plural(name)} at {workplace(state, others[0])}, " \
        f"{others[0].sells[item]} gold each."


def price_fact(state: WorldState, npc: Npc, item: str) -> str:
    name = state.items[item].name
    if item in npc.sells:
        if npc.inventory.get(item, 0) <= 0:
            return f"{_cap(a(name))} is {npc.sells[item]} gold, but I have none left."
        return f"{_cap(a(name))} is {npc.sells[item]} gold."
    if item in npc.buys:
        return f"I buy {plural(name)} at {npc.buys[item]} gold, I don't sell them. " + \
            _seller_sentence(state, npc, item)
    return f"I don't sell {plural(name)}. " + _seller_sentence(state, npc, item)


def trade_fact(state: WorldState, npc: Npc) -> str:
    wares = [(state.items[i].name, p) for i, p in sorted(npc.sells.items()) if npc.inventory.get(i, 0) > 0]
    head = f"I'm the {npc.role} at {workplace(state, npc)}."
    if not wares:
        return head + " I have nothing for sale."
    listed = [f"{a(wares[0][0])} for {wares[0][1]} gold"] + [f"{a(n)} for {p}" for n, p in wares[1:]]
    text = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    return f"{head} I sell {text}."


def where_fact(state: WorldState, npc: Npc, intent: Intent) -> str:
    if intent.npc is not None:
        other = state.npc(intent.npc)
        if other is None:
            return ""
        entry = schedule_entry(other, state.hour)
        if other.id == npc.id:
            own = workplace(state, npc)
            x, y = state.map.places[own]
            return f"My place is {own}, in {direction(state, x, y)} of the village."
        place = nearest_place(state, entry.x, entry.y)
        if place.lower() in entry.activity.lower():
            return f"{other.name} the {other.role} is {entry.activity}."
        return f"{other.name} the {other.role} is {entry.activity}, at {place}."
    if intent.place is not None and intent.place in state.map.places:
        x, y = state.map.places[intent.place]
        if intent.place == workplace(state, npc):
            return f"You're at {intent.place} now; it is in {direction(state, x, y)} of the village."
        return f"{_cap(intent.place)} is in {direction(state, x, y)} of the village."
    return ""


def _in_own_voice(text: str, npc: Npc) -> str:
    """A quest description written about this villager, said by it ("bring it to Maren at the
    inn" -> "bring it to me at the inn")."""
    return (text.replace(f"to {npc.name} ", "to me ").replace(f"to {npc.name}.", "to me.")
            .replace(f"Tell {npc.name} ", "Tell me "))


def quest_fact(state: WorldState, npc: Npc, quest: Quest | None = None) -> str:
    """Where ``quest`` (the village's first, unless named) stands, as this villager says it."""
    q = quest or state.quest
    if q.complete:
        return f"Thanks to you, {q.title} is done."
    if not q.started:
        giver = state.npc(q.giver)
        if npc.id == q.giver:
            return _in_own_voice(q.summary, npc)
        return f"{giver.name} at {workplace(state, giver)} needs help." if giver else ""
    s = q.current
    item = state.items[s.item].name if s.item else ""
    if s.npc == npc.id and s.kind == "give":
        return f"Bring me the {item}."
    if s.npc == npc.id and s.kind == "receive":
        return f"The {item} is ready; ask me for it."
    desc = _in_own_voice(s.description, npc)
    return f"Next: {desc[:1].lower()}{desc[1:]}"


def fact_for(state: WorldState, npc_id: str, intent: Intent, action: NpcAction | None) -> str:
    """The sentence the reply to ``intent`` must start with ("" when the voice is free)."""
    npc = state.npc(npc_id)
    if npc is None:
        raise KeyError(npc_id)
    items = state.items
    name = items[intent.item].name if intent.item in items else ""
    match action:
        case SellItem(item=item, price=price, qty=1):
            return f"One {items[item].name}, {price} gold."
        case SellItem(item=item, price=price, qty=qty):
            return f"{_cap(count_words(qty))} {plural(items[item].name)}, {price * qty} gold."
        case GiveItem(item=item):
            return f"Here is the {items[item].name}, ready for you."
        case StartQuest(quest=quest_id):
            started = state.quest_by_id(quest_id) or state.quest
            first = started.steps[0].description if started.steps else ""
            return f"Thank you! First: {first[:1].lower()}{first[1:]}"
    match intent.kind:
        case "ask_price":
            return price_fact(state, npc, intent.item)
        case "buy":
            if intent.item not in npc.sells or npc.inventory.get(intent.item, 0) <= 0:
                return price_fact(state, npc, intent.item)
            return f"{_cap(a(name))} is {npc.sells[intent.item]} gold, and you have {state.player.gold}."
        case "sell":
            if intent.item in npc.buys and not items[intent.item].quest:
                return f"I pay {npc.buys[intent.item]} gold for {a(name)}."
            return f"I don't buy {plural(name)}."
        case "ask_who_sells":
            if intent.item in npc.sells:
                return f"I sell {plural(name)}, {npc.sells[intent.item]} gold each."
            return _seller_sentence(state, npc, intent.item)
        case "ask_where":
            return where_fact(state, npc, intent)
        case "ask_trade":
            return trade_fact(state, npc)
        case "ask_quest" | "give" | "accept":
            return quest_fact(state, npc, state.quest_by_id(intent.quest) if intent.quest else None)
        case "tell" | "persuade":
            quest = state.quest_by_id(intent.quest) if intent.quest else None
            step = quest.current if quest is not None else None
            return step.reply if step is not None and step.reply else ""
        case "decline":
            return "As you wish."
        case "refused":
            return refusal_fact(state, npc, intent)
    return ""


def refusal_fact(state: WorldState, npc: Npc, intent: Intent) -> str:
    item = intent.item if intent.item in state.items and not state.items[intent.item].quest else None
    price = f"{a(state.items[item].name)} is {true_price(state, npc, item)} gold" if item else ""
    match intent.reason:
        case "free":
            return f"Nothing here is free: {price}." if price else "Nothing here is free."
        case "wrong_price":
            return f"No: {price}."
        case "false_premise":
            return "I know of no such promise, and nothing here is free."
    return "I have no such thing, and nobody here sells it."

