"""Grammar constraints for served generations: OpenAI-shaped requests are validated into clear
400-style refusals, and with the real default model every generation under a constraint (greedy
and sampled) is JSON valid against its schema, or a well-formed call to a tool that exists."""

import json

import numpy as np
import pytest

from npc.serving import constrain as K
from npc.serving import sampler, schema_rules

SCHEMA_PARAM = "response_format.json_schema.schema"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 1, "maximum": 120},
        "job": {"enum": ["smith", "baker", "farmer", "guard"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "job"],
}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 40},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two whole numbers",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                      "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                       "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ring_bell", "description": "Ring the town bell"}},
]


def refused(call, *args, **kw) -> K.UnsupportedConstraint:
    with pytest.raises(K.UnsupportedConstraint) as info:
        call(*args, **kw)
    assert isinstance(info.value, ValueError)
    return info.value


# -- a minimal JSON Schema validator for the keywords these tests use ---------------------------

def problems(value, schema, at="$") -> list[str]:
    """What makes ``value`` invalid under ``schema`` (empty when valid)."""
    out = []
    if "$ref" in schema:
        raise AssertionError("the test validator does not follow $ref")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
                  "boolean": lambda v: isinstance(v, bool),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not any(checks[k](value) for k in kinds):
            return [f"{at}: {value!r} is not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{at}: {value!r} != {schema['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at}: {value} > {schema['maximum']}")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        out.append(f"{at}: longer than {schema['maxLength']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            out.append(f"{at}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            out += problems(item, schema.get("items", {}), f"{at}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{at}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += problems(v, props[k], f"{at}.{k}")
            elif schema.get("additionalProperties", True) is False:
                out.append(f"{at}: unexpected key {k!r}")
    return out


def test_the_test_validator_catches_what_it_checks():
    assert problems({"name": "Ada", "age": 30, "job": "smith"}, PERSON) == []
    for bad in ({"name": "Ada", "age": 0, "job": "smith"}, {"name": "Ada", "job": "smith"},
                {"name": "Ada", "age": 3, "job": "king"}, {"name": "x" * 25, "age": 3, "job": "guard"},
                {"name": "Ada", "age": 3.5, "job": "guard"}, [1]):
        assert problems(bad, PERSON), bad


# -- response_format: shapes and refusals ------------------------------------------------------

def test_response_format_shapes():
    assert K.response_format(None) is None
    assert K.response_format({"type": "text"}) is None
    assert K.response_format({"type": "json_object"}).kind == "json_object"
    c = K.response_format({"type": "json_schema",
                           "json_schema": {"name": "person", "schema": PERSON, "strict": False}})
    assert c.kind == "json_schema" and c.param == SCHEMA_PARAM
    cases = [
        ([1], "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": PERSON}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": "yes"}},
         "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "p"}}, SCHEMA_PARAM),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": [PERSON]}}, SCHEMA_PARAM),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": "object"}}, SCHEMA_PARAM),
    ]
    for value, param in cases:
        assert refused(K.response_format, value).param == param, value


@pytest.mark.parametrize("schema, reason", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "properties": {"a": {"if": {"type": "string"}, "then": {"minLength": 2}}}},
     "if"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
    ({"type": "string", "format": "credit-card"}, "credit-card"),
    ({"type": "string", "pattern": "(("}, "unclosed group"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength"),
    ({"$ref": "https://example.com/person.json"}, "example.com"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "strng"}, "strng"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    # Keywords llguidance itself would accept and ignore are refused here.
    ({"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}, "nullable"),
    ({"type": "array", "prefixItems": [{"type": "integer"}], "additionalItems": False},
     "additionalItems"),
    ({"type": "integer", "format": "uuid"}, "uuid"),
    ({"type": ["integer", "boolean"], "format": "int32"}, "int32"),
    # llguidance's own settings could make it lenient (unknown keywords ignored).
    ({"type": "array", "uniqueItems": True, "x-guidance": {"lenient": True}}, "x-guidance"),
])
def test_schemas_that_cannot_be_enforced_exactly_are_refused(schema, reason):
    e = refused(K.json_schema, schema)
    assert e.param == SCHEMA_PARAM
    assert reason in str(e) and SCHEMA_PARAM in str(e)


def test_supported_schema_features_compile():
    for schema in (PERSON, {"type": "string", "format": "date"}, {"type": ["integer", "null"]},
                   {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                   {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}},
                    "$defs": {"n": {"type": "integer", "multipleOf": 5}}},
                   {"type": "string", "nullable": False}):
        assert K.json_schema(schema).kind == "json_schema"


