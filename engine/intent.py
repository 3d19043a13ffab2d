"""What the player wants from the villager they are talking to, decided by the engine.

A small language model cannot be trusted to decide whether "What does a coil of rope cost?" is a
purchase, so the engine reads the player's line itself: ``recognise`` maps it to one ``Intent`` out
of a closed set built from the live state (``candidate_intents``), with its slots (item, person,
place, quantity) resolved against this world's names. It is a deterministic function of the state
and the words (no clock, no randomness), so replaying a game re-derives every intent.
"""

from __future__ import annotations

import re

from msgspec import Struct

from engine.state import Npc, Quest, WorldState

ASK_PRICE = "ask_price"
BUY = "buy"
SELL = "sell"
#: The player asks the villager to hand over a quest item.
GIVE = "give"
ASK_WHERE = "ask_where"
ASK_WHO_SELLS = "ask_who_sells"
ASK_TRADE = "ask_trade"
ASK_QUEST = "ask_quest"
ACCEPT = "accept"
DECLINE = "decline"
#: The player delivers the message a quest step asks them to carry to this villager.
TELL = "tell"
#: The player wins this villager over by stating the fact a quest step asks for.
PERSUADE = "persuade"
SMALL_TALK = "small_talk"
#: A request the world does not allow (see the ``REFUSED_*`` reasons).
REFUSED = "refused"

REFUSED_FREE = "free"
REFUSED_PRICE = "wrong_price"
REFUSED_PREMISE = "false_premise"
REFUSED_UNKNOWN_ITEM = "unknown_item"


class Intent(Struct, frozen=True):
    kind: str
    item: str | None = None
    npc: str | None = None
    place: str | None = None
    qty: int = 1
    reason: str | None = None
    #: The quest the line is about (asking, accepting, a hand-over, a message, a case made).
    quest: str | None = None


# ---- words ---------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "couple": 2, "pair": 2}
#: Words that name a container or measure of the goods: "a coil of rope" is asked for as rope.
_MEASURES = {"bag", "bowl", "mug", "loaf", "coil", "cup", "piece", "pair"}
#: Everyday words for this world's goods (by item id; ids a world lacks are ignored).
_SYNONYMS = {"beer": "ale", "knife": "dagger", "blade": "dagger", "lamp": "lantern",
             "soup": "stew", "bun": "bread", "shoe": "horseshoe", "nail": "nails"}
#: Everyday words for places (by the place's own name, lower case).
_PLACE_WORDS = {"inn": "the amber kettle", "tavern": "the amber kettle", "forge": "the smithy",
                "market": "the market stall", "stall": "the market stall", "well": "the village well",
                "pond": "the mill pond", "field": "the barley field", "guardhouse": "the guardhouse"}


def singular(word: str) -> str:
    if word.endswith("ves") and len(word) > 4:
        return word[:-3] + "f"
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


class Line:
    """The player's words, normalised once: lower case, straight apostrophes, word list."""

    def __init__(self, words: str):
        low = words.lower().replace("’", "'").replace("‘", "'")
        self.words = _WORD_RE.findall(low)
        self.singular = [singular(w) for w in self.words]
        self.text = " " + " ".join(self.words) + " "

    def has(self, *phrases: str) -> bool:
        return any(f" {p} " in self.text for p in phrases)

    def has_word(self, *words: str) -> bool:
        return any(w in self.words for w in words)


def _item_keys(state: WorldState) -> tuple[dict[str, str], dict[str, str]]:
    """(strong, weak) word -> item id. Strong: the goods' own noun, its measure, a synonym; weak:
    other words of the name ("iron" in "iron ingot"), used only when nothing strong matched."""
    strong: dict[str, str] = {}
    weak: dict[str, str] = {}
    for item in sorted(state.items.values(), key=lambda i: i.id):
        parts = item.name.lower().split()
        strong.setdefault(singular(parts[-1]), item.id)
        if len(parts) >= 3 and parts[1] == "of" and parts[0] in _MEASURES:
            strong.setdefault(parts[0], item.id)
        for w in parts[:-1]:
            if w != "of" and w not in _MEASURES:
                weak.setdefault(singular(w), item.id)
    for word, item_id in _SYNONYMS.items():
        if item_id in state.items:
            strong.setdefault(word, item_id)
    return strong, weak


