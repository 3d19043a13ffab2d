"""The upstream route: the request forwarded to an OpenAI-compatible API over httpx, with the
route's key in the Authorization header (the only place it ever goes: it is in no log line,
error message or repr)."""

from __future__ import annotations

import logging

import httpx

from swarm.router.errors import RouteFailed
from swarm.router.settings import Route

log = logging.getLogger("hearth.router")
#: Answers that say "try elsewhere" rather than "the request is wrong".
RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


class Upstreams:
    """One connection pool for every upstream route."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def send(self, route: Route, path: str, body: dict) -> httpx.Response:
        """POST ``body`` (the model renamed if the route says) to the route's ``path``; the
        response is open for streaming and the caller closes it. Raises ``RouteFailed`` when
        the upstream cannot be reached or answers with an error another route may not have."""
        if route.model is not None:
            body = {**body, "model": route.model}
        headers = {"Accept": "application/json, text/event-stream"}
        if route.api_key:
            headers["Authorization"] = f"Bearer {route.api_key}"
        url = route.base_url.rstrip("/") + path
        request = self._client.build_request("POST", url, json=body, headers=headers,
                                             timeout=httpx.Timeout(route.timeout, connect=10.0))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise RouteFailed(f"upstream {route.name!r} unreachable ({type(e).__name__})") \
                from None
        if response.status_code in RETRYABLE:
            await response.aclose()
            raise RouteFailed(f"upstream {route.name!r} answered {response.status_code}")
        log.info("upstream %s answered %d", route.name, response.status_code)
        return response

    async def close(self) -> None:
        await self._client.aclose()
