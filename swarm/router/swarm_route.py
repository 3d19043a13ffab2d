"""The swarm route: a request run as a one-job-per-request batch job through the requester
(offers from the route's peers or the DHT, the work re-scored on this machine's model, receipts
co-signed and paid as for any job). Every choice of the request is one work item.

A work item carries messages and sampling only, so the swarm takes chat requests without a
grammar (response_format, tools), tool turns or logprobs (``unfit`` says which); stop strings
are applied to the returned text. The requester does not stream: the answer arrives whole."""

from __future__ import annotations

import os
from collections.abc import Callable

from common.identity import Identity
from swarm.jobs.backend import ChatMessage, InferenceBackend, WorkItem
from swarm.jobs.discovery import fetch_offers
from swarm.jobs.job_store import JobStore
from swarm.jobs.requester import JobError, Requester, job_id
from swarm.router.errors import RouteFailed
from swarm.router.local import Done, GenerationRequest
from swarm.router.settings import Route


def unfit(g: GenerationRequest) -> str | None:
    """Why a generation cannot run on the swarm, or None when it can."""
    if g.prompt is not None:
        return "the swarm takes chat requests only (workers apply the chat template)"
    if g.constrained:
        return "the swarm cannot enforce response_format or tools (workers take no grammar)"
    if g.logprobs is not None:
        return "the swarm does not return logprobs"
    if any(t.role == "tool" or t.tool_calls for t in g.messages or ()):
        return "the swarm takes no tool calls or tool results"
    return None


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class SwarmTarget:
    """Runs requests on workers. ``find_endpoints(model_id)`` lists worker endpoints (a DHT
    lookup) for routes that name no peers; ``verifier`` re-scores claims (this machine's model)."""

    def __init__(self, identity: Identity, store: JobStore, verifier: InferenceBackend | None, *,
                 find_endpoints: Callable[[str], list[str]] | None = None,
                 heartbeat_timeout: float = 5.0):
        self.identity = identity
        self.store = store
        self.verifier = verifier
        self.find_endpoints = find_endpoints
        self.heartbeat_timeout = heartbeat_timeout

    def complete(self, route: Route, choices: tuple[GenerationRequest, ...], model_id: str,
                 skin: str | None) -> list[Done]:
        """Every choice completed on workers (blocking). Raises RouteFailed when no worker
        serves it or the job cannot finish in the route's timeout."""
        items = [WorkItem(custom_id=f"choice-{i}",
                          messages=[ChatMessage(t.role, t.content) for t in g.messages],
                          max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                          seed=g.seed)
                 for i, g in enumerate(choices)]
        if route.peers:
            endpoints = list(route.peers)
        elif self.find_endpoints is not None:
            endpoints = self.find_endpoints(model_id)
        else:
            raise RouteFailed(f"swarm route {route.name!r} names no peers and no DHT is joined")
        offers = fetch_offers(endpoints, self.identity.public_hex, model_id)
        price = None if route.price_per_1k is None else int(route.price_per_1k)
        requester = Requester(self.identity, self.store, self.verifier, max_price=price,
                              heartbeat_timeout=self.heartbeat_timeout)
        if not requester.usable_offers(offers, model_id, skin):
            raise RouteFailed(f"swarm route {route.name!r}: no worker serves this model"
                              + (f" at {price} per 1k tokens or less" if price is not None else ""))
        job = job_id(os.urandom(16), model_id, skin)  # a fresh job per request
        try:
            outcome = requester.run(job, model_id, skin, items, offers, timeout=route.timeout)
        except JobError as e:
            raise RouteFailed(f"swarm route {route.name!r}: {e}") from None
        out = []
        for item, g in zip(items, choices):
            c = outcome.completions[item.custom_id]
            text, stopped = _cut(c.text, g.stop)
            out.append(Done("stop" if stopped else c.finish_reason, c.prompt_tokens,
                            len(c.tokens), text))
        return out
