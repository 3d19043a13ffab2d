"""A worker's signed offer: what it serves, at what price, and where to reach it.

The offer is signed under the worker's ed25519 identity (``DOMAIN + canonical msgpack bytes``), and
its CURVE transport key must be the one that identity derives, so a requester that checks the
signature knows it is encrypting to the key's owner and nobody else.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from common.identity import Identity, curve_public_from_ed25519, verify_signature

DOMAIN = b"hearth-offer-v1\x00"
Hex64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
#: An offer older than this is stale: the worker may have moved or changed its price.
MAX_AGE_SECONDS = 24 * 3600


class OfferError(ValueError):
    """An offer that cannot be trusted (bad signature, wrong key, stale)."""


class Offer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    worker: Hex64  # ed25519 public key
    models: Annotated[list[Hex64], msgspec.Meta(max_length=64)]
    skins: Annotated[list[Hex64], msgspec.Meta(max_length=1024)]
    price_per_1k: Annotated[int, msgspec.Meta(ge=0, le=2**40)]  # micro-gold per 1,000 tokens
    capacity: Annotated[int, msgspec.Meta(ge=1, le=4096)]  # requests it decodes at once
    endpoint: Annotated[str, msgspec.Meta(max_length=300)]  # HOST:PORT of the CURVE jobs socket
    curve_key: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]  # hex
    issued: int  # unix seconds
    #: The worker fetches (over the swarm) a skin it lacks when an assignment names its magnet.
    #: Left out of the signed bytes when false, so an offer without it reads and signs as before.
    fetch_skins: bool = False


class SignedOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    offer: Offer
    signature: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]


def offer_bytes(offer: Offer) -> bytes:
    return msgspec.msgpack.encode(offer)


def sign_offer(offer: Offer, identity: Identity) -> SignedOffer:
    if offer.worker != identity.public_hex:
        raise OfferError("an offer is signed by the worker it names")
    return SignedOffer(offer, identity.sign(DOMAIN + offer_bytes(offer)).hex())


def verify_offer(signed: SignedOffer, now: float | None = None) -> Offer:
    """The offer if its signature and transport key are its worker's and it is fresh."""
    offer = signed.offer
    key = bytes.fromhex(offer.worker)
    if not verify_signature(key, DOMAIN + offer_bytes(offer), bytes.fromhex(signed.signature)):
        raise OfferError(f"offer from {offer.worker[:12]}: the signature does not verify")
    if curve_public_from_ed25519(key).hex() != offer.curve_key:
        raise OfferError(f"offer from {offer.worker[:12]}: the transport key is not the worker's")
    age = (time.time() if now is None else now) - offer.issued
    if not -300 <= age <= MAX_AGE_SECONDS:
        raise OfferError(f"offer from {offer.worker[:12]} is stale or from the future")
    return offer
