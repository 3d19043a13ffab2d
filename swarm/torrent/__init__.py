"""BitTorrent: the libtorrent session, seeding, fetching and DHT items."""

from swarm.node import (  # noqa: F401
    FetchInterrupted, FetchProgress, FetchResult, FetchStalled, Seeded, SwarmError, SwarmNode,
    session_settings,
)
