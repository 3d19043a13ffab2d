"""Where ``hearth serve`` runs a request: the upstream route against a second endpoint on
another port, the swarm route against a loopback worker on the real model (the requester path,
re-scored here, receipts co-signed), fallbacks when a route fails, and the privacy rule, asserted
on the upstream's and the worker's own records."""

from __future__ import annotations

import logging
import socket

import msgspec
import openai
import pytest

from common.identity import load_or_create_identity
from game.jobs_backend import load_backend
from game.serve_backend import load_local_model
from game.serve_cli import BackgroundServer, bind
from swarm.jobs.job_store import JobStore
from swarm.jobs.worker import Worker
from swarm.jobs.worker_store import WorkerStore
from swarm.router.app import create_app
from swarm.router.settings import RouterSettings
from swarm.router.swarm_route import SwarmTarget

pytestmark = [pytest.mark.model, pytest.mark.slow]

SECRET = "sk-hearth-test-9f3c51a7e2"
ASK = [{"role": "user", "content": "What does the miller grind?"}]
PRIVATE = {"X-Hearth-Private": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net:
    def __init__(self, tmp):
        self.local, self.backend, self.scheduler = load_local_model()
        self.worker_backend = load_backend("default", width=2, self_check=False)
        self.worker = Worker(self.worker_backend, load_or_create_identity(tmp / "worker"),
                             WorkerStore(tmp / "worker.sqlite"), price_per_1k=100).start()
        # The upstream: another endpoint on its own port, wanting the key.
        self.upstream = BackgroundServer(create_app(self.local, RouterSettings(), api_key=SECRET),
                                         bind("127.0.0.1", 0)).start()
        self.upstream_log = self.upstream.server.config.app.state.router.recent
        routes = [
            {"name": "up", "models": ["gpt-*"], "target": "upstream", "api_key": SECRET,
             "base_url": self.upstream.url, "fallbacks": ["local"]},
            {"name": "swarm", "models": ["swarm-*"], "target": "swarm", "price_per_1k": 1000,
             "peers": [self.worker.offer_endpoint], "timeout": 120, "fallbacks": ["local"]},
            {"name": "dead", "models": ["dead-*"], "target": "upstream",
             "base_url": f"http://127.0.0.1:{free_port()}/v1", "fallbacks": ["local"]},
            {"name": "dead-only", "models": ["gone-*"], "target": "upstream",
             "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ]
        # As `hearth serve` does: claims re-scored on an engine of the requester's own.
        self.verifier = load_backend("default", width=1, self_check=False)
        swarm = SwarmTarget(load_or_create_identity(tmp / "requester"),
                            JobStore(tmp / "requester.sqlite"), self.verifier,
                            heartbeat_timeout=30)
        self.router = BackgroundServer(
            create_app(self.local, msgspec.convert({"routes": routes}, RouterSettings),
                       swarm=swarm), bind("127.0.0.1", 0)).start()
        self.client = openai.OpenAI(base_url=self.router.url, api_key="unused", max_retries=0)

    def close(self):
        self.router.stop()
        self.upstream.stop()
        self.worker.close()
        self.worker_backend.close()
        self.verifier.close()
        self.scheduler.close()
        self.backend.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(tmp_path_factory.mktemp("routes"))
    yield n
    n.close()


def ask(net, model, headers=None, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    raw = net.client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, extra_headers=headers or {}, **kw)
    return raw.headers["x-hearth-route-taken"], raw.parse()


def test_the_upstream_route_forwards_with_the_key_and_never_logs_it(net, caplog):
    caplog.set_level(logging.DEBUG)
    seen = len(net.upstream_log)
    taken, r = ask(net, "gpt-4o-mini")
    assert taken == "upstream"
    (got,) = list(net.upstream_log)[seen:]  # the upstream (which wants the key) answered it
    assert got["model"] == "gpt-4o-mini" and got["route"] == "local"
    _, here = ask(net, "hearth")
    assert r.choices[0].message.content == here.choices[0].message.content
    assert SECRET not in caplog.text


def test_an_upstream_stream_is_relayed_with_usage(net):
    stream = net.client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=8,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True})
    chunks = list(stream)
    _, whole = ask(net, "hearth")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_an_upstream_error_is_passed_through(net):
    with pytest.raises(openai.NotFoundError):
        ask(net, "hearth/no-such-skin", {"X-Hearth-Route": "upstream"})


def test_a_failing_upstream_falls_back_and_without_fallbacks_is_a_503(net):
    taken, _ = ask(net, "dead-model")
    assert taken == "local"
    with pytest.raises(openai.InternalServerError) as e:
        ask(net, "gone-model")
    assert e.value.status_code == 503 and "dead-only" in e.value.body["message"]


def test_a_private_request_never_leaves_the_machine(net):
    seen, shards = len(net.upstream_log), net.worker.stats.shards_served
    assert ask(net, "gpt-4o-mini", PRIVATE)[0] == "local"
    assert ask(net, "swarm-model", PRIVATE)[0] == "local"
    for target in ("upstream", "swarm"):
        with pytest.raises(openai.BadRequestError) as e:
            ask(net, "gpt-4o-mini", {**PRIVATE, "X-Hearth-Route": target})
        assert e.value.body["code"] == "private_request"
    assert len(net.upstream_log) == seen and net.worker.stats.shards_served == shards


def test_the_swarm_route_runs_a_request_as_a_job_on_a_worker(net):
    shards = net.worker.stats.shards_served
    taken, r = ask(net, "swarm-model")
    assert taken == "swarm" and net.worker.stats.shards_served == shards + 1
    # Jobs run the default model (hearth serve's local model may be a faster requantization of
    # it): the answer is that model's greedy answer, re-scored exactly.
    from npc.serving.types import Item, Message
    (here,) = net.verifier.engine.generate(
        [Item("here", [Message(m["role"], m["content"]) for m in ASK], 8, 0.0, 1.0, 0)])
    assert r.choices[0].message.content == here.text
    assert r.usage.completion_tokens == len(here.tokens)
    assert len(net.worker.store.receipts()) >= 1  # paid like any job
    stream = net.client.chat.completions.create(model="swarm-model", messages=ASK, max_tokens=8,
                                                temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == here.text


def test_what_the_swarm_cannot_enforce_runs_here_or_is_refused(net):
    shards = net.worker.stats.shards_served
    json_only = {"response_format": {"type": "json_object"}, "max_tokens": 30}
    taken, r = ask(net, "swarm-model", **json_only)
    assert taken == "local" and r.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as e:
        ask(net, "swarm-model", {"X-Hearth-Route": "swarm"}, **json_only)
    assert e.value.body["code"] == "unsupported_route"
    assert net.worker.stats.shards_served == shards
