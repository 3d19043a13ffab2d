"""BitTorrent: the libtorrent session, seeding, fetching and DHT items."""

from swarm.torrent.errors import FetchInterrupted, FetchStalled, SwarmError
from swarm.torrent.fetch import FetchProgress, FetchResult
from swarm.torrent.node import SwarmNode
from swarm.torrent.seeding import Seeded
from swarm.torrent.session import session_settings
from swarm.torrent.status import SeedStatus, SwarmStatus, TorrentStats

__all__ = [
    "FetchInterrupted", "FetchProgress", "FetchResult", "FetchStalled", "SeedStatus", "Seeded",
    "SwarmError", "SwarmNode", "SwarmStatus", "TorrentStats", "session_settings",
]
