"""The swarm node: one libtorrent session on its own thread, behind a synchronous facade.

The facade's methods block the caller, never the session thread, and every wait has a deadline.
Each concern lives in a module of its own: the session thread (``session``), seeding and its
upload policy (``seeding``), fetching (``fetch``), the DHT (``dht``) and the status (``status``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import libtorrent as lt

from swarm.content import Content, ContentRef, Verifier
from swarm.index import INDEX_SALT, SignedItem
from swarm.settings import SwarmSettings
from swarm.torrent import dht, seeding
from swarm.torrent.fetch import Fetch, FetchProgress, FetchResult
from swarm.torrent.seeding import Seeded, SeedingPolicy
from swarm.torrent.session import Session
from swarm.torrent.status import OFFLINE, SwarmStatus, TorrentStats, snapshot, torrent_stats


class SwarmNode:
    """A Hearth swarm node. ``state_dir`` keeps its torrents' resume data and torrent files."""

    def __init__(self, settings: SwarmSettings, state_dir: Path | str):
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.session = Session(settings, on_tick=self._tick)
        self._policy = SeedingPolicy(settings)
        #: Written by the session thread on every tick; replaced whole, so readers need no lock.
        self._status = SwarmStatus(running=True)

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> SwarmNode:
        for sub in ("resume", "torrents", "partial"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.session.start(timeout)
        return self

    def close(self, timeout: float = 20.0) -> None:
        """Save every torrent's resume data and shut the session down."""
        self.session.close(timeout)

    @property
    def running(self) -> bool:
        return self.session.running

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` where other nodes on this machine reach this one."""
        host = self.settings.listen_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{host}:{self.session.port}"

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> SwarmStatus:
        """Peers, rates, what is seeded and fetched, as of the last tick."""
        return self._status if self.running else OFFLINE

    def torrent_stats(self, ref: ContentRef) -> TorrentStats | None:
        """Counters for one torrent (None if the node does not have it)."""
        def get(ses):
            t = self.session.torrents.named(ref.torrent_name)
            return torrent_stats(t) if t is not None else None
        return self.session.call(get)

    def _tick(self, ses: lt.session) -> None:
        live = self.session.torrents.live()
        self._policy.apply(ses, live)
        self._status = snapshot(live, self.session.dht_nodes)

    # ---- content ------------------------------------------------------------------------------

    def seed(self, content: Content) -> Seeded:
        """Start seeding ``content`` (see :func:`swarm.torrent.seeding.seed`)."""
        return seeding.seed(self.session, self.state_dir, content)

    def fetch(self, magnet: str, dest: Path | str, *, verifiers: dict[str, Verifier] | None = None,
              max_bytes: dict[str, int] | None = None, peers: list[str] = (),
              timeout: float | None = None,
              progress: Callable[[FetchProgress], None] | None = None,
              keep_seeding: bool = False) -> FetchResult:
        """Download ``magnet`` into ``dest/<torrent name>`` (see :mod:`swarm.torrent.fetch`).
        Content that fails verification is deleted and a ContentError names what failed. An
        interrupted fetch continues where it stopped the next time. With ``keep_seeding`` the
        torrent stays in the swarm throughout and goes on seeding from its final place."""
        return Fetch(self.session, self._policy, self.state_dir, magnet, dest,
                     verifiers=verifiers, max_bytes=max_bytes, peers=peers, timeout=timeout,
                     progress=progress, keep_seeding=keep_seeding).run()

    # ---- the DHT ------------------------------------------------------------------------------

    def dht_node_count(self) -> int:
        return dht.node_count(self.session)

    def put_item(self, seed: bytes, value: bytes, salt: bytes = INDEX_SALT,
                 timeout: float = dht.DHT_ITEM_TIMEOUT) -> tuple[int, int]:
        """Sign and store a BEP44 item (see :func:`swarm.torrent.dht.put_item`)."""
        return dht.put_item(self.session, seed, value, salt, timeout)

    def get_item(self, public_key: bytes, salt: bytes = INDEX_SALT,
                 timeout: float = dht.DHT_ITEM_TIMEOUT, settle: float = 3.0) -> SignedItem | None:
        """The newest BEP44 item under a key (see :func:`swarm.torrent.dht.get_item`)."""
        return dht.get_item(self.session, public_key, salt, timeout, settle)

    def dht_announce(self, info_hash: bytes, port: int) -> None:
        """Announce this node as serving ``info_hash`` on TCP ``port`` (see
        :func:`swarm.torrent.dht.announce`)."""
        dht.announce(self.session, info_hash, port)

    def dht_get_peers(self, info_hash: bytes,
                      timeout: float = dht.DHT_ITEM_TIMEOUT) -> list[tuple[str, int]]:
        """Endpoints announced under ``info_hash`` (see :func:`swarm.torrent.dht.get_peers`)."""
        return dht.get_peers(self.session, info_hash, timeout)