def find_item(state: WorldState, line: Line) -> tuple[str | None, int]:
    """The first item the line names, and how many (1 unless a number comes just before it)."""
    strong, weak = _item_keys(state)
    for keys in (strong, weak):
        for i, w in enumerate(line.singular):
            if w in keys:
                return keys[w], _quantity(line.words[max(0, i - 3):i])
    return None, 1


def _quantity(before: list[str]) -> int:
    for w in reversed(before):
        if w.isdigit():
            return max(1, min(99, int(w)))
        if w in _NUMBERS:
            return _NUMBERS[w]
    return 1


#: Everyday words for villagers' roles (by the role's own word in the village data).
_ROLE_WORDS = {"smith": "blacksmith", "barkeep": "innkeeper", "landlady": "innkeeper",
               "trader": "merchant", "shopkeeper": "merchant", "stallholder": "merchant",
               "captain": "guard", "watchman": "guard"}


def find_npc(state: WorldState, line: Line, addressee: str | None = None) -> str | None:
    """The villager the line names: by name, else by role ("the guard captain"). A role word for
    the villager spoken to is a form of address ("..., captain?"), not a reference."""
    for w in line.words:
        for n in state.npcs:
            if w in (n.name.lower(), n.name.lower() + "'s"):
                return n.id
    roles = {}
    for n in state.npcs:
        roles.setdefault(n.role.lower(), n.id)
    for w in line.singular:
        role = _ROLE_WORDS.get(w, w)
        if role in roles and roles[role] != addressee:
            return roles[role]
    return None


def find_place(state: WorldState, line: Line) -> str | None:
    names = {p.lower(): p for p in state.map.places}
    for low, place in sorted(names.items(), key=lambda kv: -len(kv[0])):
        bare = low.removeprefix("the ")
        if f" {bare} " in line.text:
            return place
    for w in line.words:
        if w in _PLACE_WORDS and _PLACE_WORDS[w] in names:
            if w == "well" and not line.has("the well", "a well"):
                continue  # "well" is mostly "well, ..."
            return names[_PLACE_WORDS[w]]
    return None


def _last_item(state: WorldState, npc: Npc) -> str | None:
    """The item most recently named in this conversation before the player's latest line."""
    turns = list(npc.memory)
    if turns and turns[-1].speaker == "player":
        turns = turns[:-1]
    for t in reversed(turns):
        item, _ = find_item(state, Line(t.text))
        if item is not None:
            return item
        if t.action is not None and getattr(t.action, "item", None):
            return t.action.item
    return None


# ---- cues ------------------------------------------------------------------------------------------

_FREE = ("free", "for nothing", "without paying", "no charge", "gratis", "give me everything",
         "give me all", "everything you own", "everything you have", "all your things",
         "grant all", "all items")
_MONEY = ("gold", "coin", "coins", "money")
_AUTHORITY = ("says", "said", "told me", "promised", "orders", "ordered", "commands", "the king",
              "admin", "system", "ignore your", "you are now", "pretend", "forget", "instructions")
_DEMAND = ("give", "grant", "hand", "sell me", "owe", "free")
_GIVE_ASK = ("give me", "hand me", "hand over", "may i have", "can i have", "could i have",
             "i'm here for", "i am here for", "i came for", "i've come for", "ready", "done",
             "finished", "made it", "forged it", "is it ready", "have it", "take it", "collect")
_WHO_SELLS = ("who sells", "who has", "who's got", "who makes", "where can i buy", "where can i get",
              "where can i find", "where do i buy", "where do i get", "where to buy", "where to get",
              "come from", "comes from", "where would i", "where could i")
_WHERE = ("where", "where's", "find", "how do i get to", "way to", "seen", "who is", "who's", "looking for",
          "which way", "which part", "how far", "directions")
