"""A deterministic, rule-based NPC voice: the game is playable without a model, and tests have a
responder whose every answer is known. It reads the ``DialogueRequest`` only: the engine has
already decided what the player wants, the action and the fact; this voice says the fact and adds
a line in the villager's trade."""

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
        match req.action:
            case SellItem():
                return DialogueProposal(text=f"{req.fact} Pleasure doing business.", action=req.action)
            case GiveItem():
                return DialogueProposal(text=f"{req.fact} Take good care of it.", action=req.action)
            case StartQuest():
                return DialogueProposal(text=req.fact, action=req.action)
        if req.fact:
            return DialogueProposal(text=req.fact)
        lines = _GREETINGS.get(req.role, ["Hello, traveller."])
        pick = blake3.blake3(f"{req.npc_id}|{req.player_words}|{len(req.recent)}".encode()).digest()[0]
        return DialogueProposal(text=lines[pick % len(lines)])
