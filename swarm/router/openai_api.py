"""OpenAI request bodies checked field by field into ``ParsedRequest``s.

Every field OpenAI defines for ``/v1/chat/completions`` and ``/v1/completions`` is in one of
three sets: honoured (``CHAT_FIELDS`` / ``COMPLETION_FIELDS``), accepted and ignored because
ignoring it cannot change the answer (``IGNORED``: bookkeeping such as ``user`` or ``metadata``),
or refused with a 400 naming the field (everything else, and a sampling knob set to a value that
would change the output, e.g. a nonzero ``presence_penalty``). ``null`` is "not given", as in
OpenAI's API. A wrong type or an out-of-range value is a 400 naming the field, never a silent
fallback."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from swarm.jobs.batchfile import DEFAULT_MAX_TOKENS
from swarm.router.errors import bad_request
from swarm.router.local import ChatTurn, GenerationRequest, ToolCall

MAX_N = 16
#: max_tokens when a chat request sets none, as in a jobs Batch file (OpenAI's "as many as fit"
#: would tie up a slot for the whole context).
CHAT_MAX_TOKENS = DEFAULT_MAX_TOKENS
#: OpenAI's default for text completions.
COMPLETION_MAX_TOKENS = 16
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
#: Fields whose value cannot change a completion: accepted and ignored.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier",
                     "prompt_cache_key"})
#: Sampling knobs honoured only at their neutral value.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0}
CHAT_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens",
                         "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
                         "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
                         "parallel_tool_calls", "logit_bias"}) | IGNORED | set(NEUTRAL)
COMPLETION_FIELDS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "n",
                               "seed", "stop", "stream", "stream_options", "logprobs", "echo",
                               "suffix", "best_of", "logit_bias"}) | IGNORED | set(NEUTRAL)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: what to generate (one ``GenerationRequest`` per choice and prompt,
    in output order) and how to answer."""

    kind: str  # "chat" | "completion"
    model: str
    choices: tuple[GenerationRequest, ...]
    n: int = 1  # choices per prompt
    stream: bool = False
    include_usage: bool = False
    body: dict = field(default_factory=dict)  # the request as received, for an upstream

    @property
    def first(self) -> GenerationRequest:
        return self.choices[0]


# ---- field checks --------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v):
        raise bad_request(f"{name} must be an integer, not {type(v).__name__}", name)
    if v < lo or (hi is not None and v > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise bad_request(f"{name} must be {span}, not {v}", name)
    return v


def _num(body: dict, name: str, lo: float, hi: float, default: float, *,
         lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v):
        raise bad_request(f"{name} must be a number, not {type(v).__name__}", name)
    if v > hi or v < lo or (lo_open and v == lo):
        low = f"more than {lo}" if lo_open else f"at least {lo}"
        raise bad_request(f"{name} must be {low} and at most {hi}, not {v}", name)
    return float(v)


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_request(f"{name} must be a boolean, not {type(v).__name__}", name)
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} sequences, not {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise bad_request("stop sequences cannot be empty", "stop")
    return tuple(stops)


def _check_fields(body: dict, allowed: frozenset) -> None:
    for name in body:
        if name not in allowed:
            raise bad_request(f"Unrecognized or unsupported request argument supplied: {name}",
                              name, "unsupported_parameter")
    for name, neutral in NEUTRAL.items():
        v = body.get(name)
        if v is not None and (not _is_num(v) or v != neutral):
            raise bad_request(f"{name} is not supported (only {neutral} or null)", name,
                              "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported (only an empty object or null)",
                          "logit_bias", "unsupported_parameter")
    for name in ("user", "service_tier", "safety_identifier", "prompt_cache_key"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"{name} must be a string", name)
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise bad_request("metadata must be an object", "metadata")


def _model(body: dict) -> str:
    v = body.get("model")
    if not isinstance(v, str) or not v:
        raise bad_request("model is required: a model name as /v1/models lists them", "model")
    return v


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
        raise bad_request("stream_options takes only include_usage", "stream_options")
    return stream, _bool(opts, "include_usage")


def _sampling(body: dict) -> dict:
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request(f"seed must be an integer, not {type(seed).__name__}", "seed")
    return {"temperature": _num(body, "temperature", 0.0, 2.0, 1.0),
            "top_p": _num(body, "top_p", 0.0, 1.0, 1.0, lo_open=True),
            "seed": seed if seed is not None else random.getrandbits(31),
            "stop": _stop(body)}


def _choices(base: GenerationRequest, n: int) -> tuple[GenerationRequest, ...]:
    """``n`` choices of one request: the i-th samples with seed ``seed + i``."""
    return tuple(replace(base, seed=(base.seed + i) % 2**63) for i in range(n))


# ---- chat ----------------------------------------------------------------------------------------

def _text_content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"{where}.content[{i}]: only text parts are supported, "
                                  f"not {kind!r}", f"{where}.content")
            out.append(part["text"])
        return "".join(out)
    raise bad_request(f"{where}.content must be a string or a list of text parts",
                      f"{where}.content")