#: A where-question about the villager's own place ("Where do you keep your anvil?").
_OWN_PLACE = ("your", "you work", "you keep", "you live", "you stand")
_OFFER = ("can i help", "could i help", "may i help", "how can i help", "i can help", "i could help",
          "i'll help", "i will help", "let me help", "help you", "need help", "need any help",
          "need some help", "need a hand", "lend a hand", "give you a hand", "anything i can do",
          "what can i do", "can i do", "do for you", "i'll do it", "i will do it", "count me in",
          "leave it to me", "i accept", "happy to help", "glad to help", "work for", "any work",
          "job for", "task for", "i'll fix", "i will fix", "i'll get", "i'll find", "gladly help",
          "i'd help", "i would help", "be glad to help", "be happy to help", "i'd be glad")
#: Answers to an offer, recognised at the start of a short line ("Yes, gladly.", "Not now.").
_YES = ("yes", "sure", "of course", "gladly", "ok", "okay", "aye", "certainly", "i will", "yeah",
        "alright", "all right", "deal", "fine")
_NO = ("no", "not now", "maybe later", "later", "i can't", "i cannot", "i won't", "nope",
       "not interested", "sorry", "i'm busy")
_SELL = ("want to sell", "like to sell", "to sell you", "sell you", "will you buy", "would you buy",
         "do you buy", "buy my", "buy this", "buy these", "buy from me", "pay for my", "pay me for",
         "give me for", "take it off my hands", "trade you")
#: Offers of goods the player carries ("This rope is surplus. Interested?"); read as an offer to
#: sell only when the player has the item, since "can you spare one" asks to buy.
_OFFER_GOODS = ("coin for", "gold for", "pay me", "interested", "surplus", "spare", "want it",
                "want this", "want one", "use a", "use an", "use one", "is yours", "are yours",
                "yours if", "have one", "got one")
_BUY_STRONG = ("buy", "purchase", "sell me", "i'll take", "i will take", "i'll have", "i will have",
               "give me", "hand me", "get me", "pour me", "let me have", "i'm after", "i am after",
               "i'm looking to buy", "i'd take", "i would take", "pass me", "toss me",
               "throw me", "bring me", "fetch me", "i'll pay", "here's the coin", "here's my coin")
_BUY_SOFT = ("i'd like", "i would like", "i want", "i need", "can i get", "could i get",
             "can i have", "could i have", "may i have", "please", "i'll buy", "take one", "want one")
_PRICE = ("how much", "price", "cost", "costs", "charge", "what's a", "worth", "how many gold")
_STOCK = ("do you have", "do you sell", "have you got", "got any", "do you stock", "any left",
          "do you carry", "in stock")
_TRADE = ("what do you sell", "what do you have", "what have you got", "what are you selling",
          "your wares", "your goods", "what do you do", "your trade", "your job", "your work",
          "who are you", "what do you make", "what can i buy", "what's for sale", "for sale",
          "what is for sale", "your name", "name of your", "name of this", "what do you offer",
          "menu", "this place")
#: A what-question about these (no item named) asks what the villager trades in.
_TRADE_WORDS = ("goods", "wares", "sale", "sell", "serve", "make", "offer", "stock", "keep",
                "laid", "food", "drink", "eat", "stall", "bar", "forge", "shop", "trade")
#: Where to take the quest's current item: the quest, not the goods ("Who should I take it to?").
_QUEST_ERRAND = ("take it", "bring it", "take this", "bring this", "should i take", "should i bring",
                 "who should", "where should", "what now", "what next", "now what")
#: Asking how a quest's errand goes ("Any news about the lantern?").
_QUEST_NEWS = ("news", "any word", "how goes", "how is it going", "what about the", "about the")
_QUEST = ("bell", "quest", "task", "job", "trouble", "troubled", "worried", "worry", "problem",
          "wrong", "happened", "matter", "clapper", "help", "work", "next", "ring", "sad", "what now",
          "what should i do", "what do i do", "what do i need")
_GENERIC = ("something", "anything", "what", "wares", "goods", "stuff", "food", "drink")
_PRONOUNS = ("it", "one", "them", "that", "this")
_PRICE_CLAIM = re.compile(r"(?:for|costs?|is|are|at|only|just|pay)\s+(\d+)\s*(?:gold|coins?|gp|g)?\b")


