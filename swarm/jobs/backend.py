"""What a worker needs from the model that does the work, and what a verifier needs to re-score it.

swarm never imports the language layer: the game builds an object meeting ``InferenceBackend``
(npc's batched engine) and hands it to the worker or the requester. Everything crossing this
boundary is a plain value, so the same items travel over the wire unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: str  # "system" | "user" | "assistant"
    content: str


class WorkItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One request of a batch, already checked against what can be honoured."""

    custom_id: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0
    seed: int = 0  # the seeded sampler's seed; replayable from logits by a verifier


class Completion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A worker's claim for one item: the exact tokens it generated. The text is derived from
    the tokens; a verifier checks the tokens, never the text."""

    custom_id: str
    tokens: list[int]
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (end of generation or a stop sequence) | "length"


class Verdict(msgspec.Struct, frozen=True):
    """The outcome of re-scoring one claimed completion teacher-forced."""

    ok: bool
    checked_tokens: int
    first_mismatch: int | None = None  # index into the claimed tokens
    reason: str = ""  # why it failed, for the fraud record ("token 7: claimed 812, rule gives 13")


class Gate(Protocol):
    """Whether serving may run now. ``paused()`` is called between decode steps, so it must be
    cheap. ``wait_resumed(timeout)`` blocks while paused and returns True when serving may go on,
    False when the paused work is to be released. A gate may also offer
    ``on_change(fn) -> unsubscribe`` (``fn(paused)`` called at once and on every change; the
    engine's abort flag then follows it with nothing polling) or a ``poll_s`` attribute (how
    often polling it is worth: it changes no faster)."""

    def paused(self) -> bool: ...

    def wait_resumed(self, timeout: float) -> bool: ...


class Released(Exception):
    """Paused too long: the unfinished items go back to the requester."""

    def __init__(self, done: list[Completion], undone: list[str]):
        super().__init__(f"{len(undone)} item(s) released unfinished")
        self.done = done
        self.undone = undone


class InferenceBackend(Protocol):
    @property
    def model_id(self) -> str:
        """The BLAKE3 of the model file served (hex)."""

    def generate(self, items: Sequence[WorkItem], skin: str | None = None, *,
                 gate: Gate | None = None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
        """Complete every item (continuous batching inside), wearing ``skin`` (a skin id) if
        given. Calls ``on_done`` as each item finishes. Raises ``Released`` when the gate
        releases paused work."""

    def rescore(self, item: WorkItem, claim: Completion, skin: str | None = None) -> Verdict:
        """Re-score ``claim`` teacher-forced in one prefill and check every claimed token
        against the decoding rule (greedy: argmax; sampled: the seeded sampler replayed)."""
