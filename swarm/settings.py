"""The swarm node's settings: one Struct, read from ``swarm.toml`` in Hearth's config directory
(``common.paths.config_dir``) and overridable on the command line.

```toml
listen = "0.0.0.0:6881"           # where peers and DHT nodes reach this node
bootstrap = ["203.0.113.5:6881"]  # DHT nodes to join through (none by default)
upload_limit = 1048576            # bytes per second, 0 = unlimited
download_limit = 0
seeding = true                    # serve the local models and skins to others
lan_discovery = false             # BitTorrent local service discovery
loopback = false                  # test mode: every peer is on 127.0.0.1
public_dht = false                # also join the public BitTorrent DHT (asked on first run)
```

A node talks only to the bootstrap nodes it is given and to the peers those lead to. The public
BitTorrent DHT's well-known routers (``PUBLIC_DHT_ROUTERS``, the ones mainstream clients use) are
added to them only when ``public_dht`` is true, which only the player sets (the window asks once;
``hearth settings set public_dht on``); it is absent, and so off, in every fresh config directory,
so tests, CI and headless runs reach nothing but the nodes they configure.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TypeVar

import msgspec

from common.paths import config_dir

CONFIG_FILE = "swarm.toml"
DEFAULT_PORT = 6881
#: The bootstrap routers of the public BitTorrent DHT that mainstream clients use.
PUBLIC_DHT_ROUTERS = (
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
)


class SettingsError(Exception):
    pass


T = TypeVar("T")


class SwarmSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: HOST:PORT to listen on for BitTorrent (TCP and uTP) and the DHT (UDP); port 0 picks one.
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    #: HOST:PORT of DHT nodes to join the network through.
    bootstrap: list[str] = []
    #: Session-wide rate limits in bytes per second (0: unlimited).
    upload_limit: int = 0
    download_limit: int = 0
    #: Serve what the local stores hold (and keep serving what was fetched).
    seeding: bool = True
    dht: bool = True
    #: Local service discovery (multicast on the LAN).
    lan_discovery: bool = False
    #: Every peer and DHT node is on this machine (tests, benchmarks): uTP off, several peers per
    #: IP allowed, the DHT's one-node-per-IP rules off, and rate limits applied to local peers.
    loopback: bool = False
    #: Give up a fetch that has made no progress for this long (seconds).
    stall_timeout: float = 120.0
    #: While connected peers together hold every piece of something this node seeds, its upload
    #: for that content drops to this fraction of ``upload_limit`` so the peers trade among
    #: themselves instead of all drawing on the one seed.
    step_back_share: float = 0.125
    #: Also join the public BitTorrent DHT through ``PUBLIC_DHT_ROUTERS`` (the player's choice;
    #: off unless set). When true, ``bootstrap`` holds those routers after the configured nodes.
    public_dht: bool = False

    def __post_init__(self) -> None:
        if self.public_dht:
            self.bootstrap = self.bootstrap + [r for r in PUBLIC_DHT_ROUTERS
                                               if r not in self.bootstrap]
        parse_endpoint(self.listen, allow_zero=True)
        for node in self.bootstrap:
            parse_endpoint(node)
        if self.upload_limit < 0 or self.download_limit < 0:
            raise SettingsError("rate limits must be zero (unlimited) or more")
        if not 0.0 <= self.step_back_share <= 1.0:
            raise SettingsError("step_back_share must be between 0 and 1")
        if self.stall_timeout <= 0:
            raise SettingsError("stall_timeout must be positive")

    @property
    def listen_host(self) -> str:
        return parse_endpoint(self.listen, allow_zero=True)[0]


_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")


def parse_endpoint(text: str, allow_zero: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port)."""
    m = _ENDPOINT.match(text.strip())
    if not m:
        raise SettingsError(f"{text!r} is not HOST:PORT")
    port = int(m["port"])
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise SettingsError(f"{text!r}: port {port} is out of range")
    return (m["v6"] or m["host"]), port


def parse_endpoints(text: str) -> list[str]:
    """A comma-separated ``HOST:PORT,...`` list, each checked."""
    out = [part.strip() for part in text.split(",") if part.strip()]
    for part in out:
        parse_endpoint(part)
    return out


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB](?:/s)?)?$")


def parse_rate(text: str) -> int:
    """A rate in bytes per second: ``0``, ``500000``, ``512K``, ``8M`` (binary multiples)."""
    m = _RATE.match(text.strip())
    if not m:
        raise SettingsError(f"{text!r} is not a rate (e.g. 0, 512K, 8M)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2].lower()]
    return int(float(m[1]) * scale)


def load_toml(path: Path, kind: type[T], overrides: dict,
              error: type[Exception] = SettingsError) -> T:
    """Settings of type ``kind`` from the TOML file ``path`` (if it exists), then ``overrides``
    (None means not given). A file that cannot be read or a bad value raises ``error`` naming
    the file."""
    raw: dict = {}
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise error(f"{path}: {e}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, kind)
    except (msgspec.ValidationError, error) as e:
        raise error(f"{path}: {e}") from None


def load_settings(path: Path | None = None, **overrides) -> SwarmSettings:
    """Settings from ``path`` (default: ``swarm.toml`` in the config directory, if it exists),
    then ``overrides`` (command-line values; None means not given)."""
    return load_toml(path or config_dir() / CONFIG_FILE, SwarmSettings, overrides)
