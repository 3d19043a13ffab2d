"""The endpoint's pure parts: OpenAI request checks, router.toml, the routing policy and the
game window's presence gate. (The served endpoint itself: test_router_serve.py and
test_router_routes.py.)"""

from __future__ import annotations

import os
import time

import pytest

from game.window_presence import STALE_AFTER, WindowPresenceGate, mark, presence_path
from swarm.router.errors import ApiError
from swarm.router.openai_api import parse_chat, parse_completion
from swarm.router.policy import is_private, plan
from swarm.router.settings import RouterSettings, load_router_settings
from swarm.settings import SettingsError

MSG = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return parse_chat({"model": "hearth", "messages": MSG, **kw})


def refused(fn, param, **kw):
    with pytest.raises(ApiError) as e:
        fn(**kw)
    assert e.value.status == 400 and e.value.param == param, e.value.message
    body = e.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return e.value


# ---- request checks ------------------------------------------------------------------------------

def test_a_chat_request_is_read_into_choices_with_consecutive_seeds():
    p = chat(n=3, seed=7, temperature=0.5, top_p=0.9, stop="\n", max_completion_tokens=12,
             logprobs=True, top_logprobs=3, stream=True, stream_options={"include_usage": True},
             user="u1", metadata={"a": "b"}, presence_penalty=0, logit_bias={})
    assert [g.seed for g in p.choices] == [7, 8, 9]
    g = p.first
    assert (g.temperature, g.top_p, g.stop, g.max_tokens, g.logprobs) == (0.5, 0.9, ("\n",), 12, 3)
    assert p.stream and p.include_usage and p.n == 3 and not g.constrained


def test_message_shapes_are_flattened_and_roles_mapped():
    p = parse_chat({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be "},
                                          {"type": "text", "text": "brief"}]},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]})
    turns = p.first.messages
    assert [t.role for t in turns] == ["system", "user", "assistant", "tool"]
    assert turns[0].content == "be brief" and turns[2].tool_calls[0].name == "w"
    assert turns[3].tool_call_id == "c1"


@pytest.mark.parametrize("field, value, param", [
    ("frequency_penalty", 0.5, "frequency_penalty"),
    ("logit_bias", {"50256": -100}, "logit_bias"),
    ("audio", {"voice": "x"}, "audio"),
    ("functions", [], "functions"),
    ("max_tokens", "ten", "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("temperature", 3, "temperature"),
    ("temperature", True, "temperature"),
    ("top_p", 0, "top_p"),
    ("n", 99, "n"),
    ("seed", 1.5, "seed"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"),
    ("stop", [1], "stop"),
    ("top_logprobs", 3, "top_logprobs"),  # without logprobs
    ("stream_options", {"include_usage": True}, "stream_options"),  # without stream
    ("response_format", {"type": "yaml"}, "response_format"),
    ("tool_choice", "required", "tool_choice"),  # without tools
    ("tools", [{"type": "retrieval"}], "tools[0]"),
])
def test_unsupported_or_malformed_chat_fields_are_400s_naming_the_field(field, value, param):
    refused(chat, param, **{field: value})


def test_malformed_messages_are_refused():
    refused(parse_chat, "messages", body={"model": "m", "messages": []})
    refused(parse_chat, "messages[0].role", body={"model": "m", "messages": [{"role": "x",
                                                                              "content": "a"}]})
    refused(parse_chat, "messages[0].content",
            body={"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://x"}}]}]})
    refused(parse_chat, "model", body={"messages": MSG})


