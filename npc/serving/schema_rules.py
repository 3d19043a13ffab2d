"""Checks on a request's JSON schema that llguidance does not make itself.

llguidance refuses the keywords it has not implemented (``not``, ``if``, ``uniqueItems`` ...), but
a few that clients commonly send would pass through it with no effect: ``additionalItems`` (a
draft-7 keyword that 2020-12 replaced), OpenAPI's ``nullable`` and ``format`` on anything but a
string (OpenAPI's int32, int64, float and double become the bounds they mean instead). A schema using them is refused
here, so a client never gets output its schema seems to forbid; so is llguidance's own
``x-guidance`` key, which could otherwise switch on its lenient mode (unknown keywords ignored). ``strict_problem`` applies
OpenAI's strict-mode rules (every object closed, every property required), which OpenAI enforces
with a 400 when a request sets ``strict: true``.
"""

from __future__ import annotations

#: Keywords that would be accepted and silently ignored, with what to use instead.
IGNORED = {
    "additionalItems": "it is not a JSON Schema 2020-12 keyword; use prefixItems with items",
    "nullable": "it is OpenAPI, not JSON Schema; use a type list with \"null\"",
}
#: Deeper schemas are refused before any recursive walk.
MAX_DEPTH = 64

MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains",
        "propertyNames", "unevaluatedItems", "unevaluatedProperties", "additionalItems",
        "contentSchema")
LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def subschemas(schema: dict, at: str):
    """(JSON pointer, subschema) for each schema directly inside ``schema``."""
    for key in MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield f"{at}/{key}/{_escape(name)}", sub
    for key in ONE:
        value = schema.get(key)
        if isinstance(value, dict):
            yield f"{at}/{key}", value
    for key in LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield f"{at}/{key}/{i}", sub


def ignored_keyword_problem(schema: dict, at: str = "", depth: int = 0) -> str | None:
    """A sentence naming the first keyword llguidance would silently ignore, or None."""
    if depth > MAX_DEPTH:
        return f"the schema is nested deeper than {MAX_DEPTH} levels (at {at})"
    if "x-guidance" in schema:
        return (f"'x-guidance' at {at or '/'} is not supported: the grammar engine's settings "
                f"are Hearth's own")
    for key, why in IGNORED.items():
        if key in schema and not (key == "nullable" and schema[key] is False):
            return f"'{key}' at {at or '/'} is not supported: {why}"
    problem = format_problem(schema)
    if problem:
        return f"{problem} (at {at or '/'})"
    for where, sub in subschemas(schema, at):
        if isinstance(sub, dict):
            problem = ignored_keyword_problem(sub, where, depth + 1)
            if problem:
                return problem
    return None


def strict_problem(schema: dict, at: str = "", depth: int = 0) -> str | None:
    """A sentence naming the first place ``schema`` breaks OpenAI's strict-mode rules, or None."""
    if depth > MAX_DEPTH:
        return f"the schema is nested deeper than {MAX_DEPTH} levels (at {at})"
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind) \
        or "properties" in schema
    if is_object:
        if schema.get("additionalProperties") is not False:
            return (f"strict mode: 'additionalProperties' must be supplied and be false "
                    f"(at {at or '/'})")
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        missing = [name for name in props if name not in required]
        if missing:
            return (f"strict mode: 'required' must list every property; missing "
                    f"{', '.join(repr(m) for m in missing)} (at {at or '/'})")
    for where, sub in subschemas(schema, at):
        if isinstance(sub, dict):
            problem = strict_problem(sub, where, depth + 1)
            if problem:
                return problem
    return None


def closed(schema):
    """``schema`` with every object that lists ``properties`` but says nothing of others made
    closed (``additionalProperties: false``). Output valid under the result is valid under
    ``schema``; it keeps a small model from appending invented or repeated keys. An object is
    left open where closing it could take away valid output: when it requires a key it does not
    list, or is intersected with other schemas (it has ``allOf``/``anyOf``/``oneOf``/``$ref``
    beside its properties, or is a branch of an ``allOf`` or of a combinator beside properties)."""
    return _rewrite(schema, _close, intersected=False)


def _close(schema: dict, intersected: bool) -> dict:
    props = schema.get("properties")
    if (isinstance(props, dict) and not intersected
            and "additionalProperties" not in schema and "unevaluatedProperties" not in schema
            and not any(k in schema for k in ("allOf", "anyOf", "oneOf", "$ref"))
            and all(name in props for name in schema.get("required") or [])):
        return {**schema, "additionalProperties": False}
    return schema


#: Number formats (OpenAPI's) as the ranges they stand for; JSON Schema itself would ignore them.
NUMBER_FORMATS = {
    "int32": (-(2 ** 31), 2 ** 31 - 1),
    "int64": (-(2 ** 63), 2 ** 63 - 1),
    "float": (-3.4028234663852886e38, 3.4028234663852886e38),
    "double": (-1.7976931348623157e308, 1.7976931348623157e308),
}


def number_formats(schema):
    """``schema`` with each ``format`` of ``NUMBER_FORMATS`` on a number or integer turned into
    the ``minimum``/``maximum`` it implies (tightening, never loosening, bounds already there)."""
    return _rewrite(schema, _number_format, intersected=False)


def _number_format(schema: dict, intersected: bool) -> dict:
    bounds = NUMBER_FORMATS.get(schema.get("format"))
    if bounds is None or not _numeric(schema.get("type")):
        return schema
    out = {k: v for k, v in schema.items() if k != "format"}
    lo, hi = bounds
    out["minimum"] = max(lo, out["minimum"]) if _is_number(out.get("minimum")) else lo
    out["maximum"] = min(hi, out["maximum"]) if _is_number(out.get("maximum")) else hi
    return out


def format_problem(schema: dict) -> str | None:
    """Why this schema's ``format`` would go unenforced (a non-string format llguidance ignores)."""
    fmt, kind = schema.get("format"), schema.get("type")
    if fmt is None or kind is None or kind == "string" or (isinstance(kind, list) and "string" in kind):
        return None
    if fmt in NUMBER_FORMATS and _numeric(kind):
        return None
    return (f"'format': {fmt!r} is not supported for type {kind!r} (only strings have formats, "
            f"besides {', '.join(NUMBER_FORMATS)} on numbers)")


def _numeric(kind) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    return bool(kinds) and all(k in ("integer", "number") for k in kinds)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rewrite(schema, fn, intersected: bool):
    """``fn(subschema, intersected)`` applied to every schema in ``schema``, outermost first."""
    if not isinstance(schema, dict):
        return schema
    out = fn(schema, intersected)
    has_props = "properties" in out
    for key, value in list(out.items()):
        if key in MAPS and isinstance(value, dict):
            out = {**out, key: {k: _rewrite(v, fn, False) for k, v in value.items()}}
        elif key in ONE and isinstance(value, dict):
            out = {**out, key: _rewrite(value, fn, False)}
        elif key in LISTS and isinstance(value, list):
            branch_intersected = key == "allOf" or (key in ("anyOf", "oneOf") and has_props)
            out = {**out, key: [_rewrite(v, fn, branch_intersected) for v in value]}
    return out


def _escape(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")
