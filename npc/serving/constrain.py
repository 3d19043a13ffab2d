"""Grammar constraints for served generations: JSON output and tool calls, enforced by llguidance.

A ``Constraint`` is a validated, immutable spec built from a request (``response_format``,
``tools``/``tool_choice``); anything llguidance cannot enforce exactly is refused with an
``UnsupportedConstraint`` naming the request field, never served unconstrained. For each
generation ``Constraint.matcher(model)`` gives a ``Matcher`` whose ``allowed()`` mask the caller
applies to the logits before the project's own sampler picks, so the sampler's rule is
unchanged and an unconstrained request pays nothing. ``ConstraintBroken`` from a matcher means
the generation cannot go on constrained (a caller bug, or one of llguidance's resource limits).

Objects that list ``properties`` without saying whether others are allowed are generated closed
(``schema_rules.closed``): every output is still valid under the request's schema, and a small
model cannot append invented or repeated keys. OpenAPI's number formats (int32 ...) are
enforced as the bounds they mean.

JSON is generated in one canonical layout: no free whitespace, ``", "`` between items and
``": "`` after keys (the spacing the model's tokenizer favours); without it a small model can
pad with whitespace until it runs out of tokens.

Tool calls use the Hermes layout, one block per call, blocks separated by a newline::

    <tool_call>
    {"name": "<a tool's name>", "arguments": {<the tool's parameters>}}
    </tool_call>

With ``tool_choice`` "auto" the output is either such calls or plain text that does not start
with ``<`` or whitespace (so the two can never be confused).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from llguidance import LLMatcher

from npc.serving import schema_rules
from npc.serving.grammar_vocab import tokenizer_for

#: How every JSON value is laid out (llguidance's JSON compile options; they override the schema's).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
#: A request's schema, serialised, may not be larger than this.
MAX_SCHEMA_BYTES = 256 * 1024
#: Calls one answer may hold when parallel calls are allowed.
MAX_PARALLEL_CALLS = 8
CALL_OPEN, CALL_CLOSE, CALL_SEP = "<tool_call>\n", "\n</tool_call>", "\n"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

SCHEMA_PARAM = "response_format.json_schema.schema"


class UnsupportedConstraint(ValueError):
    """A constraint that cannot be enforced as asked; the message is fit for an OpenAI 400 error
    and ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class ConstraintBroken(RuntimeError):
    """The matcher was driven outside its grammar (a token it did not allow) or hit one of
    llguidance's resource limits mid-generation; the generation cannot continue constrained."""


@dataclass(frozen=True)
class Constraint:
    """A validated grammar (llguidance's serialised form) for one request."""

    kind: str       # "json_object" | "json_schema" | "tool_calls"
    grammar: str
    param: str      # the request field the grammar came from

    def matcher(self, model) -> "Matcher":
        """A fresh matcher for one generation with ``model`` (an ``npc.llama.Model``)."""
        tok = tokenizer_for(model)
        return Matcher(_templates.fresh(model, tok, self), tok.vocab_size, model.n_vocab)

    def prepare(self, model) -> None:
        """Build the model's vocabulary view and compile this grammar now, so a later
        ``matcher`` (on a thread that must not stall) only copies it. Optional."""
        _templates.fresh(model, tokenizer_for(model), self)


class _Templates:
    """Compiled matchers in their initial state, per model and grammar, most recent last.

    Compiling a grammar against the vocabulary takes up to ~10 ms (a few tools); copying a
    compiled matcher takes microseconds, and clients tend to send the same schema again."""

    SIZE = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._by_model: "weakref.WeakKeyDictionary[object, OrderedDict[str, LLMatcher]]" = \
            weakref.WeakKeyDictionary()

    def fresh(self, model, tok, constraint: Constraint) -> LLMatcher:
        with self._lock:
            cache = self._by_model.setdefault(model, OrderedDict())
            template = cache.get(constraint.grammar)
            if template is not None:
                cache.move_to_end(constraint.grammar)
                return template.deep_copy()
        template = LLMatcher(tok, constraint.grammar, log_level=0)
        if template.is_error():
            raise UnsupportedConstraint(f"{constraint.param}: {template.get_error()}",
                                        constraint.param)
        with self._lock:
            cache[constraint.grammar] = template
            while len(cache) > self.SIZE:
                cache.popitem(last=False)
        return template.deep_copy()


