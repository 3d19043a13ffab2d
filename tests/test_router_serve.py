"""``hearth serve``'s endpoint on the real default model, driven by the official ``openai``
client over a real uvicorn server on 127.0.0.1: chat, text completions, streams with usage,
stop strings, logprobs, JSON schemas, tools, skins as models, errors and bad bodies, concurrent
and disconnecting clients, the API key and the game window's priority."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from game.serve_backend import load_local_model
from game.serve_cli import BackgroundServer, bind
from game.window_presence import WindowPresenceGate, mark
from swarm.router.app import create_app
from swarm.router.settings import RouterSettings

pytestmark = [pytest.mark.model, pytest.mark.slow]

ASK = [{"role": "user", "content": "Name three things a blacksmith makes."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}


class Served:
    def __init__(self, tmp):
        from game.village_skins import install_shipped
        self.skins = install_shipped()
        self.presence_root = tmp
        self.local, self.backend, self.scheduler = load_local_model(WindowPresenceGate(tmp))
        self.generations = []  # every generation the endpoint started, to check cancels
        start = self.local.start

        def recording_start(req):
            gen = start(req)
            self.generations.append(gen)
            return gen
        self.local.start = recording_start
        self.server = BackgroundServer(create_app(self.local, RouterSettings()),
                                       bind("127.0.0.1", 0)).start()
        self.client = openai.OpenAI(base_url=self.server.url, api_key="unused", max_retries=0)

    def close(self):
        self.server.stop()
        self.scheduler.close()
        self.backend.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("presence"))
    yield s
    s.close()


def greedy(served, messages=ASK, max_tokens=16, **kw):
    return served.client.chat.completions.create(model="hearth", messages=messages,
                                                 max_tokens=max_tokens, temperature=0, **kw)


def test_models_lists_the_base_model_and_installed_skins(served):
    ids = [m.id for m in served.client.models.list()]
    assert ids[0] == "hearth" and "hearth/saltbeard" in ids and "hearth/whisperwind" in ids
    assert served.client.models.retrieve("hearth/saltbeard").id == "hearth/saltbeard"
    health = httpx.get(served.server.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["models"] == ids


def test_chat_is_deterministic_greedy_and_says_where_it_ran(served):
    raw = served.client.chat.completions.with_raw_response.create(
        model="hearth", messages=ASK, max_tokens=16, temperature=0)
    assert raw.headers["x-hearth-route-taken"] == "local"
    r = raw.parse()
    again = greedy(served)
    assert r.choices[0].message.content and r.choices[0].message.content == \
        again.choices[0].message.content
    assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 5
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == "hearth"


def test_an_app_with_another_model_name_runs_on_the_base_model(served):
    r = served.client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=16,
                                              temperature=0)
    assert r.choices[0].message.content == greedy(served).choices[0].message.content


def test_stream_with_usage_matches_the_whole_answer(served):
    whole = greedy(served)
    raw = served.client.chat.completions.with_raw_response.create(
        model="hearth", messages=ASK, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["x-hearth-route-taken"] == "local"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason


def test_a_fast_stream_sends_its_text_in_fewer_chunks_with_every_token_accounted(served):
    """router.toml's stream_interval_ms: the first text at once, then what came in between at
    most that often (logprobs travel with their tokens); 0 sends each token in its own chunk."""
    def stream(interval_ms):
        server = BackgroundServer(create_app(served.local,
                                             RouterSettings(stream_interval_ms=interval_ms)),
                                  bind("127.0.0.1", 0)).start()
        try:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
            start = time.monotonic()
            chunks = [c for c in client.chat.completions.create(
                model="hearth", messages=ASK, max_tokens=24, temperature=0, logprobs=True,
                stream=True, stream_options={"include_usage": True})]
            return chunks, time.monotonic() - start
        finally:
            server.stop()
    whole = greedy(served, max_tokens=24)
    for interval_ms in (0, 1000):
        chunks, seconds = stream(interval_ms)
        texts = [c for c in chunks if c.choices and c.choices[0].logprobs is not None]
        assert "".join(c.choices[0].delta.content for c in texts) == \
            whole.choices[0].message.content
        tokens = [t for c in texts for t in c.choices[0].logprobs.content]
        assert len(tokens) == chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        if interval_ms == 0:
            assert len(texts) == len(tokens)  # one chunk per token
        else:
            assert len(texts) <= 2 + seconds * 1000 / interval_ms < len(tokens)


def test_n_choices_sample_with_consecutive_seeds(served):
    r = served.client.completions.create(model="hearth", prompt="The old mill by the river",
                                         max_tokens=12, n=3, temperature=1.0, seed=40)
    assert len(r.choices) == 3 and [c.index for c in r.choices] == [0, 1, 2]
    one = served.client.completions.create(model="hearth", prompt="The old mill by the river",
                                           max_tokens=12, temperature=1.0, seed=41)
    assert r.choices[1].text == one.choices[0].text  # choice i is seed + i
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    assert 3 <= r.usage.completion_tokens <= 36


def test_stop_ends_the_text_before_the_stop_string(served):
    text = greedy(served, max_tokens=24).choices[0].message.content
    word = text.split()[2]
    r = greedy(served, max_tokens=24, stop=[word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[:text.index(word)]


def test_logprobs_one_per_token_with_alternatives(served):
    r = greedy(served, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy: the top token
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content[:5])
    c = served.client.completions.create(model="hearth", prompt="Bread is", max_tokens=5,
                                         temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 5 == len(c.choices[0].logprobs.top_logprobs)


def test_json_schema_and_json_object_are_enforced(served):
    r = served.client.chat.completions.create(
        model="hearth", max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Describe the innkeeper."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person",
                                                                "schema": PERSON}})
    person = json.loads(r.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    r = served.client.chat.completions.create(
        model="hearth", max_tokens=60, temperature=0.7, seed=3, messages=ASK,
        response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_tools_are_answered_as_well_formed_calls(served):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = served.client.chat.completions.create(model="hearth", messages=ask, max_tokens=40,
                                              tools=[WEATHER], tool_choice="required",
                                              temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # The call and its result go back in; the model answers (tools still offered, choice auto).
    follow = ask + [r.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    again = served.client.chat.completions.create(model="hearth", messages=follow,
                                                  max_tokens=30, tools=[WEATHER], temperature=0)
    msg = again.choices[0].message
    assert msg.content or msg.tool_calls
    stream = served.client.chat.completions.create(model="hearth", messages=ask, max_tokens=40,
                                                   tools=[WEATHER], tool_choice="required",
                                                   temperature=0, stream=True)
    calls = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert calls[0].function.arguments == call.function.arguments


def test_a_skin_is_a_model(served):
    ask = [{"role": "user", "content": "Do you have rope for sale?"}]
    base = served.client.chat.completions.create(model="hearth", messages=ask, max_tokens=20,
                                                 temperature=0)
    pirate = served.client.chat.completions.create(model="hearth/saltbeard", messages=ask,
                                                   max_tokens=20, temperature=0)
    assert pirate.model == "hearth/saltbeard"
    assert pirate.choices[0].message.content != base.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        served.client.chat.completions.create(model="hearth/no-such-skin", messages=ask,
                                              max_tokens=4)


@pytest.mark.parametrize("kw, param", [
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"extra_body": {"mirostat": 2}}, "mirostat"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "nullable": True}}}}}},
     "response_format.json_schema.schema"),
    ({"max_tokens": 5000}, "max_tokens"),  # does not fit the model's context
])
def test_errors_are_openai_400s(served, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        served.client.chat.completions.create(model="hearth", messages=ASK, **kw)
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"


def test_bad_bodies_get_4xx_and_the_server_keeps_serving(served):
    url = served.server.url + "/chat/completions"
    for content, status in [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400),
                            (b'{"model": "hearth", "messages": "hi"}', 400),
                            (b'{"model": "hearth", "messages": [], "max_tokens": NaN}', 400),
                            (b"x" * (2 << 20), 413)]:
        r = httpx.post(url, content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, (content[:40], r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(served.server.url + "/nowhere", json={})
    assert r.status_code == 404 and "error" in r.json()
    assert greedy(served, max_tokens=4).choices[0].message.content


def test_concurrent_clients_get_what_they_would_get_alone(served):
    prompts = [[{"role": "user", "content": f"Tell me about the {w}."}]
               for w in ("bell", "mill", "inn", "forge", "well", "road", "river", "market")]
    alone = [greedy(served, p, max_tokens=6).choices[0].message.content for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(
            lambda p: greedy(served, p, max_tokens=6).choices[0].message.content, prompts))
    assert together == alone


def _finished(gen, timeout=10.0):
    """The scheduler's last event for a generation (its handle's Finished)."""
    from npc.serving.scheduler import Finished
    got = []

    def drain():
        for ev in gen.handle.events():
            if isinstance(ev, Finished):
                got.append(ev)
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    t.join(timeout)
    assert got, "the generation never finished"
    return got[0]


def test_a_client_that_disconnects_cancels_its_generation(served):
    body = {"model": "hearth", "messages": ASK, "max_tokens": 400, "temperature": 0.8,
            "seed": 1, "stream": True}
    before = len(served.generations)
    with httpx.stream("POST", served.server.url + "/chat/completions", json=body) as r:
        for line in r.iter_lines():
            chunk = json.loads(line[5:]) if line.startswith("data:") else None
            if chunk and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                break  # a token arrived: hang up
    (gen,) = served.generations[before:]
    end = _finished(gen)
    assert end.finish_reason == "cancelled" and end.completion_tokens < 400
    # Not streaming: the client gives up waiting (a schema holds the model to a long answer, so
    # it cannot finish first).
    long = {"type": "json_schema", "json_schema": {"name": "story", "schema": {
        "type": "object", "properties": {"story": {"type": "string", "minLength": 3000}},
        "required": ["story"]}}}
    before = len(served.generations)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.server.url + "/chat/completions", timeout=1.0,
                   json={**body, "stream": False, "max_tokens": 400, "response_format": long})
    (gen,) = served.generations[before:]
    end = _finished(gen)
    assert end.finish_reason == "cancelled" and end.completion_tokens < 400


def test_the_api_key_is_required_when_set(served):
    keyed = BackgroundServer(create_app(served.local, RouterSettings(), api_key="k3y"),
                             bind("127.0.0.1", 0)).start()
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url, api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=keyed.url, api_key="k3y", max_retries=0)
        assert ok.models.list().data[0].id == "hearth"
    finally:
        keyed.stop()


def test_the_game_window_keeps_priority(served):
    mark(True, served.presence_root)
    try:
        got = []
        t = threading.Thread(target=lambda: got.append(greedy(served, max_tokens=4)),
                             daemon=True)
        t.start()
        t.join(1.5)
        assert t.is_alive() and not got  # waiting while the player is at the window
    finally:
        mark(False, served.presence_root)
    t.join(30)
    assert got and got[0].choices[0].message.content


def test_hearth_serve_runs_until_interrupted(hearth_home):
    import signal

    from conftest import hearth_popen
    # The session's data directory: the model and its tuning are already there.
    proc = hearth_popen("serve", "--port", "0", home=hearth_home, env={"PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving: http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.split()[1]
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert client.chat.completions.create(model="hearth", messages=ASK, max_tokens=4,
                                              temperature=0).choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
