"""The values the serving engine returns: the same field names as swarm's jobs contract
(``swarm.jobs.backend``), as plain frozen dataclasses so npc does not depend on swarm."""

from __future__ import annotations

from dataclasses import dataclass

FINISH_STOP = "stop"      # the decoding rule gave end-of-generation
FINISH_LENGTH = "length"  # max_tokens tokens were generated


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Item:
    """An item with the attributes of swarm's ``WorkItem``, for npc's own checks, tests and
    benchmarks (the engine reads items by attribute, so either serves)."""

    custom_id: str
    messages: list
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    """The exact tokens generated for one item; ``text`` is derived from them."""

    custom_id: str
    tokens: list[int]
    text: str
    prompt_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of re-scoring one claimed completion teacher-forced."""

    ok: bool
    checked_tokens: int
    first_mismatch: int | None = None  # index into the claimed tokens
    reason: str = ""


class ServingError(ValueError):
    """An item or a configuration the engine cannot serve exactly (the message says why)."""


class Released(Exception):
    """The gate kept serving paused past the limit: ``done`` holds the items finished before
    the pause, ``undone`` the custom ids of the rest, which go back to the requester."""

    def __init__(self, done: list[Completion], undone: list[str]):
        super().__init__(f"{len(undone)} item(s) released unfinished")
        self.done = done
        self.undone = undone
