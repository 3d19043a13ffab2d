"""What the node reports about itself, as numbers only: putting them in words is up to the reader."""

from __future__ import annotations

from dataclasses import dataclass

import libtorrent as lt

from swarm.content import ContentRef
from swarm.torrent.torrents import Torrent


@dataclass(frozen=True)
class SeedStatus:
    """One torrent this node seeds."""

    ref: ContentRef
    #: Share of the content on disk and checked, 0.0 to 1.0.
    progress: float
    peers: int
    #: Payload bytes per second sent for this torrent.
    upload_rate: int
    #: Whether the seeding policy has cut this torrent's upload to a trickle (its peers
    #: together hold every piece).
    stepped_back: bool


@dataclass(frozen=True)
class SwarmStatus:
    """The node as of its last tick (about once a second)."""

    running: bool
    #: Peers connected over all torrents.
    peers: int = 0
    #: Payload bytes per second over all torrents.
    upload_rate: int = 0
    download_rate: int = 0
    #: Downloads under way.
    fetching: int = 0
    seeded: tuple[SeedStatus, ...] = ()
    #: Nodes in the DHT routing table.
    dht_nodes: int = 0


@dataclass(frozen=True)
class TorrentStats:
    """Counters for one torrent since it was added, for tests and tools."""

    hash_failures: int
    banned: tuple[str, ...]
    #: Payload bytes.
    uploaded: int
    downloaded: int
    peers: int
    seeding: bool


def torrent_stats(t: Torrent) -> TorrentStats:
    st = t.handle.status()
    return TorrentStats(t.hash_failures, tuple(t.banned), st.total_payload_upload,
                        st.total_payload_download, st.num_peers, st.is_seeding)


#: The status of a node that is not running.
OFFLINE = SwarmStatus(running=False)


def snapshot(live: list[tuple[Torrent, lt.torrent_status]], dht_nodes: int) -> SwarmStatus:
    seeded = []
    for t, st in live:
        ref = ContentRef.from_name(t.name)
        if t.role == "seed" and ref is not None:
            seeded.append(SeedStatus(ref, float(st.progress), st.num_peers,
                                     st.upload_payload_rate, t.stepped_back))
    return SwarmStatus(
        running=True,
        peers=sum(st.num_peers for _, st in live),
        upload_rate=sum(st.upload_payload_rate for _, st in live),
        download_rate=sum(st.download_payload_rate for _, st in live),
        fetching=sum(t.role == "fetch" for t, _ in live),
        seeded=tuple(seeded),
        dht_nodes=dht_nodes,
    )