def _price_claim(line: Line) -> int | None:
    m = _PRICE_CLAIM.search(line.text)
    return int(m.group(1)) if m else None


def true_price(state: WorldState, npc: Npc, item: str) -> int:
    """What this item costs here: this villager's price, else the catalogue's."""
    return npc.sells.get(item, state.items[item].price)


# ---- recognition -----------------------------------------------------------------------------------

def recognise(state: WorldState, npc_id: str, words: str) -> Intent:
    """The player's intent in saying ``words`` to ``npc_id`` in this state (always one of
    ``candidate_intents(state, npc_id)``)."""
    npc = state.npc(npc_id)
    if npc is None:
        raise KeyError(f"unknown npc {npc_id!r}")
    line = Line(words)
    if not line.words:
        return Intent(SMALL_TALK)
    item, qty = find_item(state, line)
    other = find_npc(state, line, addressee=npc.id)
    place = find_place(state, line)
    pronoun = item is None and line.has_word(*_PRONOUNS)
    if pronoun:
        item = _last_item(state, npc)
    # A message a quest step asks the player to carry here, or the case it asks them to make.
    for q in state.all_quests:
        s = q.current
        if s is not None and s.kind in (TELL, PERSUADE) and s.npc == npc.id and holds(line, s.words):
            return Intent(s.kind, quest=q.id)
    quest_item = item is not None and state.items[item].quest
    handing = [q for q in state.all_quests
               if q.current is not None and q.current.kind == "receive" and q.current.npc == npc.id]
    receiving = bool(handing)
    step = handing[0].current if handing else None

    for q in handing:  # the villager owes the player this item: asking for it is the hand-over
        if item == q.current.item and (quest_item or not line.has(*_PRICE, *_SELL)):
            return Intent(GIVE, item=item, quest=q.id)
    mine = item is not None and state.player.inventory.get(item, 0) > 0
    if mine and not quest_item and line.has(*_SELL, *_OFFER_GOODS):
        return Intent(SELL, item=item, qty=qty)  # "Would you give me coin for a horseshoe?"
    # Requests the world refuses: goods or gold for nothing, another price, a claimed authority.
    if line.has(*_FREE) or (line.has("give me", "hand me", "grant") and line.has_word(*_MONEY)):
        return Intent(REFUSED, item=item if not quest_item else None, reason=REFUSED_FREE)
    claim = _price_claim(line)
    if (item is not None and not quest_item and claim is not None
            and claim != true_price(state, npc, item) and line.has(*_BUY_STRONG, *_BUY_SOFT, *_PRICE)):
        return Intent(REFUSED, item=item, reason=REFUSED_PRICE)
    if receiving and line.has(*_GIVE_ASK):
        return Intent(GIVE, item=step.item, quest=handing[0].id)
    if line.has(*_AUTHORITY) and line.has(*_DEMAND):
        return Intent(REFUSED, item=item if not quest_item else None, reason=REFUSED_PREMISE)

    offered = offered_quest(state, npc)
    named = named_quest(state, line)
    if offered is not None and named is not None and named is not offered:
        offered = None  # help offered with another quest ("Can I help with the bell?" to Bram)
    # A quest item is never goods: asking for it or about it is about the quest.
    if quest_item:
        if offered is not None and line.has(*_OFFER) and any(s.item == item for s in offered.steps):
            return Intent(ACCEPT, quest=offered.id)  # "Why is the bell so quiet? I'd gladly help."
        about = quest_about(state, npc, line, item)
        if line.has(*_GIVE_ASK, *_BUY_STRONG):
            return Intent(GIVE, item=item, quest=about.id)
        return Intent(ASK_QUEST, quest=about.id)

    errands = [q for q in state.all_quests
               if q.current is not None and item is not None and q.current.item == item]
    if errands and line.has(*_QUEST_ERRAND):
        return Intent(ASK_QUEST, quest=errands[0].id)
    # "Any news about the lantern?" to someone with a part in a quest under way that needs one.
    if item is not None and line.has(*_QUEST_NEWS):
        for q in state.all_quests:
            if (q.started and not q.complete and any(s.item == item for s in q.steps)
                    and (q.giver == npc.id or q.current.npc == npc.id)):
                return Intent(ASK_QUEST, quest=q.id)
    if other is not None and line.has(*_WHERE):
        return Intent(ASK_WHERE, npc=other)  # "Which way is Bram's forge?"
    if item is not None and (line.has(*_WHO_SELLS) or line.has_word("who", "where", "whence")
                             or line.has("which place")) and not line.has(*_SELL):
        return Intent(ASK_WHO_SELLS, item=item)
    if place is not None and line.has(*_WHERE):
        return Intent(ASK_WHERE, place=place)
    if item is None and line.has(*_WHERE) and line.has(*_OWN_PLACE):
        return Intent(ASK_WHERE, npc=npc.id)  # "Where do you keep your anvil?"

    if offered is not None and line.has(*_OFFER):
        return Intent(ACCEPT, quest=offered.id)
    if offered is not None and item is None and len(line.words) <= 8:
        if _opens_with(line, _NO):
            return Intent(DECLINE)
        if _opens_with(line, _YES):
            return Intent(ACCEPT, quest=offered.id)

    if item is not None and line.has(*_SELL):
        return Intent(SELL, item=item, qty=qty)
    if item is not None and (line.has(*_BUY_STRONG, *_BUY_SOFT) or _starts_with_amount(line)):
        return Intent(BUY, item=item, qty=qty)
    if item is not None and line.has(*_PRICE, *_STOCK):
        return Intent(ASK_PRICE, item=item)
    if (line.has(*_TRADE) or line.has(*_PRICE, *_STOCK)
            or (line.has_word("what", "what's", "which") and line.has_word(*_TRADE_WORDS))):
        return Intent(ASK_TRADE)
    if line.has(*_QUEST) or line.has(*_OFFER):
        return Intent(ASK_QUEST, quest=quest_about(state, npc, line, item).id)
    if line.has(*_BUY_STRONG):
        if line.has(*_GENERIC):
            return Intent(ASK_TRADE)
        return Intent(REFUSED, reason=REFUSED_UNKNOWN_ITEM)
    if item is not None and not pronoun:
        return Intent(ASK_PRICE, item=item)
    return Intent(SMALL_TALK)


