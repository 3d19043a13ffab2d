"""Which routes a request is tried on, in order.

Under ``X-Hearth-Route: auto`` (or no header) the first route in ``router.toml`` whose model
patterns match is taken, then its fallbacks. Rules that override the configuration:

* private (the ``X-Hearth-Private: 1`` header, ``private = true``, or a model in
  ``private_models``): only the local model; a private request asking for another target by
  header is refused (400), never sent.
* swarm-unfit (``swarm_route.unfit``: a grammar from response_format or tools, which a work item
  cannot carry; a text completion; logprobs; tool turns): swarm routes are
  skipped; asking for the swarm by header is refused (400) with the reason.
* cost: a route with ``max_cost`` is skipped when the request's worst case (estimated prompt
  tokens plus ``max_tokens``, times every choice, at ``price_per_1k``) is above it.

When these rules leave nothing, the request runs locally; a request every
route is too expensive for is refused (400). ``X-Hearth-Route: local|swarm|upstream`` forces the
target: the first route of that target whose models match (else the first of that target), with
no fallbacks to other targets.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from swarm.router.errors import ApiError, bad_request
from swarm.router.openai_api import ParsedRequest
from swarm.router.settings import LOCAL, TARGETS, Route, RouterSettings
from swarm.router.swarm_route import unfit

ROUTE_HEADER = "x-hearth-route"
PRIVATE_HEADER = "x-hearth-private"
TAKEN_HEADER = "X-Hearth-Route-Taken"
#: A generous bytes-per-token guess for the worst-case cost of a prompt not yet tokenized.
BYTES_PER_TOKEN = 2


def _matches(route: Route, model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in route.models)


def is_private(settings: RouterSettings, model: str, header: str | None) -> bool:
    if header is not None and header.strip() not in ("", "0", "1", "true", "false"):
        raise bad_request(f"X-Hearth-Private must be 1 or 0, not {header!r}", "X-Hearth-Private")
    return (settings.private or (header or "").strip() in ("1", "true")
            or any(fnmatchcase(model, p) for p in settings.private_models))


def worst_case_tokens(req: ParsedRequest) -> int:
    total = 0
    for g in req.choices:
        text = g.prompt if g.prompt is not None else "".join(
            t.content + "".join(c.arguments for c in t.tool_calls) for t in g.messages or ())
        total += len(text.encode()) // BYTES_PER_TOKEN + 16 + g.max_tokens
    return total


def _affordable(route: Route, tokens: int) -> bool:
    return route.max_cost is None or tokens * route.price_per_1k / 1000 <= route.max_cost


def plan(settings: RouterSettings, req: ParsedRequest, forced: str | None,
         private: bool) -> list[Route]:
    """The routes to try for ``req``, in order (never empty). ``forced`` is the
    ``X-Hearth-Route`` header (None or "auto": the policy decides)."""
    if forced is not None:
        forced = forced.strip().lower()
    if forced not in (None, "", "auto", *TARGETS):
        raise bad_request(f"X-Hearth-Route must be auto, {', '.join(TARGETS)}; not {forced!r}",
                          "X-Hearth-Route")
    swarm_unfit = next((why for why in map(unfit, req.choices) if why), None)
    tokens = worst_case_tokens(req)
    if forced in TARGETS:
        if private and forced != LOCAL:
            raise bad_request(f"a private request never leaves this machine: it cannot go to "
                              f"the {forced} route", "X-Hearth-Private", "private_request")
        if swarm_unfit and forced == "swarm":
            raise bad_request(f"{swarm_unfit}: use the local route", "X-Hearth-Route",
                              "unsupported_route")
        of_target = [r for r in settings.routes if r.target == forced]
        route = next((r for r in of_target if _matches(r, req.model)),
                     of_target[0] if of_target else None)
        if route is None:
            if forced != LOCAL:
                raise bad_request(f"no {forced} route is configured in router.toml",
                                  "X-Hearth-Route", "no_route")
            route = settings.route(LOCAL)
        if not _affordable(route, tokens):
            raise bad_request(f"the request may cost more than route {route.name!r} allows "
                              f"(max_cost {route.max_cost})", "max_tokens", "cost_ceiling")
        return [route]
    first = next((r for r in settings.routes if _matches(r, req.model)), settings.route(LOCAL))
    chain, seen = [], set()
    for name in [first.name, *first.fallbacks]:
        if name not in seen:
            seen.add(name)
            chain.append(settings.route(name))
    kept = [r for r in chain if (not private or r.target == LOCAL)
            and not (swarm_unfit and r.target == "swarm")]
    if not kept:
        kept = [settings.route(LOCAL)]
    affordable = [r for r in kept if _affordable(r, tokens)]
    if not affordable:
        raise ApiError(400, f"the request may cost more than every route allows (worst case "
                            f"{tokens} tokens)", param="max_tokens", code="cost_ceiling")
    return affordable
