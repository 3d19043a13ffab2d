"""Checks on a request's JSON schema that llguidance does not make itself.

llguidance refuses the keywords it has not implemented (``not``, ``if``, ``uniqueItems`` ...), but
a few that clients commonly send would pass through it with no effect: ``additionalItems`` (a
draft-7 keyword that 2020-12 replaced) and OpenAPI's ``nullable``. A schema using them is refused
here, so a client never gets output its schema seems to forbid. ``strict_problem`` applies
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
    for key, why in IGNORED.items():
        if key in schema and not (key == "nullable" and schema[key] is False):
            return f"'{key}' at {at or '/'} is not supported: {why}"
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
    ``schema``; it keeps a small model from appending invented or repeated keys. An object that
    is a branch of ``allOf`` or combines with siblings (``allOf``, ``$ref``) is left open, since
    closing it would change what the intersection allows."""
    return _closed(schema, in_all_of=False)


def _closed(schema, in_all_of: bool):
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if ("properties" in schema and "additionalProperties" not in schema
            and "unevaluatedProperties" not in schema and not in_all_of
            and "allOf" not in schema and "$ref" not in schema):
        out["additionalProperties"] = False
    for key, value in schema.items():
        if key in MAPS and isinstance(value, dict):
            out[key] = {k: _closed(v, False) for k, v in value.items()}
        elif key in ONE and isinstance(value, dict):
            out[key] = _closed(value, False)
        elif key in LISTS and isinstance(value, list):
            out[key] = [_closed(v, key == "allOf") for v in value]
    return out


def _escape(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")
