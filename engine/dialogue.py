"""The dialogue seam between the engine and whatever renders NPC speech.

The engine builds a ``DialogueRequest`` holding only what this NPC may know right now, a responder
(scripted, or the language model) answers with a ``DialogueProposal``, and the engine validates the
proposal with the same rules it applies to the player before it becomes an ``NpcReply`` command.
"""

from __future__ import annotations

import re

from msgspec import Struct

from engine import rules
from engine.commands import GiveItem, NpcAction, NpcReply, Rejection, SellItem, StartQuest
from engine.grounding import fact_for
from engine.intent import Intent, Line, describe, find_item, recognise
from engine.state import MAX_NPC_LINE_CHARS, MAX_SAY_CHARS, Npc, Quest, Turn, WorldState


class Offer(Struct, frozen=True):
    item: str
    name: str
    price: int
    count: int


class DialogueRequest(Struct, frozen=True):
    npc_id: str
    npc_name: str
    role: str
    persona: str
    skin: str | None
    activity: str
    #: Facts the NPC knows (its own, plus the quest as it concerns this NPC).
    facts: list[str]
    #: What it sells (in stock) and buys, at the catalogue prices of this world.
    sells: list[Offer]
    buys: list[Offer]
    inventory: dict[str, int]
    gold: int
    quest: list[str]
    recent: list[Turn]
    player_words: str
    player_gold: int
    #: Proper names this NPC may mention (people, places, items in its context).
    known_names: list[str]
    max_chars: int = MAX_NPC_LINE_CHARS
    #: What the engine understood the player to want, and the same in plain words.
    intent: Intent | None = None
    wants: str = ""
    #: The action the engine takes for it; the reply must carry exactly this action.
    action: NpcAction | None = None
    #: The sentence the reply must start with, word for word ("" leaves the voice free).
    fact: str = ""
    #: Every action this NPC could take for some request now (for the prompt's examples).
    possible_actions: list[NpcAction] = []
    #: What the NPC knows of a later quest the player's words are about and that is not taken up
    #: yet, when no fact says it already: told with the newest words, so the prompt's stable part
    #: (and its cache) stays as is.
    topic: list[str] = []

    @property
    def legal_actions(self) -> list[NpcAction]:
        """Actions the engine would accept right now: the one the player's words ask for, or none."""
        return [self.action] if self.action is not None else []


class DialogueProposal(Struct, frozen=True):
    text: str
    action: NpcAction | None = None


def _quest_facts(state: WorldState, npc_id: str) -> list[str]:
    """What this villager knows of the quests it has a part in that are on its mind whatever the
    player says: the village's first quest, and every quest taken up."""
    out: list[str] = []
    for q in state.all_quests:
        if q.started or q is state.quest:
            out += _one_quest_facts(state, q, npc_id)
    return out


def _topic_facts(state: WorldState, npc_id: str, about: str | None) -> list[str]:
    """A later quest not yet taken up comes up only when the player's line is ``about`` it, so the
    prompt holds no more than the talk needs."""
    q = state.quest_by_id(about) if about else None
    if q is None or q.started or q is state.quest:
        return []
    return _one_quest_facts(state, q, npc_id)


def _in_mind(state: WorldState, action: NpcAction) -> bool:
    """Is this action one the prompt's stable part shows? Not the start of a later quest (the
    engine decides and the reply carries it when the talk is about that quest)."""
    return not isinstance(action, StartQuest) or action.quest == state.quest.id


def _one_quest_facts(state: WorldState, q: Quest, npc_id: str) -> list[str]:
    out: list[str] = []
    involved = npc_id == q.giver or any(s.npc == npc_id for s in q.steps)
    if not involved:
        return out
    if not q.started:
        if npc_id == q.giver:
            out.append(f"You need help: {q.summary} The traveller has not offered to help yet.")
        return out
    if q.complete:
        if q is state.quest:
            out.append(f"The traveller finished '{q.title}'. The bell rings again; you are grateful.")
        else:
            out.append(f"The traveller finished '{q.title}'. You are grateful.")
        return out
    s = q.current
    assert s is not None
    out.append(f"The traveller is helping with '{q.title}'. Their next task: {s.description}")
    if s.npc == npc_id and s.kind == "receive":
        made = "finished" if state.items[s.item].quest else "set aside"  # made for it, or from stock
        out.append(f"You have {made} the {state.items[s.item].name} and should hand it to the traveller.")
    if s.npc == npc_id and s.kind == "give":
        out.append(f"You are waiting for the traveller to bring you the {state.items[s.item].name}.")
    return out


