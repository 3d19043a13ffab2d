"""What the endpoint needs of a model it runs requests on, as plain values.

The game implements ``LocalModel`` over npc's continuous-batching scheduler; the endpoint only
sees ``GenerationRequest`` in, and ``Piece`` ... ``Done`` out of a ``Generation``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ChatTurn:
    """One message of a chat, flattened to text (content parts joined)."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a "tool" turn: the call it answers


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate (a request with ``n`` choices is ``n`` of these, the i-th
    with seed ``seed + i``)."""

    model: str  # the model name asked for ("hearth", "hearth/saltbeard", ...)
    messages: tuple[ChatTurn, ...] | None = None  # chat; exactly one of messages / prompt
    prompt: str | None = None  # raw text (text completions)
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's logprob and k alternatives
    response_format: dict | None = None  # OpenAI's response_format (json_object, json_schema)
    tools: tuple[dict, ...] = ()  # OpenAI's tools (type "function")
    tool_choice: object = None  # OpenAI's tool_choice ("none" | "auto" | "required" | {...})
    parallel_tool_calls: bool = False  # more than one call per answer (only when asked for)

    @property
    def constrained(self) -> bool:
        """The output must follow a grammar (a JSON format or tool calls)."""
        kind = (self.response_format or {}).get("type", "text")
        return kind != "text" or (bool(self.tools) and self.tool_choice != "none")


@dataclass(frozen=True)
class Piece:
    """New text of a completion, with its token's logprob when asked for."""

    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[str, float], ...] = ()
    token: str | None = None  # the token's own text, for logprobs (may differ from ``text``)


@dataclass(frozen=True)
class Done:
    finish_reason: str  # "stop" | "length" | "tool_calls" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    text: str  # the whole completion (stop string removed)
    tool_calls: tuple[ToolCall, ...] = ()  # when the model called tools (text is then "")


class Generation(Protocol):
    def __aiter__(self) -> AsyncIterator[Piece | Done]:
        """``Piece``s as they are generated, then exactly one ``Done``."""

    def cancel(self) -> None:
        """Stop generating (the client went away); the stream ends with Done("cancelled")."""


class LocalModel(Protocol):
    def models(self) -> list[str]:
        """The model names this machine serves: the base model first, then one per skin."""

    def start(self, req: GenerationRequest) -> Generation:
        """Begin generating. Raises ``swarm.router.errors.ApiError`` (400) for a request the
        model cannot honour (an unsupported schema, a prompt too long...)."""

    def resolve(self, model: str) -> tuple[str, str | None] | None:
        """(base model id, skin id or None) for a model name, None when not served here."""