def _tool_calls(raw, where: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not isinstance(fn.get("arguments"), str) or not isinstance(call.get("id"), str):
            raise bad_request(f"{where}.tool_calls[{i}] must have an id and a function with a "
                              f"name and arguments (a JSON string)", f"{where}.tool_calls")
        out.append(ToolCall(call["id"], fn["name"], fn["arguments"]))
    return tuple(out)


def _messages(body: dict) -> tuple[ChatTurn, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object", "messages")
        role = ROLES.get(m.get("role")) if isinstance(m.get("role"), str) else None
        if role is None:
            raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, not "
                              f"{m.get('role')!r}", f"{where}.role")
        extra = set(m) - {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
        if extra:
            raise bad_request(f"{where}: unsupported field {sorted(extra)[0]}", where)
        calls = _tool_calls(m.get("tool_calls"), where) if role == "assistant" else ()
        content = m.get("content")
        if content is None and not calls:
            raise bad_request(f"{where}.content is required", f"{where}.content")
        call_id = m.get("tool_call_id")
        if role == "tool" and not isinstance(call_id, str):
            raise bad_request(f"{where}.tool_call_id is required for a tool message",
                              f"{where}.tool_call_id")
        out.append(ChatTurn(role, "" if content is None else _text_content(content, where),
                            calls, call_id if role == "tool" else None))
    return tuple(out)


def _response_format(body: dict) -> dict | None:
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request("response_format.type must be text, json_object or json_schema",
                          "response_format")
    if rf["type"] == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str) \
                or not isinstance(js.get("schema", {}), dict):
            raise bad_request("response_format.json_schema must be an object with a name and a "
                              "schema", "response_format.json_schema")
    return rf


def _tools(body: dict) -> tuple[tuple[dict, ...], object]:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return (), None
    if not isinstance(tools, list) or not tools:
        raise bad_request("tools must be a non-empty list", "tools")
    names = set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                              f"{{\"name\": ..., \"parameters\": ...}}}}", f"tools[{i}]")
        if not isinstance(fn.get("parameters", {}), dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object",
                              f"tools[{i}].function.parameters")
        names.add(fn["name"])
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        fn = choice.get("function")
        if choice.get("type") != "function" or not isinstance(fn, dict) \
                or fn.get("name") not in names:
            raise bad_request("tool_choice must name one of the request's tools",
                              "tool_choice")
    elif choice not in ("none", "auto", "required"):
        raise bad_request("tool_choice must be none, auto, required or a named function",
                          "tool_choice")
    return tuple(tools), choice


def parse_chat(body: dict) -> ParsedRequest:
    _check_fields(body, CHAT_FIELDS)
    model = _model(body)
    messages = _messages(body)
    stream, include_usage = _stream(body)
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1) or CHAT_MAX_TOKENS
    logprobs = None
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if _bool(body, "logprobs"):
        logprobs = top or 0
    elif top is not None:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    rf = _response_format(body)
    tools, choice = _tools(body)
    if rf is not None and rf["type"] != "text" and tools and choice != "none":
        raise bad_request("response_format and tools cannot both constrain one answer",
                          "response_format")
    n = _int(body, "n", 1, MAX_N) or 1
    base = GenerationRequest(model=model, messages=messages, max_tokens=max_tokens,
                             logprobs=logprobs, response_format=rf, tools=tools,
                             tool_choice=choice,
                             parallel_tool_calls=_bool(body, "parallel_tool_calls"),
                             **_sampling(body))
    return ParsedRequest("chat", model, _choices(base, n), n, stream, include_usage, body)


# ---- text completions ----------------------------------------------------------------------------

def parse_completion(body: dict) -> ParsedRequest:
    _check_fields(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts \
            or not all(isinstance(p, str) for p in prompts):
        raise bad_request("prompt must be a string or a non-empty list of strings (token "
                          "arrays are not supported)", "prompt")
    if _bool(body, "echo"):
        raise bad_request("echo is not supported", "echo", "unsupported_parameter")
    if body.get("suffix") is not None:
        raise bad_request("suffix is not supported", "suffix", "unsupported_parameter")
    stream, include_usage = _stream(body)
    n = _int(body, "n", 1, MAX_N) or 1
    best_of = _int(body, "best_of", 1, MAX_N)
    if best_of is not None and best_of != n:
        raise bad_request("best_of is supported only equal to n", "best_of",
                          "unsupported_parameter")
    if len(prompts) * n > MAX_N:
        raise bad_request(f"at most {MAX_N} completions per request (prompts times n)", "n")
    max_tokens = _int(body, "max_tokens", 1)
    sampling = _sampling(body)
    choices = []
    for p in prompts:
        base = GenerationRequest(model=model, prompt=p,
                                 max_tokens=max_tokens or COMPLETION_MAX_TOKENS,
                                 logprobs=_int(body, "logprobs", 0, MAX_TOP_LOGPROBS), **sampling)
        choices.extend(_choices(base, n))
    return ParsedRequest("completion", model, tuple(choices), n, stream, include_usage, body)