def latest_player_words(npc: Npc) -> str:
    return next((t.text for t in reversed(npc.memory) if t.speaker == "player"), "")


def build_request(state: WorldState, npc_id: str, words: str) -> DialogueRequest:
    npc = state.npc(npc_id)
    if npc is None:
        raise KeyError(f"unknown npc {npc_id!r}")
    words = rules.clean_player_text(words, MAX_SAY_CHARS)
    intent = recognise(state, npc_id, words)
    action = rules.intended_action(state, npc, intent)
    fact = fact_for(state, npc_id, intent, action)
    items = state.items
    sells = [Offer(item=i, name=items[i].name, price=p, count=npc.inventory.get(i, 0))
             for i, p in sorted(npc.sells.items()) if npc.inventory.get(i, 0) > 0]
    buys = [Offer(item=i, name=items[i].name, price=p, count=0) for i, p in sorted(npc.buys.items())]
    quest = _quest_facts(state, npc_id)
    # The fact, when there is one, already says what the reply needs of that quest.
    topic = _topic_facts(state, npc_id, intent.quest) if not fact else []
    names = {npc.name, state.player.name}
    if state.world_name:
        names.add(state.world_name)
    text_blob = " ".join([npc.persona, *npc.facts, *quest, *topic, fact])
    for other in state.npcs:
        if other.name in text_blob:
            names.add(other.name)
    for place in state.map.places:
        if place in text_blob or place.lower() in text_blob.lower():
            names.add(place)
    for it in items.values():
        if it.name.lower() in text_blob.lower():
            names.add(it.name)
    for o in sells + buys:
        names.add(o.name)
    for i, n in npc.inventory.items():
        names.add(items[i].name)
    for q in state.all_quests:
        s = q.current
        if s is not None and s.item:
            names.add(items[s.item].name)
    return DialogueRequest(
        npc_id=npc.id, npc_name=npc.name, role=npc.role, persona=npc.persona, skin=npc.skin,
        activity=npc.activity, facts=list(npc.facts), sells=sells, buys=buys,
        inventory=dict(npc.inventory), gold=npc.gold, quest=quest, topic=topic,
        recent=list(npc.memory),
        player_words=words, player_gold=state.player.gold, known_names=sorted(names),
        intent=intent, wants=describe(state, intent), action=action, fact=fact,
        possible_actions=[a for a in rules.possible_npc_actions(state, npc)
                          if _in_mind(state, a)],
    )


_PRICE_RE = re.compile(r"(\d+)\s*(?:gold|coins?|gp|g\b)", re.IGNORECASE)
#: Words that hand something over: "here is your X", "take this", "here you go".
_HANDOVER_RE = re.compile(r"\b(?:here(?:'s|’s| is| are)|take|hands? you|handing you)\s+"
                          r"(?:your|the|this|that|these|my|a|an|it|one)?\s*([a-z][a-z ]{0,30})",
                          re.IGNORECASE)
_HANDOVER_PLAIN = re.compile(r"\b(?:here you (?:go|are)|take (?:it|this|one)|there you (?:go|are)|"
                             r"(?:i'll|i will|i can|let me|i'm going to|i am going to)\s+"
                             r"(?:give|sell|hand)(?: it)? (?:you|to you))\b", re.IGNORECASE)


def handed_over(state: WorldState, text: str) -> tuple[bool, set[str]]:
    """Does the line hand something over, and which items does it name as handed over?"""
    named = set()
    for m in _HANDOVER_RE.finditer(text):
        item, _ = find_item(state, Line(m.group(1)))
        if item is not None:
            named.add(item)
    return bool(named) or bool(_HANDOVER_PLAIN.search(text)), named


