"""The endpoint's routing policy: ``router.toml`` in Hearth's config directory.

```toml
private = false                  # true: no request ever leaves this machine
private_models = ["hearth*"]     # requests for these models never leave this machine
max_body_bytes = 1048576         # larger request bodies are refused (413)
stream_interval_ms = 50          # a stream's text is sent at most this often (0: every token)

[[routes]]                       # tried top to bottom: the first whose models match is taken
name = "openai"
models = ["gpt-*"]               # fnmatch patterns on the request's model
target = "upstream"              # local | swarm | upstream
base_url = "https://api.openai.com/v1"
api_key = "sk-..."               # sent to base_url only; never logged or shown
model = "gpt-4o-mini"            # the model name sent to the target (default: the one asked for)
price_per_1k = 600               # what 1,000 tokens cost here (your unit; swarm: micro-gold)
max_cost = 5000                  # the most one request may cost here (worst case), else skipped
fallbacks = ["swarm", "local"]   # route names tried in turn when this one fails
timeout = 120                    # seconds

[[routes]]
name = "swarm"
models = ["*"]
target = "swarm"
peers = ["127.0.0.1:7880"]       # workers to ask (default: found in the DHT via swarm.toml)
price_per_1k = 200               # workers asking more per 1,000 tokens are not used
fallbacks = ["local"]
```

Without the file every request runs on the local model. A route named ``local`` (target
``local``, every model) exists even when not declared, so ``fallbacks = ["local"]`` always
works.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.paths import config_dir
from swarm.settings import SettingsError, load_toml, parse_endpoint

CONFIG_FILE = "router.toml"
TARGETS = ("local", "swarm", "upstream")
LOCAL = "local"


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    target: str
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    peers: list[str] = []
    price_per_1k: float | None = None
    max_cost: float | None = None
    fallbacks: list[str] = []
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise SettingsError(f"route {self.name!r}: target must be one of "
                                f"{', '.join(TARGETS)}, not {self.target!r}")
        if self.target == "upstream":
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise SettingsError(f"route {self.name!r}: an upstream route needs base_url "
                                    f"(http:// or https://)")
        elif self.base_url or self.api_key:
            raise SettingsError(f"route {self.name!r}: base_url and api_key are for upstream "
                                f"routes")
        if self.peers and self.target != "swarm":
            raise SettingsError(f"route {self.name!r}: peers are for swarm routes")
        for peer in self.peers:
            parse_endpoint(peer)
        if self.max_cost is not None and self.price_per_1k is None:
            raise SettingsError(f"route {self.name!r}: max_cost needs price_per_1k")
        for v, what in ((self.price_per_1k, "price_per_1k"), (self.max_cost, "max_cost")):
            if v is not None and v < 0:
                raise SettingsError(f"route {self.name!r}: {what} cannot be negative")
        if self.timeout <= 0:
            raise SettingsError(f"route {self.name!r}: timeout must be positive")

    def __repr__(self) -> str:  # the api key never reaches a log or a traceback
        return f"Route(name={self.name!r}, target={self.target!r}, models={self.models!r})"

    __str__ = __repr__


class RouterSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    private: bool = False
    private_models: list[str] = []
    max_body_bytes: int = 1 << 20
    #: A stream sends a choice's first text at once, then whatever text has come at most this
    #: often (a chunk may carry several tokens), which spares the client and the server a parse
    #: and an encode per token when one stream runs fast; 0 sends every token in its own chunk.
    #: 50 ms (20 updates a second, smooth to a reader): on two cores every chunk the client parses
    #: takes CPU from the decoding threads (served over direct, one client: ~0.83 at 20 ms, ~0.95
    #: at 50, ~1.0 at 1000; tools/bench/router.txt).
    stream_interval_ms: int = 50
    routes: list[Route] = []

    def __post_init__(self) -> None:
        names = [r.name for r in self.routes]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise SettingsError(f"two routes are named {dup!r}")
        known = set(names) | {LOCAL}
        for r in self.routes:
            for f in r.fallbacks:
                if f not in known:
                    raise SettingsError(f"route {r.name!r}: fallback {f!r} is not a route")
                if f == r.name:
                    raise SettingsError(f"route {r.name!r} falls back to itself")
        if LOCAL in names and self.route(LOCAL).target != LOCAL:
            raise SettingsError("the route named 'local' must have target local")
        if self.max_body_bytes < 1024:
            raise SettingsError("max_body_bytes must be at least 1024")
        if not 0 <= self.stream_interval_ms <= 1000:
            raise SettingsError("stream_interval_ms must be from 0 to 1000")

    def route(self, name: str) -> Route:
        """The route called ``name`` (``local`` exists even when not declared)."""
        for r in self.routes:
            if r.name == name:
                return r
        if name == LOCAL:
            return Route(name=LOCAL, target=LOCAL)
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"RouterSettings(private={self.private!r}, routes={self.routes!r})"


def load_router_settings(path: Path | None = None) -> RouterSettings:
    """Settings from ``path`` (default: ``router.toml`` in the config directory, if it exists).
    Raises ``SettingsError`` naming the file and the problem."""
    return load_toml(path or config_dir() / CONFIG_FILE, RouterSettings, {})