def test_text_completions_take_strings_only_and_multiply_prompts_by_n():
    p = parse_completion({"model": "m", "prompt": ["a", "b"], "n": 2, "seed": 1, "logprobs": 2})
    assert [(g.prompt, g.seed) for g in p.choices] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert p.first.max_tokens == 16 and p.first.logprobs == 2  # OpenAI's default max_tokens
    for body, param in [({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": "a", "echo": True}, "echo"),
                        ({"prompt": "a", "suffix": "z"}, "suffix"),
                        ({"prompt": "a", "best_of": 3}, "best_of")]:
        refused(parse_completion, param, body={"model": "m", **body})


# ---- router.toml ---------------------------------------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "router.toml"
    path.write_text(text)
    return path


def test_router_toml_is_read_and_its_mistakes_named(tmp_path):
    s = load_router_settings(write(tmp_path, """
private_models = ["hearth/*"]
[[routes]]
name = "openai"
models = ["gpt-*"]
target = "upstream"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-never-shown"
fallbacks = ["local"]
"""))
    assert s.routes[0].target == "upstream" and s.route("local").target == "local"
    assert "sk-never-shown" not in repr(s) + str(s.routes[0])
    for text, words in [
        ('[[routes]]\nname = "a"\ntarget = "moon"', "target must be one of"),
        ('[[routes]]\nname = "a"\ntarget = "upstream"', "needs base_url"),
        ('[[routes]]\nname = "a"\ntarget = "local"\nfallbacks = ["b"]', "fallback 'b'"),
        ('[[routes]]\nname = "a"\ntarget = "swarm"\npeers = ["nohost"]', "HOST:PORT"),
        ('[[routes]]\nname = "a"\ntarget = "local"\nmax_cost = 5', "needs price_per_1k"),
        ('colour = "red"', "colour"),
        ('private = [', "router.toml"),
    ]:
        with pytest.raises(SettingsError, match=words) as e:
            load_router_settings(write(tmp_path, text))
        assert "router.toml" in str(e.value)


# ---- the policy ----------------------------------------------------------------------------------

SETTINGS = {"routes": [
    {"name": "openai", "models": ["gpt-*"], "target": "upstream",
     "base_url": "http://127.0.0.1:9/v1", "fallbacks": ["swarm", "local"]},
    {"name": "swarm", "models": ["swarm-*"], "target": "swarm", "peers": ["127.0.0.1:9"],
     "price_per_1k": 100, "max_cost": 10, "fallbacks": ["local"]}]}


def settings(**kw):
    import msgspec
    return msgspec.convert({**SETTINGS, **kw}, RouterSettings)


def names(routes):
    return [r.name for r in routes]


def gpt(**kw):
    return parse_chat({"model": "gpt-4o", "messages": MSG, "max_tokens": 8, **kw})


def test_the_first_matching_route_then_its_fallbacks():
    s = settings()
    assert names(plan(s, gpt(), None, False)) == ["openai", "swarm", "local"]
    assert names(plan(s, chat(), "auto", False)) == ["local"]  # no route matches: local


def test_private_requests_stay_local_and_cannot_be_forced_out():
    s = settings()
    assert names(plan(s, gpt(), None, True)) == ["local"]
    for target in ("upstream", "swarm"):
        e = refused(plan, "X-Hearth-Private", settings=s, req=gpt(), forced=target, private=True)
        assert e.code == "private_request"
    assert is_private(settings(private_models=["gpt-*"]), "gpt-4o", None)
    assert is_private(s, "x", "1") and not is_private(s, "x", None)
    refused(is_private, "X-Hearth-Private", settings=s, model="x", header="yes")


def test_what_the_swarm_cannot_do_skips_it_or_is_refused_when_forced():
    s = settings()
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert names(plan(s, gpt(response_format=schema), None, False)) == ["openai", "local"]
    assert names(plan(s, gpt(logprobs=True), None, False)) == ["openai", "local"]
    e = refused(plan, "X-Hearth-Route", settings=s, req=gpt(response_format=schema),
                forced="swarm", private=False)
    assert "grammar" in e.message


def test_forced_routes_and_cost_ceilings():
    s = settings()
    assert names(plan(s, gpt(), "swarm", False)) == ["swarm"]
    assert names(plan(s, gpt(), "LOCAL", False)) == ["local"]
    refused(plan, "X-Hearth-Route", settings=s, req=gpt(), forced="moon", private=False)
    # 100 per 1k tokens, max_cost 10: at most ~100 tokens; 500 max_tokens is over the ceiling.
    big = parse_chat({"model": "swarm-1", "messages": MSG, "max_tokens": 500})
    assert names(plan(s, big, None, False)) == ["local"]
    e = refused(plan, "max_tokens", settings=s, req=big, forced="swarm", private=False)
    assert e.code == "cost_ceiling"
    small = parse_chat({"model": "swarm-1", "messages": MSG, "max_tokens": 20})
    assert names(plan(s, small, None, False)) == ["swarm", "local"]
    only_upstream = settings(routes=[{**SETTINGS["routes"][0], "fallbacks": ["local"]}])
    e = refused(plan, "X-Hearth-Route", settings=only_upstream, req=gpt(), forced="swarm",
                private=False)
    assert e.code == "no_route"


# ---- the game window's claim ---------------------------------------------------------------------

def test_the_presence_gate_pauses_while_the_window_marks_and_not_after_it_is_gone(tmp_path):
    gate = WindowPresenceGate(tmp_path)
    assert not gate.paused()
    mark(True, tmp_path)
    gate._checked = float("-inf")
    assert gate.paused()
    mark(False, tmp_path)
    gate._checked = float("-inf")
    assert not gate.paused() and gate.wait_resumed(0.1)
    mark(True, tmp_path)  # a window that died: its mark goes stale
    old = time.time() - STALE_AFTER - 1
    os.utime(presence_path(tmp_path), (old, old))
    gate._checked = float("-inf")
    assert not gate.paused()


@pytest.mark.slow
def test_serve_refuses_to_listen_beyond_this_machine_without_a_key(tmp_path):
    from conftest import hearth
    r = hearth("serve", "--host", "0.0.0.0", "--port", "0", home=tmp_path)
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "router.toml").write_text('[[routes]]\nname = "x"\ntarget = "moon"\n')
    r = hearth("serve", "--port", "0", home=tmp_path)
    assert r.returncode != 0 and "router.toml" in r.stderr and "moon" in r.stderr


def test_the_window_marks_presence_while_the_player_is_at_it():
    from game.window_worker import WindowWorker
    from swarm.jobs.settings import WorkerSettings

    now = [1000.0]
    w = WindowWorker(WorkerSettings(idle_seconds=60), agreed=False, clock=lambda: now[0])
    w.input_seen()
    w.poll()  # not serving jobs (never agreed), but the mark is still kept for `hearth serve`
    assert presence_path().exists()
    now[0] += 61  # away
    w.poll()
    assert not presence_path().exists()
    w.input_seen()
    now[0] += 2
    w.poll()
    assert presence_path().exists()
    w.close()
    assert not presence_path().exists()


@pytest.mark.slow
def test_the_swarm_route_finds_workers_in_the_dht_through_swarm_toml(tmp_path, monkeypatch):
    """``hearth serve``'s swarm route with no peers listed: it joins the DHT through
    swarm.toml's bootstrap nodes (all on 127.0.0.1 here) and finds the workers announced for the
    model."""
    from game.serve_cli import _dht_endpoints
    from swarm.jobs.discovery import announce
    from swarm.router.errors import RouteFailed
    from swarm.settings import SwarmSettings, parse_endpoint
    from swarm.torrent import SwarmNode

    monkeypatch.setenv("HEARTH_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    model = "ab" * 32
    with pytest.raises(RouteFailed, match="no DHT bootstrap"):
        _dht_endpoints(model)
    nodes = [SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True, seeding=False),
                       tmp_path / f"n{i}").start() for i in range(3)]
    try:
        for a in nodes:
            others = [parse_endpoint(b.endpoint) for b in nodes if b is not a]
            a.session.call(lambda ses, others=others: [ses.add_dht_node(n) for n in others])
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "swarm.toml").write_text(
            'listen = "127.0.0.1:0"\nloopback = true\nseeding = false\n'
            f'bootstrap = ["{nodes[1].endpoint}"]\n')
        found: list[str] = []
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            announce(nodes[0], [model], 45678)  # a worker's offer socket on port 45678
            time.sleep(1)
            found = _dht_endpoints(model)
        assert found == ["127.0.0.1:45678"]
    finally:
        for n in nodes:
            n.close()
