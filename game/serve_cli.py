"""``hearth serve``: this machine's OpenAI-compatible endpoint. Any program that speaks the
OpenAI API points its base URL at it; each request runs where router.toml's policy says (the
local model by default; the swarm or an upstream API when configured; never off the machine when
marked private). The endpoint app lives in swarm.router; this module loads the model, wires the
swarm route and runs uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time

from game.cli_error import CliError
from game.notices import note

DEFAULT_PORT = 8080
DHT_WAIT_SECONDS = 10.0
DHT_LOOKUP_SECONDS = 20.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); CliError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class BackgroundServer:
    """uvicorn serving ``app`` on ``sock`` in a thread (tests and benchmarks; ``hearth serve``
    runs it in the main thread)."""

    def __init__(self, app, sock: socket.socket):
        import uvicorn
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="hearth-serve", daemon=True)

    def start(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _until_signal_server(config):
    """uvicorn's server for the main thread: Ctrl-C or SIGTERM shuts it down gracefully and
    ``hearth serve`` exits 0 (uvicorn itself re-raises the signal once it has stopped)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            old = {sig: signal.signal(sig, self.handle_exit)
                   for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
    return Server(config)


def _dht_endpoints(model_id: str) -> list[str]:
    """Workers for ``model_id`` found in the DHT through swarm.toml's bootstrap nodes."""
    from game.swarm_bridge import start_node
    from swarm.jobs.discovery import find_endpoints
    from swarm.router.errors import RouteFailed
    from swarm.settings import load_settings

    settings = load_settings()
    if not settings.bootstrap:
        raise RouteFailed("no peers on the swarm route and no DHT bootstrap in swarm.toml")
    node = start_node(settings)
    try:
        deadline = time.monotonic() + DHT_WAIT_SECONDS
        while not node.dht_node_count():
            if time.monotonic() > deadline:
                raise RouteFailed("no DHT node answered")
            time.sleep(0.25)
        return find_endpoints(node, model_id, DHT_LOOKUP_SECONDS)
    finally:
        node.close()


def make_swarm_target():
    """The swarm route's requester: this machine's identity and job store, workers' claims
    re-scored on an engine of its own (the serving engine's scheduler would make re-scoring
    wait for an idle moment, which steady local traffic may never leave)."""
    from common.identity import load_or_create_identity
    from game.jobs_backend import load_backend
    from game.jobs_cli import jobs_dir
    from swarm.jobs.job_store import JobStore
    from swarm.router.swarm_route import SwarmTarget
    verifier = load_backend("default", width=1, self_check=False)
    return SwarmTarget(load_or_create_identity(), JobStore(jobs_dir() / "requester.sqlite"),
                       verifier, find_endpoints=_dht_endpoints)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from game.serve_backend import load_local_model
    from game.window_presence import WindowPresenceGate
    from npc.serving import ServingError
    from npc.store import StoreError
    from swarm.router.app import create_app
    from swarm.router.settings import load_router_settings

    if not is_loopback(args.host) and not args.api_key:
        raise CliError(f"--host {args.host} would let other machines use this endpoint: give "
                       f"--api-key KEY too (clients then send Authorization: Bearer KEY)")
    if args.api_key is not None and not args.api_key.strip():
        raise CliError("--api-key cannot be empty")
    settings = load_router_settings()
    sock = bind(args.host, args.port)
    note("loading the model")
    try:
        local, backend, scheduler = load_local_model(WindowPresenceGate(), width=args.width, say=note)
        swarm = make_swarm_target() if any(r.target == "swarm" for r in settings.routes) else None
    except (ServingError, StoreError) as e:
        sock.close()
        raise CliError(f"cannot load the model: {e}") from None
    app = create_app(local, settings, swarm=swarm, api_key=args.api_key,
                     fingerprint=f"hearth-{backend.model_id[:12]}")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving: http://{shown}:{port}/v1 models {' '.join(local.models())}", flush=True)
    server = _until_signal_server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                 timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.close()
        backend.close()
        if swarm is not None:
            swarm.verifier.close()
        sock.close()
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "serve", help="an OpenAI-compatible endpoint for every app on this machine",
        description="Serve the OpenAI API (/v1/models, /v1/chat/completions, /v1/completions, "
                    "streaming or not; /health) until interrupted. Models: `hearth` (the "
                    "game's model) and `hearth/<skin name>` for each installed skin; any other "
                    "model name runs on the game's model unless router.toml routes it "
                    "elsewhere. Where a request runs is router.toml's policy (config directory; "
                    "without it, always here), or the request's X-Hearth-Route header "
                    "(local|swarm|upstream|auto); X-Hearth-Private: 1 keeps a request on this "
                    "machine. The answer's X-Hearth-Route-Taken header says where it ran. While "
                    "you are playing in the game window, generation here waits. Prints "
                    "`serving: URL models ...` once it accepts requests.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on every request but /health")
    p.add_argument("--width", type=int, default=None, metavar="N",
                   help="requests generated at once (default 8)")
    p.set_defaults(func=cmd_serve)