def test_huge_and_deep_schemas_are_refused_before_compiling():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                            for i in range(3000)}}
    assert "bytes" in str(refused(K.json_schema, big))
    deep: dict = {"type": "integer"}
    for _ in range(schema_rules.MAX_DEPTH + 5):
        deep = {"type": "array", "items": deep}
    assert "deeper" in str(refused(K.json_schema, deep))


def test_strict_mode_follows_openai_rules():
    open_person = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert K.json_schema(open_person, strict=False)
    assert "additionalProperties" in str(refused(K.json_schema, open_person, strict=True))
    partial = {**open_person, "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
               "additionalProperties": False}
    assert "'b'" in str(refused(K.json_schema, partial, strict=True))
    nested = {"type": "object", "additionalProperties": False, "required": ["in"],
              "properties": {"in": {"type": "object", "properties": {}}}}
    assert "/properties/in" in str(refused(K.json_schema, nested, strict=True))
    closed = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
              "properties": {"a": {"type": "string"}, "b": {"type": ["integer", "null"]}}}
    assert K.json_schema(closed, strict=True)


def test_number_formats_become_bounds():
    s = schema_rules.number_formats({"type": "object", "properties": {
        "a": {"type": "integer", "format": "int32"},
        "b": {"type": "integer", "format": "int64", "minimum": 0},
        "c": {"type": "number", "format": "float", "maximum": 1e50},
        "d": {"type": "string", "format": "date"}}})
    a, b, c, d = (s["properties"][k] for k in "abcd")
    assert (a["minimum"], a["maximum"]) == (-2 ** 31, 2 ** 31 - 1) and "format" not in a
    assert (b["minimum"], b["maximum"]) == (0, 2 ** 63 - 1)
    assert c["maximum"] == 3.4028234663852886e38
    assert d == {"type": "string", "format": "date"}


def test_closing_objects_leaves_intersections_open():
    s = schema_rules.closed({"type": "object", "properties": {"a": {"type": "object",
                                                                    "properties": {}}},
                             "allOf": [{"properties": {"b": {}}}]})
    assert "additionalProperties" not in s  # it has allOf siblings
    assert s["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in s["allOf"][0]
    kept = schema_rules.closed({"type": "object", "properties": {}, "additionalProperties": True})
    assert kept["additionalProperties"] is True
    # A required key the object does not list can only be an additional one.
    assert "additionalProperties" not in schema_rules.closed(
        {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]})
    # Branches of a combinator beside properties are intersected with them; others are not.
    s = schema_rules.closed({"properties": {"a": {}}, "anyOf": [{"properties": {"b": {}}}]})
    assert "additionalProperties" not in s and "additionalProperties" not in s["anyOf"][0]
    s = schema_rules.closed({"anyOf": [{"properties": {"b": {}}}]})
    assert s["anyOf"][0]["additionalProperties"] is False


# -- tools: shapes and refusals ----------------------------------------------------------------

def test_tool_choice_shapes():
    assert K.tool_calls(None, None) is None
    assert K.tool_calls([], None) is None
    assert K.tool_calls(TOOLS, "none") is None
    for choice in (None, "auto", "required", {"type": "function", "function": {"name": "add"}}):
        assert K.tool_calls(TOOLS, choice).kind == "tool_calls"
    assert K.tool_calls(TOOLS, "required", parallel=True).kind == "tool_calls"
    for tools, choice in ((TOOLS, {"type": "function", "function": {"name": "fly"}}),
                          (TOOLS, "sometimes"), (TOOLS, {"type": "function"}),
                          (TOOLS, {"type": "allowed_tools", "allowed_tools": {}}),
                          ([], "required"), (None, {"type": "function",
                                                    "function": {"name": "add"}})):
        assert refused(K.tool_calls, tools, choice).param == "tool_choice", choice


def tool(name="t", **fn):
    return {"type": "function", "function": {"name": name, **fn}}