def _allowed_prices(state: WorldState, req: DialogueRequest, proposal: DialogueProposal) -> set[int]:
    """Prices the line may quote: those in the engine's fact, and else only ones that are true
    for what is being talked about (the item of the intent, or this NPC's wares)."""
    in_fact = {int(m.group(1)) for m in _PRICE_RE.finditer(req.fact)}
    if isinstance(proposal.action, SellItem):
        sale = proposal.action  # a sale quotes its own price (each and in all) and no other
        return in_fact | {sale.price, sale.price * sale.qty}
    item = req.intent.item if req.intent is not None else None
    if item in state.items:
        npc = state.npc(req.npc_id)
        about = {p for p in (npc.sells.get(item), npc.buys.get(item)) if p is not None}
        return in_fact | (about or {state.items[item].price}) | {req.player_gold}
    return in_fact | {o.price for o in req.sells} | {o.price for o in req.buys} | {req.player_gold}


def validate_proposal(state: WorldState, npc_id: str, proposal: DialogueProposal,
                      request: DialogueRequest | None = None) -> Rejection | None:
    """Would the engine commit this proposal right now? ``None`` means yes.

    Checks the line's shape, that it starts with the engine's fact and carries the action the
    player asked for, that it hands over nothing its action does not, that any price it quotes is
    true, that it names no person, place or item outside the NPC's context, and the action against
    the rules.
    """
    npc, why = rules.check_talking(state, npc_id)
    if why:
        return why
    why = rules.check_line(proposal.text)
    if why:
        return why
    req = request or build_request(state, npc_id, latest_player_words(npc))
    if req.fact and not proposal.text.startswith(req.fact):
        return Rejection.TEXT_UNGROUNDED
    if req.action is not None and proposal.action is None:
        return Rejection.ACTION_MISSING
    claims, named = handed_over(state, proposal.text)
    given = proposal.action.item if isinstance(proposal.action, (SellItem, GiveItem)) else None
    if (claims and given is None) or named - {given}:
        return Rejection.TEXT_FALSE_HANDOVER
    allowed_prices = _allowed_prices(state, req, proposal)
    for m in _PRICE_RE.finditer(proposal.text):
        if int(m.group(1)) not in allowed_prices:
            return Rejection.TEXT_WRONG_PRICE
    if mentions_unknown_name(state, proposal.text, req.known_names):
        return Rejection.TEXT_UNKNOWN_NAME
    if unknown_proper_nouns(proposal.text, req):
        return Rejection.TEXT_UNKNOWN_NAME
    if proposal.action is not None:
        return rules.check_npc_action(state, npc, proposal.action)
    return None


def mentions_unknown_name(state: WorldState, text: str, known: list[str]) -> bool:
    """True if the text names a person, place or item of this world that the NPC does not know."""
    low = text.lower()
    known_low = {k.lower() for k in known}
    world_names = [n.name for n in state.npcs] + list(state.map.places) + [i.name for i in state.items.values()]
    for name in world_names:
        nl = name.lower()
        if nl in known_low:
            continue
        if re.search(r"\b" + re.escape(nl) + r"s?\b", low):
            return True
    return False


_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_SENTENCE_RE = re.compile(r"(?:^|[.!?:;\"“(]\s*)([A-Za-z][A-Za-z'’-]*)")
#: Capitalised words that name nobody (interjections, titles, pronouns).
_PLAIN_CAPS = {"i", "i'm", "i'll", "i've", "i'd", "ok", "okay", "sir", "madam", "miss", "mister",
               "lad", "lass", "friend", "traveller", "traveler", "stranger", "gods", "aye", "nay",
               "oh", "ah", "well", "yes", "no", "hello", "welcome", "thanks", "thank", "please",
               "hmm", "ha", "hey", "good", "fine", "sorry"}