_templates = _Templates()


class Matcher:
    """The grammar's state during one generation."""

    def __init__(self, ll: LLMatcher, grammar_vocab: int, n_vocab: int):
        self._ll = ll
        self._n_vocab = n_vocab
        self._bits = np.zeros((grammar_vocab + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray | None:
        """A bool mask over the model's vocabulary: the tokens that may come next (end of
        generation only where the grammar may end)."""
        self._ll.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._check()
        mask = np.unpackbits(self._bits.view(np.uint8), bitorder="little").view(bool)
        if len(mask) >= self._n_vocab:
            return mask[: self._n_vocab]
        return np.concatenate([mask, np.zeros(self._n_vocab - len(mask), dtype=bool)])

    def advance(self, token: int) -> None:
        """Take ``token`` as generated; raises ``ConstraintBroken`` if the grammar forbids it."""
        if not self._ll.consume_token(int(token)):
            raise ConstraintBroken(f"token {token} is outside the grammar: {self._ll.get_error()}")

    def finished(self) -> bool:
        """The grammar is complete and can take nothing more but the end of generation."""
        return self._ll.is_stopped() and not self._ll.is_error()

    def accepting(self) -> bool:
        """The output so far is a complete answer (generation could end here)."""
        return self._ll.is_accepting()

    def _check(self) -> None:
        if self._ll.is_error():
            raise ConstraintBroken(self._ll.get_error())


# -- response_format ---------------------------------------------------------------------------

def json_object() -> Constraint:
    """Any JSON object."""
    return Constraint("json_object", _schema_grammar({"type": "object"}, "response_format"),
                      "response_format")


def json_schema(schema: dict, *, strict: bool | None = None, param: str = SCHEMA_PARAM
                ) -> Constraint:
    """A JSON value valid against ``schema``. Raises ``UnsupportedConstraint`` for a schema
    llguidance cannot enforce exactly, and with ``strict`` for one breaking OpenAI's strict-mode
    rules (closed objects, every property required)."""
    _check_schema(schema, param, strict=bool(strict))
    return Constraint("json_schema", _schema_grammar(_prepared(schema), param), param)


def response_format(value) -> Constraint | None:
    """The constraint for an OpenAI ``response_format`` object; None for plain text."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UnsupportedConstraint("response_format must be an object", "response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object()
    if kind != "json_schema":
        raise UnsupportedConstraint(f"response_format.type must be 'text', 'json_object' or "
                                    f"'json_schema', not {kind!r}", "response_format.type")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise UnsupportedConstraint("response_format.json_schema must be an object",
                                    "response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UnsupportedConstraint("response_format.json_schema.name is required: 1 to 64 "
                                    "letters, digits, underscores or dashes",
                                    "response_format.json_schema.name")
    if not isinstance(spec.get("description", ""), str):
        raise UnsupportedConstraint("response_format.json_schema.description must be a string",
                                    "response_format.json_schema.description")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise UnsupportedConstraint("response_format.json_schema.strict must be a boolean",
                                    "response_format.json_schema.strict")
    if "schema" not in spec:
        raise UnsupportedConstraint(f"{SCHEMA_PARAM} is required", SCHEMA_PARAM)
    return json_schema(spec["schema"], strict=strict)


# -- tools -------------------------------------------------------------------------------------

def tool_calls(tools: list[dict] | None, tool_choice=None, *, parallel: bool = False
               ) -> Constraint | None:
    """The constraint for OpenAI ``tools`` and ``tool_choice``: "required" or a named function
    means the answer is one call (up to ``MAX_PARALLEL_CALLS`` when ``parallel``), "auto" (the
    default) a call or plain text, "none" no constraint at all. One call is the default because
    a small model offered a second call tends to repeat the first until it runs out of tokens."""
    checked = _check_tools(tools)
    choice = _check_choice(tool_choice, checked)
    if choice == "none" or (not checked and tool_choice is None):
        return None
    names = [choice] if choice not in ("auto", "required") else list(checked)
    # Each tool's parameters live under the call schema's $defs (their own $refs rebased), so
    # the tools' definitions can never collide.
    defs = {f"tool_{i}": _rebase_refs(_prepared(checked[name]["parameters"]), f"#/$defs/tool_{i}")
            for i, name in enumerate(names)}
    options = [_call_schema(name, f"#/$defs/tool_{i}") for i, name in enumerate(names)]
    call_schema = {**(options[0] if len(options) == 1 else {"anyOf": options}),
                   "$defs": defs, "x-guidance": JSON_STYLE}
    call = f"call: {json.dumps(CALL_OPEN)} %json {json.dumps(call_schema)} {json.dumps(CALL_CLOSE)}"
    calls = (f"calls: call ({json.dumps(CALL_SEP)} call){{0,{MAX_PARALLEL_CALLS - 1}}}"
             if parallel else "calls: call")
    if choice == "auto":
        start = "start: calls | TEXT\nTEXT: /[^<\\s](?s:.)*/"
    else:
        start = "start: calls"
    grammar = LLMatcher.grammar_from_lark("\n".join([start, calls, call]))
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error or messages:
        raise UnsupportedConstraint(f"the tools cannot be enforced together: {messages[0]}",
                                    "tools")
    return Constraint("tool_calls", grammar, "tools")


def parse_tool_calls(text: str) -> list[tuple[str, str]] | None:
    """The calls in ``text`` as (name, arguments JSON) pairs; None when ``text`` is not a complete
    sequence of calls (plain text, or calls cut short by the token limit)."""
    calls, pos, decoder = [], 0, json.JSONDecoder()
    while True:
        if not text.startswith(CALL_OPEN, pos):
            return None
        try:
            value, pos = decoder.raw_decode(text, pos + len(CALL_OPEN))
        except ValueError:
            return None
        if not (text.startswith(CALL_CLOSE, pos) and isinstance(value, dict)
                and isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict)):
            return None
        calls.append((value["name"], json.dumps(value["arguments"], ensure_ascii=False)))
        pos += len(CALL_CLOSE)
        if pos == len(text):
            return calls
        if not text.startswith(CALL_SEP, pos):
            return None
        pos += len(CALL_SEP)


def format_tool_calls(calls: list[tuple[str, str]]) -> str:
    """(name, arguments JSON) pairs written as the model writes them, for an assistant turn with
    ``tool_calls`` in a conversation's history; ``parse_tool_calls`` reads it back."""
    blocks = []
    for name, arguments in calls:
        value = {"name": name, "arguments": json.loads(arguments)}
        blocks.append(CALL_OPEN + json.dumps(value, ensure_ascii=False) + CALL_CLOSE)
    return CALL_SEP.join(blocks)


def tool_prompt(tools: list[dict]) -> str:
    """The system-prompt text that shows the model the tools and how to call them."""
    checked = _check_tools(tools)
    lines = ["You can call these tools (name, what it does, its arguments as a JSON schema):"]
    for name, fn in checked.items():
        entry = {"name": name}
        if fn.get("description"):
            entry["description"] = fn["description"]
        entry["parameters"] = fn["parameters"]
        lines.append(json.dumps(entry, ensure_ascii=False))
    example = f'{{"name": "{next(iter(checked), "tool_name")}", "arguments": {{...}}}}'
    lines += ["", "To call a tool, answer with only this, the arguments following its schema:",
              f"{CALL_OPEN}{example}{CALL_CLOSE}",
              "Otherwise answer in plain text."]
    return "\n".join(lines)


# -- checks ------------------------------------------------------------------------------------

def _check_schema(schema, param: str, *, strict: bool) -> None:
    if not isinstance(schema, dict):
        raise UnsupportedConstraint(f"{param} must be a JSON object (a JSON Schema), not "
                                    f"{_json_type(schema)}", param)
    try:
        size = len(json.dumps(schema, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UnsupportedConstraint(f"{param} is not valid JSON: {e}", param) from None
    if size > MAX_SCHEMA_BYTES:
        raise UnsupportedConstraint(f"{param} is {size} bytes; at most {MAX_SCHEMA_BYTES} are "
                                    f"supported", param)
    problem = schema_rules.ignored_keyword_problem(schema)
    if problem is None and strict:
        problem = schema_rules.strict_problem(schema)
    if problem:
        raise UnsupportedConstraint(f"{param}: {problem}", param)


def _prepared(schema: dict) -> dict:
    """The schema as compiled: number formats as bounds, unstated objects closed."""
    return schema_rules.closed(schema_rules.number_formats(schema))


def _schema_grammar(schema: dict, param: str) -> str:
    """llguidance's grammar for ``schema`` in the canonical layout; refused if it reports any
    error or warning (a warning means part of the schema would not be enforced)."""
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
    except ValueError as e:
        raise UnsupportedConstraint(f"{param} is not supported: {e}", param) from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error or messages:
        raise UnsupportedConstraint(f"{param} is not supported: {messages[0]}", param)
    return grammar


def _check_tools(tools) -> dict[str, dict]:
    """name -> {"description", "parameters"} for valid OpenAI function tools, in order."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise UnsupportedConstraint("tools must be an array", "tools")
    out: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise UnsupportedConstraint(f"{at} must be an object", at)
        if tool.get("type") != "function":
            raise UnsupportedConstraint(f"{at}.type must be 'function' (the only tool type "
                                        f"supported), not {tool.get('type')!r}", f"{at}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise UnsupportedConstraint(f"{at}.function must be an object", f"{at}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UnsupportedConstraint(f"{at}.function.name must be 1 to 64 letters, digits, "
                                        f"underscores or dashes", f"{at}.function.name")
        if name in out:
            raise UnsupportedConstraint(f"{at}.function.name: a tool named {name!r} is already "
                                        f"defined", f"{at}.function.name")
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise UnsupportedConstraint(f"{at}.function.description must be a string",
                                        f"{at}.function.description")
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise UnsupportedConstraint(f"{at}.function.strict must be a boolean",
                                        f"{at}.function.strict")
        param = f"{at}.function.parameters"
        params = fn.get("parameters", {"type": "object", "properties": {},
                                       "additionalProperties": False})
        _check_schema(params, param, strict=bool(strict))
        if params.get("type") != "object":
            raise UnsupportedConstraint(f"{param} must be a schema of type 'object', not "
                                        f"{params.get('type')!r}", param)
        _schema_grammar(_prepared(params), param)
        out[name] = {"description": description, "parameters": params}
    return out


def _check_choice(choice, tools: dict[str, dict]) -> str:
    """'none', 'auto', 'required' or the one function's name."""
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise UnsupportedConstraint(f"tool_choice {choice!r} needs tools", "tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in tools:
            raise UnsupportedConstraint(f"tool_choice names the function {name!r}, which is not "
                                        f"among the tools", "tool_choice")
        return name
    raise UnsupportedConstraint("tool_choice must be 'none', 'auto', 'required' or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                                "tool_choice")


def _call_schema(name: str, arguments_ref: str) -> dict:
    return {"type": "object",
            "properties": {"name": {"const": name}, "arguments": {"$ref": arguments_ref}},
            "required": ["name", "arguments"], "additionalProperties": False}


def _rebase_refs(schema, base: str):
    """``schema`` with each local ``$ref`` ("#...") made relative to ``base`` instead of the root."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = base + ref[1:]
    for key in schema:
        value = schema[key]
        if key in schema_rules.MAPS and isinstance(value, dict):
            out[key] = {k: _rebase_refs(v, base) for k, v in value.items()}
        elif key in schema_rules.ONE and isinstance(value, dict):
            out[key] = _rebase_refs(value, base)
        elif key in schema_rules.LISTS and isinstance(value, list):
            out[key] = [_rebase_refs(v, base) for v in value]
    return out


def _json_type(value) -> str:
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "an array"),
                       (str, "a string"), ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__