@pytest.mark.parametrize("tools, param, reason", [
    ("add", "tools", "array"),
    ([tool(), "x"], "tools[1]", "object"),
    ([tool("a"), tool("b"), {"type": "retrieval"}], "tools[2].type", "function"),
    ([{"type": "function"}], "tools[0].function", "object"),
    ([tool("a"), tool("has space")], "tools[1].function.name", "letters"),
    ([tool("a"), tool("a")], "tools[1].function.name", "already"),
    ([tool(description=3)], "tools[0].function.description", "string"),
    ([tool(strict="no")], "tools[0].function.strict", "boolean"),
    ([tool("a"), tool("b"), tool("c", parameters={
        "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}})],
     "tools[2].function.parameters", "uniqueItems"),
    ([tool(parameters={"type": "string"})], "tools[0].function.parameters", "object"),
    ([tool(parameters=["x"])], "tools[0].function.parameters", "JSON object"),
    ([tool(parameters={"type": "object", "properties": {"a": {"type": "string"}}}, strict=True)],
     "tools[0].function.parameters", "additionalProperties"),
])
def test_invalid_tools_are_refused_naming_the_field(tools, param, reason):
    e = refused(K.tool_calls, tools, "auto")
    assert e.param == param and reason in str(e), str(e)
    assert refused(K.tool_prompt, tools).param == param


REF_TOOLS = [
    tool("a", parameters={"type": "object", "properties": {"p": {"$ref": "#/$defs/point"}},
                          "required": ["p"],
                          "$defs": {"point": {"type": "object", "required": ["x"],
                                              "properties": {"x": {"type": "integer"}}}}}),
    # The same $defs name with another meaning, and a reference to the tool's own root.
    tool("b", parameters={"type": "object", "required": ["p"],
                          "properties": {"p": {"$ref": "#/$defs/point"},
                                         "next": {"$ref": "#"}},
                          "$defs": {"point": {"type": "string"}}}),
]


def test_tool_text_that_looks_like_grammar_syntax_is_only_data():
    odd = 'a "quoted" } brace, a /slash/ and %json {"x": 1}\n'
    params = {"type": "object", "description": odd, "required": ["s"],
              "properties": {"s": {"type": "string", "pattern": "^[a-z/}{\"]+$",
                                   "description": odd}}}
    assert K.tool_calls([tool("odd", description=odd, parameters=params)], "required")
    assert json.dumps(odd) in K.tool_prompt([tool("odd", description=odd, parameters=params)])


def test_parse_tool_calls():
    one = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    assert K.parse_tool_calls(one) == [("add", '{"a": 1, "b": 2}')]
    two = one + "\n" + '<tool_call>\n{"name": "ring_bell", "arguments": {}}\n</tool_call>'
    assert K.parse_tool_calls(two) == [("add", '{"a": 1, "b": 2}'), ("ring_bell", "{}")]
    for text in ("Hello there.", "", one[:-3], one + "\nand more", one + "\n",
                 '<tool_call>\n{"name": "add"}\n</tool_call>',
                 '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>'):
        assert K.parse_tool_calls(text) is None, text


def test_formatted_calls_parse_back():
    calls = [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Zürich"}')]
    text = K.format_tool_calls(calls)
    assert K.parse_tool_calls(text) == calls
    assert K.parse_tool_calls(K.format_tool_calls(calls[:1])) == calls[:1]


def test_tool_prompt_names_every_tool_and_the_call_format():
    text = K.tool_prompt(TOOLS)
    for t in TOOLS:
        assert json.dumps(t["function"]["name"]) in text
    assert "The current weather in a city" in text and '"minimum": -1000' in text
    assert K.CALL_OPEN in text and K.CALL_CLOSE in text


# -- with the real default model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    from npc.llama import Model
    from npc.store import ModelStore
    m = Model(ModelStore().default_source())
    yield m
    m.close()


class Generator:
    """Generation under a constraint by the project's sampler, one sequence, reusing the KV cache
    of the previous prompt's common start (the tool prompt is long)."""

    def __init__(self, model):
        from npc.llama import Context, LoadOptions
        self.model = model
        self.ctx = Context(model, LoadOptions(n_ctx=1024, n_batch=512, n_seq_max=1, n_threads=1))
        self.prompt: list[int] = []

    def __call__(self, messages, constraint, temperature=0.0, top_p=1.0, seed=0, max_tokens=96):
        """The text generated, and whether it ended by the grammar or the model rather than the
        token limit."""
        model, ctx = self.model, self.ctx
        prompt = model.tokenize(model.apply_chat_template(messages))
        keep = 0  # the cached tokens this prompt starts with (at least its last is recomputed)
        while keep < min(len(prompt) - 1, len(self.prompt)) and prompt[keep] == self.prompt[keep]:
            keep += 1
        ctx.seq_rm(0, keep, -1)
        ctx.decode(prompt[keep:], 0, keep)
        self.prompt = prompt
        matcher = constraint.matcher(model)
        out = []
        for i in range(max_tokens):
            mask = matcher.allowed()
            assert mask.shape == (model.n_vocab,) and mask.any()
            tok = sampler.pick(np.where(mask, ctx.logits(), -np.inf), temperature, top_p, seed, i)
            assert mask[tok]
            matcher.advance(tok)
            if model.is_eog(tok):
                return model.detokenize(out), True
            out.append(tok)
            if matcher.finished():
                return model.detokenize(out), True
            ctx.decode([tok], 0, len(prompt) + i)
        return model.detokenize(out), False


@pytest.fixture(scope="module")
def generate(model):
    g = Generator(model)
    yield g
    g.ctx.close()


def feed(model, constraint, text):
    """A fresh matcher after taking ``text`` tokenised as the model would; None if it refused."""
    m = constraint.matcher(model)
    for t in model.tokenize(text, parse_special=False):
        if not m.allowed()[t]:
            return None
        m.advance(t)
    return m


@pytest.mark.model
def test_mask_allows_end_of_generation_only_where_the_grammar_ends(model):
    c = K.json_object()
    eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
    first = c.matcher(model).allowed()
    assert not first[eog].any()
    assert all(model.piece(t).startswith(b"{") for t in np.flatnonzero(first))
    mid = feed(model, c, '{"a": [1, 2')
    assert mid is not None and not mid.finished() and not mid.allowed()[eog].any()
    done = feed(model, c, '{"a": [1, 2], "b": {"c": null}}')
    assert done.finished() and set(np.flatnonzero(done.allowed())) == set(eog)
    # Control tokens never appear as text, and a forbidden token breaks the matcher loudly.
    start = model.tokenize("<|im_start|>", parse_special=True)[0]
    assert not first[start]
    m = c.matcher(model)
    with pytest.raises(K.ConstraintBroken):
        m.advance(model.tokenize("x", parse_special=False)[0])


@pytest.mark.model
def test_grammars_accept_and_refuse_the_right_texts(model):
    person = K.json_schema(PERSON)
    int32 = K.json_schema({"type": "integer", "format": "int32"})
    assert feed(model, int32, "2147483647").accepting()
    assert feed(model, int32, "2147483648") is None
    extra = K.json_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                           "required": ["a", "b"]})
    assert feed(model, extra, '{"a": 1, "b": "anything"}').accepting()
    open_tail = feed(model, person, '{"name": "Ada", "age": 30, "job": "smith"')
    assert not open_tail.finished() and not open_tail.accepting()  # "tags" may still follow
    assert feed(model, person, '{"name": "Ada", "age": 30, "job": "smith"}').finished()
    for bad in ('{"name": "Ada", "age": 0', '{"name": "Ada", "age": 121', '{"age": 3',
                '{"name": "Ada", "age": 30, "job": "king"', '{"name":"Ada"',
                '{"name": "Ada", "age": 30, "job": "smith", "x": 1', ' {'):
        assert feed(model, person, bad) is None, bad
    required = K.tool_calls(TOOLS, "required")
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert feed(model, required, call).finished()
    for bad in ("Sure!", '<tool_call>\n{"name": "fly"', '<tool_call>\n{"name": "add", '
                '"arguments": {"a": 2}}', '<tool_call>\n{"name": "get_weather", "arguments": '
                '{"town": "x"}}', call + "\n"):
        assert feed(model, required, bad) is None, bad
    assert feed(model, K.tool_calls(TOOLS, "required", parallel=True), call + "\n") is not None
    auto = K.tool_calls(TOOLS, "auto")
    assert feed(model, auto, "It is sunny today.").accepting()
    assert feed(model, auto, call).finished()
    assert feed(model, auto, "<b>hi</b>") is None
    named = K.tool_calls(TOOLS, {"type": "function", "function": {"name": "ring_bell"}})
    assert feed(model, named, '<tool_call>\n{"name": "add"') is None
    assert feed(model, named, '<tool_call>\n{"name": "ring_bell", "arguments": {}}\n</tool_call>'
                ).finished()


@pytest.mark.model
def test_each_tool_keeps_its_own_refs(model):
    c = K.tool_calls(REF_TOOLS, "required")

    def call(name, arguments):
        return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'

    assert feed(model, c, call("a", '{"p": {"x": 1}}')).finished()
    assert feed(model, c, call("b", '{"p": "here", "next": {"p": "there"}}')).finished()
    assert feed(model, c, call("a", '{"p": "here"}')) is None
    assert feed(model, c, call("b", '{"p": {"x": 1}}')) is None
    assert feed(model, c, call("b", '{"p": "here", "next": {"p": 3}}')) is None


def check_call(text, allowed_names):
    calls = K.parse_tool_calls(text)
    assert calls, text
    by_name = {t["function"]["name"]: t["function"] for t in TOOLS}
    for name, arguments in calls:
        assert name in allowed_names
        params = by_name[name].get("parameters", {"type": "object", "properties": {}})
        assert problems(json.loads(arguments), params) == [], text
    return calls


@pytest.mark.model
@pytest.mark.slow
def test_greedy_generation_holds_to_each_grammar(generate):
    ask = [("user", "Give the name and age of a village blacksmith as JSON.")]
    any_object = K.json_object()
    any_object.prepare(generate.model)
    text, ended = generate(ask, any_object)
    assert ended and isinstance(json.loads(text), dict), text
    text, ended = generate(ask, K.json_schema(PERSON))
    assert ended and problems(json.loads(text), PERSON) == [], text
    system = ("system", K.tool_prompt(TOOLS))
    text, ended = generate([system, ("user", "What's the weather in Paris?")],
                           K.tool_calls(TOOLS, "required"))
    assert ended
    check_call(text, {"get_weather", "add", "ring_bell"})
    text, ended = generate([system, ("user", "Hello! Who are you?")],
                           K.tool_calls(TOOLS, {"type": "function", "function": {"name": "add"}}))
    assert ended
    check_call(text, {"add"})
    text, ended = generate([system, ("user", "Hello! Who are you?")],
                           K.tool_calls(TOOLS, "auto"), max_tokens=24)
    assert text and K.parse_tool_calls(text) is None and not text.startswith("<"), text


@pytest.mark.model
@pytest.mark.slow
def test_sampled_generation_holds_to_each_grammar(generate):
    # Both schemas bound every string and array, so each answer must end within the limit.
    for seed, top_p in ((0, 1.0), (1, 0.9), (2, 1.0)):
        text, ended = generate([("user", "A villager, as JSON please.")], K.json_schema(PERSON),
                               temperature=1.0, top_p=top_p, seed=seed, max_tokens=128)
        assert ended and problems(json.loads(text), PERSON) == [], text
    system = ("system", K.tool_prompt(TOOLS))
    for seed, top_p in ((0, 1.0), (1, 0.9), (2, 1.0)):
        text, ended = generate([system, ("user", "Add 2 and 40.")], K.tool_calls(TOOLS, "required"),
                               temperature=1.0, top_p=top_p, seed=seed, max_tokens=128)
        assert ended
        check_call(text, {"get_weather", "add", "ring_bell"})
    plain = 0
    for seed in range(3):
        text, ended = generate([system, ("user", "Tell me about your day.")],
                               K.tool_calls(TOOLS, "auto"), temperature=1.0, seed=seed,
                               max_tokens=24)
        if text.startswith(K.CALL_OPEN):
            if ended:
                check_call(text, {"get_weather", "add", "ring_bell"})
        else:
            assert text and not text[0].isspace() and text[0] != "<", text
            plain += 1
    assert plain > 0


@pytest.mark.model
@pytest.mark.slow
def test_schemas_as_client_libraries_write_them(generate):
    """Pydantic's schema as response_format, and the official client's strict function tool from
    the same model: the output validates with pydantic itself."""
    from typing import Literal, Optional

    from openai import pydantic_function_tool
    from pydantic import BaseModel, Field

    class Address(BaseModel):
        street: str = Field(max_length=30)
        number: Optional[int] = Field(default=None, ge=1, le=999)

    class Villager(BaseModel):
        name: str = Field(max_length=20)
        age: int = Field(ge=1, le=120)
        trade: Literal["smith", "baker", "farmer"]
        home: Address

    fmt = K.response_format({"type": "json_schema", "json_schema": {
        "name": "villager", "schema": Villager.model_json_schema()}})
    text, ended = generate([("user", "Describe a villager as JSON.")], fmt, max_tokens=128)
    assert ended
    Villager.model_validate_json(text)
    fn = pydantic_function_tool(Villager, name="add_villager")
    assert fn["function"]["strict"] is True
    system = ("system", K.tool_prompt([fn]))
    text, ended = generate([system, ("user", "Add a baker called Tom.")],
                           K.tool_calls([fn], "required"), max_tokens=128)
    assert ended
    [(name, arguments)] = K.parse_tool_calls(text)
    assert name == "add_villager"
    Villager.model_validate_json(arguments)
