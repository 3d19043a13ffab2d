"""The ASGI app: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` plus
``/health``, each request run on the routes ``policy.plan`` picks, tried in order until one
completes it. Streams are server-sent events (sse-starlette); a client that goes away cancels
its generation. Every error is an OpenAI error body."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from swarm.router import responses as r
from swarm.router.errors import (
    AUTHENTICATION, NOT_FOUND, SERVER, UNAVAILABLE, ApiError, RouteFailed, bad_request,
)
from swarm.router.local import Done, Generation, LocalModel, Piece
from swarm.router.openai_api import ParsedRequest, parse_chat, parse_completion
from swarm.router.policy import PRIVATE_HEADER, ROUTE_HEADER, TAKEN_HEADER, is_private, plan
from swarm.router.settings import Route, RouterSettings
from swarm.router.swarm_route import SwarmTarget
from swarm.router.upstream import Upstreams

log = logging.getLogger("hearth.router")
#: Recent requests remembered (path, model, private, route taken): /health counts where they
#: went, and an operator or a test can see that a private request stayed here.
RECENT = 1000
DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Recorded(dict):
    """What the endpoint remembers of one request: path, model, private, route taken."""


class Fixed:
    """A finished completion replayed as a generation (the swarm's answers arrive whole)."""

    def __init__(self, done: Done):
        self.done = done

    async def __aiter__(self):
        if self.done.text:
            yield Piece(self.done.text)
        yield self.done

    def cancel(self) -> None:
        pass


async def read_json(request: Request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {length} bytes; at most {limit} are accepted",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
        chunks.append(chunk)

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")
    try:
        body = json.loads(b"".join(chunks), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})", code="invalid_json") \
            from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class RequireKey:
    """ASGI middleware: every request but /health carries ``Authorization: Bearer <key>``. (A
    plain ASGI wrapper: Starlette's BaseHTTPMiddleware would hide client disconnects from
    streams.)"""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error_response(ApiError(
                    401, "a valid API key is required (Authorization: Bearer KEY)",
                    type=AUTHENTICATION, code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Router:
    """The app's state: the local model, the swarm and upstream targets, the policy."""

    def __init__(self, local: LocalModel, settings: RouterSettings, swarm: SwarmTarget | None,
                 fingerprint: str):
        self.local = local
        self.settings = settings
        self.swarm = swarm
        self.upstreams = Upstreams()
        self.fingerprint = fingerprint
        self.recent: deque[Recorded] = deque(maxlen=RECENT)

    # ---- one request ---------------------------------------------------------------------------

    async def handle(self, request: Request, kind: str) -> Response:
        body = await read_json(request, self.settings.max_body_bytes)
        parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
        private = is_private(self.settings, parsed.model, request.headers.get(PRIVATE_HEADER))
        record = Recorded(path=request.url.path, model=parsed.model, private=private, route=None)
        self.recent.append(record)
        failures = []
        for route in plan(self.settings, parsed, request.headers.get(ROUTE_HEADER), private):
            try:
                if route.target == "local":
                    response = await self._local(route, parsed, request)
                elif route.target == "upstream":
                    response = await self._upstream(route, parsed, kind)
                else:
                    response = await self._swarm(route, parsed, request)
            except RouteFailed as e:
                log.warning("route %s failed: %s", route.name, e)
                failures.append(str(e))
                continue
            record["route"] = route.target
            response.headers[TAKEN_HEADER] = route.target
            log.info("%s model=%s private=%s route=%s", record["path"], parsed.model, private,
                     route.name)
            return response
        raise ApiError(503, "no route could complete the request: " + "; ".join(failures),
                       type=UNAVAILABLE, code="routes_failed")

    def _local_model(self, route: Route, parsed: ParsedRequest) -> str:
        if route.model is not None:
            return route.model
        base = self.local.models()[0]
        if self.local.resolve(parsed.model) is not None or parsed.model.startswith(base + "/"):
            return parsed.model  # a skin that is not installed is a 404, not the base model
        return base  # any other name (an app's hard-wired "gpt-4o-mini"): the base model

    async def _local(self, route: Route, parsed: ParsedRequest, request: Request) -> Response:
        model = self._local_model(route, parsed)
        if self.local.resolve(model) is None:
            raise ApiError(404, f"model {model!r} is not served here (see /v1/models)",
                           type=NOT_FOUND, param="model", code="model_not_found")
        gens: list[Generation] = []
        try:
            for g in parsed.choices:
                # Off the event loop: tokenizing a long prompt or compiling a grammar takes a
                # while, and other clients' streams must keep flowing meanwhile.
                gens.append(await asyncio.to_thread(self.local.start, replace(g, model=model)))
        except BaseException:
            for gen in gens:
                gen.cancel()
            raise
        return await self._answer(parsed, gens, request)

    async def _swarm(self, route: Route, parsed: ParsedRequest, request: Request) -> Response:
        if self.swarm is None:
            raise RouteFailed(f"swarm route {route.name!r}: this endpoint has no swarm access")
        resolved = self.local.resolve(self._local_model(route, parsed))
        if resolved is None:
            raise RouteFailed(f"swarm route {route.name!r}: model {parsed.model!r} is not a "
                              f"model this machine can check")
        model_id, skin = resolved
        dones = await asyncio.to_thread(self.swarm.complete, route, parsed.choices, model_id, skin)
        return await self._answer(parsed, [Fixed(d) for d in dones], request)

    async def _upstream(self, route: Route, parsed: ParsedRequest, kind: str) -> Response:
        path = "/chat/completions" if kind == "chat" else "/completions"
        upstream = await self.upstreams.send(route, path, parsed.body)
        media = upstream.headers.get("content-type", "application/json")
        if parsed.stream and upstream.status_code == 200:
            async def relay():
                try:
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                finally:
                    await upstream.aclose()
            return StreamingResponse(relay(), status_code=200, media_type=media)
        try:
            data = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(data, status_code=upstream.status_code, media_type=media)

    # ---- answering -----------------------------------------------------------------------------

    async def _answer(self, parsed: ParsedRequest, gens: list, request: Request) -> Response:
        rid = ("chatcmpl-" if parsed.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if parsed.stream:
            return EventSourceResponse(self._stream(parsed, gens, rid, created), ping=15,
                                       sep="\n")
        results = await self._collect(gens, request)
        build = r.chat_body if parsed.kind == "chat" else r.completion_body
        return JSONResponse(build(rid, created, parsed.model, self.fingerprint, parsed.choices,
                                  results, parsed.n))

    async def _collect(self, gens: list, request: Request) -> list[tuple[list[Piece], Done]]:
        async def one(gen) -> tuple[list[Piece], Done]:
            pieces = []
            async for ev in gen:
                if isinstance(ev, Done):
                    return pieces, ev
                pieces.append(ev)
            raise RuntimeError("a generation ended without finishing")

        task = asyncio.gather(*(one(g) for g in gens))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    log.info("client went away: generation cancelled")
                    raise ClientGone()
        except BaseException:
            for g in gens:
                g.cancel()
            task.cancel()
            raise

    async def _stream(self, parsed: ParsedRequest, gens: list, rid: str, created: int):
        chunks = r.ChunkMaker(parsed.kind, rid, created, parsed.model, self.fingerprint,
                              parsed.include_usage)
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, gen) -> None:
            try:
                async for ev in gen:
                    await queue.put((i, ev))
            except ApiError as e:
                await queue.put((i, e))

        tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
        dones: list[Done | None] = [None] * len(gens)
        try:
            async for item in self._events(parsed, gens, chunks, queue, dones,
                                           self.settings.stream_interval_ms / 1000):
                yield item
        except ApiError as e:  # after the headers: OpenAI's in-stream error event
            yield _json(e.body())
        finally:
            for g in gens:
                g.cancel()
            for t in tasks:
                t.cancel()

    @staticmethod
    async def _events(parsed: ParsedRequest, gens: list, chunks: r.ChunkMaker,
                      queue: asyncio.Queue, dones: list, interval: float):
        """The stream's SSE data: each choice's chunks as its events arrive, then usage. A
        choice's text goes out at once the first time, then at most every ``interval`` seconds
        (what came in between in one chunk) and whatever is left before its finish."""
        offsets = [0] * len(gens)
        waiting: list[list[Piece]] = [[] for _ in gens]
        sent_at = [float("-inf")] * len(gens)
        clock = asyncio.get_running_loop().time

        def flush(i: int) -> str:
            pieces, waiting[i] = waiting[i], []
            text = "".join(p.text for p in pieces)
            chunk = chunks.text(i, text, pieces if parsed.choices[i].logprobs is not None
                                else None, offsets[i])
            offsets[i] += len(text)
            return _json(chunk)

        for i in range(len(gens)):
            first = chunks.start(i)
            if first is not None:
                yield _json(first)
        while any(d is None for d in dones):
            i, ev = await queue.get()
            if isinstance(ev, ApiError):
                raise ev
            g = parsed.choices[i]
            # With tools the text is held back: only the whole of it says whether it is a call.
            held = bool(g.tools) and g.tool_choice != "none"
            if isinstance(ev, Done):
                dones[i] = ev
                if waiting[i]:
                    yield flush(i)
                if ev.tool_calls:
                    yield _json(chunks.tool_calls(i, ev))
                elif held and ev.text:
                    yield _json(chunks.text(i, ev.text, None))
                yield _json(chunks.finish(i, ev))
            elif not held and (ev.text or g.logprobs is not None):
                waiting[i].append(ev)
                now = clock()
                if now - sent_at[i] >= interval:
                    sent_at[i] = now
                    yield flush(i)
        if parsed.include_usage:
            yield _json(chunks.usage(dones, parsed.n))
        yield "[DONE]"

    async def close(self) -> None:
        await self.upstreams.close()


def create_app(local: LocalModel, settings: RouterSettings, *, swarm: SwarmTarget | None = None,
               api_key: str | None = None, fingerprint: str = "hearth") -> FastAPI:
    """The endpoint's app. With ``api_key`` every /v1 request must carry
    ``Authorization: Bearer <api_key>``."""
    router = Router(local, settings, swarm, fingerprint)
    @asynccontextmanager
    async def lifespan(_app):
        yield
        await router.close()

    app = FastAPI(title="Hearth", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.router = router

    if api_key is not None:
        app.add_middleware(RequireKey, api_key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(ClientGone)
    async def client_gone(_request, _e: ClientGone):
        return Response(status_code=499)  # nobody reads it: the connection is closed

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        kind = NOT_FOUND if e.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        return _error_response(bad_request(str(e)))

    @app.exception_handler(Exception)
    async def server_error(_request, e: Exception):
        log.exception("request failed")
        return _error_response(ApiError(500, f"internal error ({type(e).__name__})", type=SERVER))

    @app.get("/health")
    async def health():
        taken: dict[str, int] = {}
        for rec in router.recent:
            key = rec["route"] or "failed"
            taken[key] = taken.get(key, 0) + 1
        return {"status": "ok", "models": local.models(), "recent_routes": taken}

    def model_entry(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "hearth"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_entry(m) for m in local.models()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name not in local.models():
            raise ApiError(404, f"model {name!r} is not served here", type=NOT_FOUND,
                           param="model", code="model_not_found")
        return model_entry(name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await router.handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await router.handle(request, "completion")

    return app
