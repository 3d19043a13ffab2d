"""The local model of ``hearth serve``: npc's continuous-batching ``Scheduler`` over the game's
engine, offered to the endpoint (swarm.router) as its ``LocalModel``.

Model names: ``hearth`` is the base model (``default`` and its BLAKE3 id are accepted too); each
installed skin made for it is ``hearth/<skin name>`` (lowercase, non-alphanumerics as ``-``; a
name two skins share gets ``@<first 12 hex digits of the id>``), and ``hearth/<skin id>`` works
too. Skins are worn per request: the scheduler groups requests by skin.

Grammars: ``response_format`` and ``tools`` become ``npc.serving.constrain`` constraints applied
under the project's sampler; a tool request's system prompt gains the tools' description
(``constrain.tool_prompt``), earlier tool calls are shown to the model in the layout it is held
to, and tool results as ``<tool_response>`` user turns. Anything the scheduler or the grammar
engine cannot honour is a 400 naming the request field."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable

from swarm.router.errors import SERVER, ApiError, bad_request
from swarm.router.local import ChatTurn, Done, GenerationRequest, Piece, ToolCall

BASE_NAME = "hearth"
#: How long a listing of the installed skins is reused.
SKINS_FRESH_S = 5.0


def skin_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "skin"


class _Generation:
    """One request's stream: the scheduler's events as the endpoint's Pieces and a Done."""

    def __init__(self, handle, model, tools: bool):
        self.handle = handle
        self._model = model
        self._tools = tools

    async def __aiter__(self):
        from npc.serving import ServingError
        try:
            async for item in self._events():
                yield item
        except ServingError as e:  # accepted, then could not be served (a skin failed to load)
            raise ApiError(500, f"generation failed: {e}", type=SERVER) from None

    async def _events(self):
        from npc.serving.constrain import parse_tool_calls
        from npc.serving.scheduler import Finished
        async for ev in self.handle.aevents():
            if isinstance(ev, Finished):
                calls = parse_tool_calls(ev.text) if self._tools else None
                if calls:
                    yield Done("tool_calls", ev.prompt_tokens, ev.completion_tokens, "",
                               tuple(ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, args)
                                     for name, args in calls))
                else:
                    yield Done(ev.finish_reason, ev.prompt_tokens, ev.completion_tokens, ev.text)
                return
            token = None
            if ev.logprob is not None:
                token = self._model.piece(ev.token, special=True).decode("utf-8", "replace")
            yield Piece(ev.text, ev.logprob, ev.top_logprobs, token)

    def cancel(self) -> None:
        self.handle.cancel()


class SchedulerModel:
    """A ``swarm.router.local.LocalModel`` over ``npc.serving.scheduler.Scheduler``."""

    def __init__(self, scheduler, skin_store, base_model: str):
        self.scheduler = scheduler
        self.skin_store = skin_store
        self.base_model = base_model
        self._names: dict[str, str] = {}
        self._listed = float("-inf")
        self._lock = threading.Lock()

    # ---- names ---------------------------------------------------------------------------------

    def _skins(self) -> dict[str, str]:
        """{model name: skin id} for the installed skins made for the base model."""
        with self._lock:
            if time.monotonic() - self._listed > SKINS_FRESH_S:
                skins = [s for s in self.skin_store.list()
                         if s.manifest.base_model == self.base_model]
                slugs = [skin_slug(s.manifest.name) for s in skins]
                self._names = {
                    f"{BASE_NAME}/{slug}" + (f"@{s.skin_id[:12]}" if slugs.count(slug) > 1 else ""):
                    s.skin_id for s, slug in zip(skins, slugs)}
                self._listed = time.monotonic()
            return self._names

    def models(self) -> list[str]:
        return [BASE_NAME, *self._skins()]

    def resolve(self, model: str) -> tuple[str, str | None] | None:
        if model in (BASE_NAME, "default", self.base_model):
            return self.base_model, None
        skins = self._skins()
        if model in skins:
            return self.base_model, skins[model]
        ref = model.removeprefix(f"{BASE_NAME}/")
        if ref in skins.values():
            return self.base_model, ref
        return None

    # ---- generating ----------------------------------------------------------------------------

    def start(self, req: GenerationRequest) -> _Generation:
        from npc.serving import ServingError
        from npc.serving import constrain
        from npc.serving.scheduler import GenRequest

        resolved = self.resolve(req.model)
        if resolved is None:
            raise ApiError(404, f"model {req.model!r} is not served here", param="model",
                           code="model_not_found")
        tools = bool(req.tools) and req.tool_choice != "none"
        try:
            if tools:
                constraint = constrain.tool_calls(list(req.tools), req.tool_choice,
                                                  parallel=req.parallel_tool_calls)
            else:
                constraint = constrain.response_format(req.response_format)
            messages = None if req.messages is None else _render(req.messages, req.tools
                                                                 if tools else ())
            handle = self.scheduler.submit(GenRequest(
                messages=messages, prompt=req.prompt,
                max_tokens=req.max_tokens, temperature=req.temperature,
                top_p=req.top_p, seed=req.seed, stop=req.stop, logprobs=req.logprobs,
                skin=resolved[1], constraint=constraint))
        except constrain.UnsupportedConstraint as e:
            raise bad_request(str(e), e.param, "unsupported_constraint") from None
        except ServingError as e:
            raise bad_request(str(e), _param_of(str(e))) from None
        return _Generation(handle, self.scheduler.engine.model, tools)


def _param_of(message: str) -> str | None:
    for name in ("max_tokens", "messages", "prompt", "temperature", "top_p", "stop", "logprobs"):
        if name in message:
            return name
    return None


def _render(turns: tuple[ChatTurn, ...], tools: tuple[dict, ...]) -> tuple[tuple[str, str], ...]:
    """(role, content) pairs for the chat template: tool calls in the layout the grammar holds
    the model to, tool results as user turns, the tools described in the system prompt."""
    from npc.serving.constrain import CALL_CLOSE, CALL_OPEN, CALL_SEP, tool_prompt

    out = []
    for t in turns:
        if t.role == "tool":
            out.append(("user", f"<tool_response>\n{t.content}\n</tool_response>"))
        elif t.tool_calls:
            calls = CALL_SEP.join(
                CALL_OPEN + json.dumps({"name": c.name, "arguments": _arguments(c)},
                                       ensure_ascii=False) + CALL_CLOSE for c in t.tool_calls)
            out.append(("assistant", (t.content + "\n" if t.content else "") + calls))
        else:
            out.append((t.role, t.content))
    if tools:
        prompt = tool_prompt(list(tools))
        if out and out[0][0] == "system":
            out[0] = ("system", out[0][1] + "\n\n" + prompt)
        else:
            out.insert(0, ("system", prompt))
    return tuple(out)


def _arguments(call: ToolCall):
    try:
        return json.loads(call.arguments)
    except ValueError:
        raise bad_request(f"tool call {call.id}: arguments are not JSON",
                          "messages.tool_calls") from None


def load_local_model(gate=None, *, width: int | None = None,
                     say: Callable[[str], None] = lambda s: None):
    """(the LocalModel, the engine backend it runs on, the scheduler): the game's model in the
    configuration measured fastest on this machine (``load_backend("tuned")``), wearing installed
    skins. The caller closes the scheduler, then the backend."""
    from game.jobs_backend import load_backend
    from npc.serving.scheduler import Scheduler

    backend = load_backend("tuned", width=width, self_check=False, say=say)
    scheduler = Scheduler(backend.engine, gate=gate)
    return SchedulerModel(scheduler, backend.pool.store, backend.pool.base_model), backend, scheduler