def unknown_proper_nouns(text: str, req: DialogueRequest) -> list[str]:
    """Capitalised words in the middle of a sentence that name nothing in the NPC's context.

    A small model invents kings, towns and rivers; the engine cannot know every English word, but it
    does know every name this NPC may use, so a mid-sentence capital that is not one of them is
    treated as an invented name."""
    known_text = " ".join([req.npc_name, req.persona, *req.facts, *req.quest, req.fact, *req.known_names,
                           *(o.name for o in req.sells), *(o.name for o in req.buys)])
    known = {w.lower() for w in _WORD_RE.findall(known_text) if w[:1].isupper()}
    # Names the player made up ("the wizard Zoltan") may not be repeated anywhere, even where a
    # capital letter is ordinary (the start of a sentence).
    invented = {w.lower() for w in _capitalised_mid_sentence(req.player_words)} - known - _PLAIN_CAPS
    starts = {m.start(1) for m in _SENTENCE_RE.finditer(text)}
    bad = []
    for m in _WORD_RE.finditer(text):
        w = m.group(0)
        if w.lower() in invented:
            bad.append(w)
            continue
        if not w[:1].isupper() or m.start() in starts or m.start() == 0:
            continue
        lw = w.lower().rstrip("'’s") if w.lower().endswith(("'s", "’s")) else w.lower()
        if lw in known or lw in _PLAIN_CAPS or w.isupper() and len(w) <= 2:
            continue
        bad.append(w)
    return bad


def _capitalised_mid_sentence(text: str) -> list[str]:
    starts = {m.start(1) for m in _SENTENCE_RE.finditer(text)}
    return [m.group(0) for m in _WORD_RE.finditer(text)
            if m.group(0)[:1].isupper() and m.start() not in starts and m.start() != 0]


def to_command(npc_id: str, proposal: DialogueProposal) -> NpcReply:
    return NpcReply(npc=npc_id, text=proposal.text, action=proposal.action)


def fallback_line(state: WorldState, npc_id: str, words: str | None = None) -> DialogueProposal:
    """A deterministic line that is always legal, used when every proposal was rejected: the
    engine's fact and the action the player asked for (``words``: the player's latest line)."""
    npc = state.npc(npc_id)
    if npc is None:
        raise KeyError(npc_id)
    req = build_request(state, npc_id, latest_player_words(npc) if words is None else words)
    if req.fact:
        return DialogueProposal(text=req.fact, action=req.action)
    if npc.sells and any(npc.inventory.get(i, 0) for i in npc.sells):
        text = f"{npc.name} nods. \"Have a look at my wares, traveller.\""
    else:
        text = f"{npc.name} nods. \"Keep well, traveller.\""
    return DialogueProposal(text=text, action=None)


class DialogueTurn:
    """One player line in, one committed NPC reply out.

    The caller asks a responder for a proposal for ``request()``, hands it to ``offer()``; a rejected
    proposal is retried with the engine's reason as feedback, and after ``max_attempts`` the
    deterministic fallback line is used. A refused proposal that opens with the engine's fact and
    proposes the decided action is cut back to the fact instead of retried: the player gets the
    right answer at once, only without the villager's own words after it (a retry costs a whole
    generation, and most refusals are of those words). Nothing here touches the state: the returned ``NpcReply``
    is a command that ``step`` re-validates when it commits it.
    """

    def __init__(self, npc_id: str, words: str, max_attempts: int = 3):
        self.npc_id = npc_id
        self.words = words
        self.max_attempts = max_attempts
        self.attempts = 0
        self.rejections: list[Rejection] = []
        self.fallback = False
        #: The reply was the engine's fact alone, cut from a refused proposal.
        self.salvaged = False

    @property
    def feedback(self) -> str | None:
        if not self.rejections:
            return None
        return f"Your last reply was refused ({self.rejections[-1].value.replace('_', ' ')}). Try again."

    def request(self, state: WorldState) -> DialogueRequest:
        return build_request(state, self.npc_id, self.words)

    def offer(self, state: WorldState, proposal: DialogueProposal) -> NpcReply | None:
        """Validate a proposal; return the command to commit, or None to ask for another."""
        self.attempts += 1
        req = self.request(state)
        why = validate_proposal(state, self.npc_id, proposal, req)
        if why is None:
            return to_command(self.npc_id, proposal)
        self.rejections.append(why)
        if req.fact and proposal.text.startswith(req.fact) and proposal.action == req.action:
            cut = DialogueProposal(text=req.fact, action=req.action)
            if validate_proposal(state, self.npc_id, cut, req) is None:
                self.salvaged = True
                return to_command(self.npc_id, cut)
        if self.attempts >= self.max_attempts:
            return self.give_up(state)
        return None

    def give_up(self, state: WorldState) -> NpcReply:
        self.fallback = True
        return to_command(self.npc_id, fallback_line(state, self.npc_id, self.words))
