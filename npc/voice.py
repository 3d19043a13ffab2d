"""The model's voice: a ``Responder`` that renders NPC speech with the local language model."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack

from engine.dialogue import DialogueProposal, DialogueRequest, unknown_proper_nouns
from npc.grammar import ReplyGrammar
from npc.llama import Adapter
from npc.prompt import trim_history
from npc.responder import TextSink
from npc.runtime import STACK_SEP, Runtime

log = logging.getLogger("hearth.skins")

#: Longest reply in tokens the model chooses (the grammar also bounds the line to two sentences;
#: the engine's fact at its start is forced and not counted).
MAX_REPLY_TOKENS = 56
#: Characters the model may add after the engine's fact.
ROOM_AFTER_FACT = 90


class Cancelled(Exception):
    pass


def _finished(text: str, fact: str) -> str:
    """The engine's fact and the model's own words after it, if those end their sentence: a line
    cut off by its length bound keeps only the fact."""
    if fact and text.startswith(fact) and not text.rstrip().endswith((".", "!", "?")):
        return fact
    return text


class ModelVoice:
    name = "model"

    def __init__(self, runtime: Runtime, max_tokens: int = MAX_REPLY_TOKENS, max_chars: int = 160,
                 pool=None, base_model: str | None = None, village: str | None = None,
                 village_under_skins: bool = False):
        """``pool`` (an ``npc.adapters.AdapterPool``) lets NPCs wear skins; ``base_model`` is the
        BLAKE3 of the base model skins must be made for (the runtime may run a requantization
        of it). ``village`` is the skin id of the world-tuned village voice: every villager
        without a skin speaks with it, and with ``village_under_skins`` it is stacked under each
        worn skin too."""
        self.runtime = runtime
        self.village = village
        self.village_under_skins = village_under_skins
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.pool = pool
        if pool is not None and pool.base_model is None:
            pool.base_model = base_model
        self.last = None  # the last GenResult, for measurement
        self._last_line: tuple[tuple, str] | None = None
        #: Skins that could not be worn, with the reason; their NPCs speak with the base voice.
        self.failed_skins: dict[str, str] = {}

    def _skin_failed(self, skin: str, reason: str) -> None:
        if skin not in self.failed_skins:
            self.failed_skins[skin] = reason
            log.warning("skin %s cannot be worn, using the base voice: %s", skin, reason)

    def _count(self, prompt) -> int:
        return len(self.runtime.tokenize_segments(prompt.segments))

    def respond(self, request: DialogueRequest, feedback: str | None = None,
                on_text: TextSink | None = None,
                cancel: threading.Event | None = None) -> DialogueProposal:
        budget = self.runtime.seq_capacity - self.max_tokens - 16
        prompt = trim_history(request, feedback, self._count, budget)
        tokens = self.runtime.tokenize_segments(prompt.segments)
        grammar = ReplyGrammar(request.legal_actions, self._bound(request), lead=request.fact,
                               required=request.action is not None)
        result = self._generate(request, tokens, grammar, on_text, cancel)
        self.last = result
        if result.cancelled:
            raise Cancelled()
        text, action = grammar.result()
        if not grammar.done and request.action is None:
            action = None  # out of tokens mid-line: keep the words, drop any unfinished intent
        text = _finished(text, request.fact)
        self._last_line = ((request.npc_id, request.player_words, len(request.recent)), text)
        return DialogueProposal(text=text, action=action)

    def prepare(self, request: DialogueRequest) -> int:
        """Compute the stable head of this villager's prompt (persona, situation, examples) ahead
        of the player's first words, so the reply starts from a warm cache; returns the tokens
        computed (0 when already cached). Called while the player is still typing."""
        prompt = trim_history(request, None, self._count, self.runtime.seq_capacity)
        head = self.runtime.tokenize_segments(prompt.segments[:prompt.n_prefix])
        with ExitStack() as stack:
            key, adapters = self._hold(stack, request)
            return self.runtime.prefill(head, key=request.npc_id, adapter=adapters,
                                        adapter_key=key)

    def _bound(self, request: DialogueRequest) -> int:
        if request.fact:
            return min(request.max_chars, len(request.fact.encode()) + ROOM_AFTER_FACT)
        return min(self.max_chars, request.max_chars)

    def _layers(self, request: DialogueRequest) -> list[str]:
        """The adapters this villager speaks with, bottom first: the village voice (alone, or
        under a skin when skins are trained on top of it) and the skin it wears."""
        skin = request.skin if request.skin not in self.failed_skins else None
        village = self.village if self.village not in self.failed_skins else None
        if skin is None:
            return [village] if village else []
        return [village, skin] if village and self.village_under_skins else [skin]

    def _hold(self, stack: ExitStack, request: DialogueRequest
              ) -> tuple[str | None, tuple[Adapter, ...] | None]:
        """Hold (until ``stack`` closes) the adapters this villager speaks with; their prefix-cache
        key and the stack, or (None, None) for the plain model. One that cannot be worn is
        recorded as failed and left out. A skin over the village voice is worn as one adapter
        composed of both (the pool's stacks), so it costs a turn what a skin alone costs."""
        layers = self._layers(request)
        if layers and self.pool is None:
            for skin in layers:
                self._skin_failed(skin, "this voice has no adapter pool")
            return None, None
        if len(layers) > 1:
            key = STACK_SEP.join(layers)
            try:
                return key, (stack.enter_context(self.pool.hold(key)),)
            except Exception:  # noqa: BLE001 - held layer by layer below, which names the culprit
                pass
        held = []
        for skin in layers:
            try:
                held.append((skin, stack.enter_context(self.pool.hold(skin))))
            except Exception as e:  # not installed, fails verification, refused by llama.cpp...
                self._skin_failed(skin, str(e) or type(e).__name__)
        if not held:
            return None, None
        return STACK_SEP.join(k for k, _ in held), tuple(a for _, a in held)

    def _generate(self, request: DialogueRequest, tokens: list[int], grammar: ReplyGrammar,
                  on_text, cancel):
        with ExitStack() as stack:
            key, adapters = self._hold(stack, request)
            if adapters is not None:
                try:
                    return self._run(request, tokens, grammar, on_text, cancel, key, adapters)
                except Exception as e:  # llama.cpp would not apply them: speak without
                    for skin in key.split(STACK_SEP):
                        self._skin_failed(skin, f"generating with it failed: {e}")
        return self._run(request, tokens, grammar, on_text, cancel, None, None)

    def _run(self, request, tokens, grammar, on_text, cancel, key: str | None,
             adapters: tuple[Adapter, ...] | None):
        # The runtime keys its prefix cache by (adapter key, NPC), so a skin never reuses a
        # prefix computed under other weights.
        return self.runtime.generate(tokens, key=request.npc_id, grammar=grammar,
                                     max_tokens=self.max_tokens, on_text=on_text, cancel=cancel,
                                     adapter=adapters, adapter_key=key,
                                     avoid=self._no_copy(request), ban=self._banned_words(request))

    def _retrying(self, request: DialogueRequest) -> str | None:
        """The line this voice last proposed for this very request, if it is being asked again."""
        last = self._last_line
        if last is not None and last[0] == (request.npc_id, request.player_words, len(request.recent)):
            return last[1]
        return None

    def _banned_words(self, request: DialogueRequest) -> set[int]:
        """After a refusal for an invented name, the names in the refused line are not offered
        again (the first token of each, with and without a leading space)."""
        refused = self._retrying(request)
        if not refused:
            return set()
        tok = self.runtime.model.tokenize
        out: set[int] = set()
        for word in unknown_proper_nouns(refused, request):
            for form in (word, " " + word):
                ids = tok(form, parse_special=False)
                if ids:
                    out.add(ids[0])
        return out

    def _no_copy(self, request: DialogueRequest) -> list[list[int]]:
        """Token runs the reply may not copy: the player's words, the engine's fact (already forced
        at the line's start), the NPC's own last lines, and a line of its that was just refused."""
        texts = [request.player_words, request.fact] + [t.text for t in request.recent[-4:]
                                                        if t.speaker != "player"]
        refused = self._retrying(request)
        if refused:
            texts.append(refused)
        tok = self.runtime.model.tokenize
        return [tok(t, parse_special=False) for t in texts if t] + \
               [tok(" " + t, parse_special=False) for t in texts if t]