def holds(line: Line, words: list[str]) -> bool:
    """Does the line hold every entry of ``words`` (each a word or phrase, alternatives split by
    "|"; a single word also matches in the plural)?"""
    def has(alt: str) -> bool:
        alt = " ".join(_WORD_RE.findall(alt.lower()))
        return f" {alt} " in line.text or (" " not in alt and singular(alt) in line.singular)
    return all(any(has(alt) for alt in entry.split("|")) for entry in words)


def offered_quest(state: WorldState, npc: Npc) -> Quest | None:
    """The first quest this villager gives that the player has not taken up yet."""
    for q in state.all_quests:
        if q.giver == npc.id and not q.started:
            return q
    return None


_TITLE_SMALL = {"the", "a", "an", "for", "of", "to", "and", "in", "on", "at"}


def quest_words(state: WorldState, quest: Quest) -> set[str]:
    """Words that name a quest: its keywords (else its title's words) and its quest items' names."""
    named = quest.keywords or [w for w in _WORD_RE.findall(quest.title.lower()) if w not in _TITLE_SMALL]
    words = {singular(w) for k in named for w in _WORD_RE.findall(k.lower())}
    for s in quest.steps:
        if s.item in state.items and state.items[s.item].quest:
            words.update(singular(w) for w in state.items[s.item].name.lower().split())
    return words


def named_quest(state: WorldState, line: Line) -> Quest | None:
    """The first quest the line names by its words, if the village has more than one."""
    quests = state.all_quests
    if len(quests) == 1:
        return None
    said = set(line.singular)
    for q in quests:
        if said & quest_words(state, q):
            return q
    return None


