"""A deterministic, rule-based NPC voice: the game is playable without a model, and tests have a
responder whose every answer is known. It reads the ``DialogueRequest`` only."""

from __future__ import annotations

import threading

import blake3

from engine.commands import GiveItem, SellItem, StartQuest
from engine.dialogue import DialogueProposal, DialogueRequest
from npc.responder import TextSink

_GREETINGS = {
    "blacksmith": ["Mind the sparks.", "Iron doesn't wait. What do you need?", "Speak up, the forge is loud."],
    "innkeeper": ["Welcome to the inn, love!", "Sit, sit. What can I get you?", "Another traveller! Come in."],
    "merchant": ["Fine goods, fair prices!", "Looking to buy? Looking to sell?", "Ah, a customer!"],
    "guard": ["Stay out of trouble.", "Move along, or state your business.", "All quiet. For now."],
}
_BUY_WORDS = ("buy", "purchase", "sell me", "want", "need", "how much", "price", "cost")
_QUEST_WORDS = ("help", "bell", "quest", "task", "work", "job", "trouble", "problem")


class ScriptedResponder:
    name = "scripted"

    def respond(self, request: DialogueRequest, feedback: str | None = None,
                on_text: TextSink | None = None,
                cancel: threading.Event | None = None) -> DialogueProposal:
        proposal = self._choose(request)
        if on_text is not None:
            for i in range(0, len(proposal.text), 8):
                if cancel is not None and cancel.is_set():
                    break
                on_text(proposal.text[: i + 8])
        return proposal

    def _choose(self, req: DialogueRequest) -> DialogueProposal:
        words = req.player_words.lower()
        legal = req.legal_actions
        for a in legal:
            if isinstance(a, GiveItem):
                name = _item_name(req, a.item)
                return DialogueProposal(text=f"Here it is, the {name}. Fresh from the fire.", action=a)
        if req.quest and any(w in words for w in _QUEST_WORDS + ("ready", "here", "clapper", "ingot")):
            for a in legal:
                if isinstance(a, StartQuest):
                    return DialogueProposal(
                        text="Would you? Bless you. The bell's clapper cracked; Bram can forge a new one from an iron ingot.",
                        action=a)
            if req.quest:
                return DialogueProposal(text=_quest_line(req.quest))
        if any(w in words for w in _BUY_WORDS) or any(o.name in words for o in req.sells):
            for a in legal:
                if isinstance(a, SellItem) and _item_name(req, a.item) in words:
                    return DialogueProposal(
                        text=f"One {_item_name(req, a.item)}, {a.price} gold. Pleasure doing business.",
                        action=a)
            if req.sells:
                wares = ", ".join(f"{o.name} for {o.price} gold" for o in req.sells[:3])
                return DialogueProposal(text=_short(f"I have {wares}."))
            return DialogueProposal(text="I've nothing to sell, traveller.")
        lines = _GREETINGS.get(req.role, ["Hello, traveller."])
        pick = blake3.blake3(f"{req.npc_id}|{req.player_words}|{len(req.recent)}".encode()).digest()[0]
        return DialogueProposal(text=lines[pick % len(lines)])


def _quest_line(quest_facts: list[str]) -> str:
    """Turn the engine's quest facts (written to the NPC) into something the NPC would say."""
    last = quest_facts[-1]
    if "finished" in last:
        return "You got the old bell ringing again. Emberbrook won't forget it."
    if "waiting for the traveller to bring you the " in last:
        thing = last.split("bring you the ", 1)[1].rstrip(".")
        return f"Bring me the {thing} and I'll see to the rest."
    if "should hand it to the traveller" in last:
        return "It's ready. Ask and it's yours."
    if "Their next task: " in last:
        task = last.split("Their next task: ", 1)[1]
        return _short(f"Thank you for helping. Next: {task[0].lower()}{task[1:]}")
    return "We'll talk about it later."


def _item_name(req: DialogueRequest, item: str) -> str:
    for o in req.sells:
        if o.item == item:
            return o.name
    return item.replace("_", " ")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
