"""Finding workers: each worker announces its offer socket in the BitTorrent DHT under an
info-hash derived from each model id it serves; a requester that knows a model id and one DHT
node looks the hash up, asks every endpoint found for its signed offer, and keeps the offers whose
signature checks and that serve the model. Nothing but the signature is trusted: the DHT says only
where to ask."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import zmq

from swarm.jobs import transport
from swarm.jobs.offers import OfferError, SignedOffer, verify_offer

if TYPE_CHECKING:
    from swarm.torrent import SwarmNode

SALT = b"hearth/jobs/1/"
#: DHT nodes drop announces after 30 minutes or so; re-announce well inside that.
REANNOUNCE_SECONDS = 600.0
OFFER_TIMEOUT = 3.0


def model_infohash(model_id: str) -> bytes:
    """The 20-byte DHT key under which workers serving ``model_id`` announce themselves."""
    return hashlib.sha1(SALT + model_id.encode()).digest()


def announce(node: SwarmNode, models: list[str], offer_port: int) -> None:
    for model in models:
        node.dht_announce(model_infohash(model), offer_port)


def find_endpoints(node: SwarmNode, model_id: str, timeout: float = 20.0) -> list[str]:
    return sorted({f"{host}:{port}" for host, port in
                   node.dht_get_peers(model_infohash(model_id), timeout)})


def fetch_offers(endpoints: list[str], requester: str, model_id: str | None = None,
                 timeout: float = OFFER_TIMEOUT) -> list[SignedOffer]:
    """Ask each offer socket for its signed offer, in parallel; keep those that verify (and
    serve ``model_id`` when given). Endpoints that do not answer are skipped."""
    ctx = zmq.Context()
    try:
        def one(endpoint: str) -> SignedOffer | None:
            signed = transport.fetch_offer(ctx, endpoint, requester, timeout)
            if signed is None:
                return None
            try:
                offer = verify_offer(signed)
            except OfferError:
                return None
            return signed if model_id is None or model_id in offer.models else None
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(endpoints)))) as pool:
            found = list(pool.map(one, endpoints))
    finally:
        ctx.destroy(0)
    return [s for s in found if s is not None]