def quest_about(state: WorldState, npc: Npc, line: Line, item: str | None = None) -> Quest:
    """The quest a question about "the quest" means: one the line names (by its words, or by an
    item of its current step), else the one this villager has a part in now, else one it gives,
    else the first quest under way, else the village's first quest."""
    quests = state.all_quests
    if len(quests) == 1:
        return quests[0]
    named = named_quest(state, line)
    if named is not None:
        return named
    if item is not None:
        for q in quests:
            if q.current is not None and q.current.item == item:
                return q
    ranked = ([q for q in quests if q.current is not None and q.current.npc == npc.id]
              + [q for q in quests if q.giver == npc.id and q.started and not q.complete]
              + [q for q in quests if q.giver == npc.id and not q.started]
              + [q for q in quests if q.started and not q.complete])
    return ranked[0] if ranked else state.quest


def _opens_with(line: Line, phrases: tuple[str, ...]) -> bool:
    return any(line.text.startswith(f" {p} ") for p in phrases)


def _starts_with_amount(line: Line) -> bool:
    """"Two mugs of ale!", "A coil of rope." -- an order that is only the goods."""
    first = line.words[0]
    return (first.isdigit() or first in _NUMBERS) and len(line.words) <= 6


def candidate_intents(state: WorldState, npc_id: str) -> list[Intent]:
    """Every intent ``recognise`` can return for this villager in this state, in a fixed order."""
    npc = state.npc(npc_id)
    if npc is None:
        raise KeyError(f"unknown npc {npc_id!r}")
    goods = sorted(i for i, it in state.items.items() if not it.quest)
    quest_items = sorted(i for i, it in state.items.items() if it.quest)
    out = [Intent(SMALL_TALK), Intent(ASK_TRADE)]
    out += [Intent(ASK_QUEST, quest=q.id) for q in state.all_quests]
    offered = offered_quest(state, npc)
    if offered is not None:
        out += [Intent(ACCEPT, quest=offered.id), Intent(DECLINE)]
    for q in state.all_quests:
        s = q.current
        if s is not None and s.kind in (TELL, PERSUADE) and s.npc == npc.id:
            out.append(Intent(s.kind, quest=q.id))
    for i in goods:
        out.append(Intent(ASK_PRICE, item=i))
        out.append(Intent(ASK_WHO_SELLS, item=i))
        out += [Intent(BUY, item=i, qty=n) for n in range(1, 100)]
        out += [Intent(SELL, item=i, qty=n) for n in range(1, 100)]
        out += [Intent(REFUSED, item=i, reason=r) for r in (REFUSED_FREE, REFUSED_PRICE, REFUSED_PREMISE)]
    out += [Intent(GIVE, item=i, quest=q.id) for i in quest_items for q in state.all_quests]
    out += [Intent(GIVE, item=q.current.item, quest=q.id) for q in state.all_quests
            if q.current is not None and q.current.kind == "receive" and q.current.npc == npc.id]
    out += [Intent(ASK_WHERE, npc=n.id) for n in state.npcs]
    out += [Intent(ASK_WHERE, place=p) for p in sorted(state.map.places)]
    out += [Intent(REFUSED, reason=r) for r in (REFUSED_FREE, REFUSED_PREMISE, REFUSED_UNKNOWN_ITEM)]
    return out


def describe(state: WorldState, intent: Intent) -> str:
    """The intent in plain words, for the villager's prompt."""
    item = state.items[intent.item].name if intent.item in state.items else None
    match intent.kind:
        case "ask_price":
            return f"asks the price of a {item}"
        case "buy":
            return f"wants to buy a {item}"
        case "sell":
            return f"wants to sell you a {item}"
        case "give":
            return f"asks you for the {item}"
        case "ask_where":
            who = state.npc(intent.npc) if intent.npc else None
            return f"asks where {who.name if who else intent.place} is"
        case "ask_who_sells":
            return f"asks who sells a {item}"
        case "ask_trade":
            return "asks what you do and sell"
        case "ask_quest":
            return "asks about the quest"
        case "accept":
            return "offers to help you"
        case "tell":
            return "brings you a message"
        case "persuade":
            return "makes a case to you"
        case "decline":
            return "says no"
        case "refused":
            return "asks for something you will not do"
    return "is making small talk"
