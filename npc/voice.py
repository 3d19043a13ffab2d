"""The model's voice: a ``Responder`` that renders NPC speech with the local language model."""

from __future__ import annotations

import threading

from engine.dialogue import DialogueProposal, DialogueRequest
from npc.grammar import ReplyGrammar
from npc.prompt import trim_history
from npc.responder import TextSink
from npc.runtime import Runtime

#: Longest reply in tokens (the grammar also bounds the line to two sentences).
MAX_REPLY_TOKENS = 56


class Cancelled(Exception):
    pass


class ModelVoice:
    name = "model"

    def __init__(self, runtime: Runtime, max_tokens: int = MAX_REPLY_TOKENS, max_chars: int = 160):
        self.runtime = runtime
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.last = None  # the last GenResult, for measurement

    def _count(self, prompt) -> int:
        return len(self.runtime.tokenize_segments(prompt.segments))

    def respond(self, request: DialogueRequest, feedback: str | None = None,
                on_text: TextSink | None = None,
                cancel: threading.Event | None = None) -> DialogueProposal:
        budget = self.runtime.seq_capacity - self.max_tokens - 16
        prompt = trim_history(request, feedback, self._count, budget)
        tokens = self.runtime.tokenize_segments(prompt.segments)
        grammar = ReplyGrammar(request.legal_actions, min(self.max_chars, request.max_chars))
        result = self.runtime.generate(tokens, key=(request.npc_id, request.skin), grammar=grammar,
                                       max_tokens=self.max_tokens, on_text=on_text, cancel=cancel)
        self.last = result
        if result.cancelled:
            raise Cancelled()
        text, action = grammar.result()
        if not grammar.done:
            action = None  # out of tokens mid-line: keep the words, drop any unfinished intent
        return DialogueProposal(text=text, action=action)
