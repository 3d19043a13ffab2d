"""The jobs wire protocol: one tagged msgspec union per direction, msgpack-encoded.

``ToWorker`` is what a requester sends (to the offer socket: ``Hello``; to the jobs socket:
``Assign``, ``Rescore``, ``Cancel``, ``SignReceipt``, ``CosignRelease``, ``CosignRefund``);
``ToRequester`` is what a worker answers. Messages only ever gain fields at their end, with
defaults; ``Assign`` leaves its ``escrow`` (and its skin's magnet link and peers) out of the
encoding when there is none, and so does ``Rescore``, so a worker that predates escrow still
reads an unescrowed assignment or check. Every frame is
size-checked before it is decoded, and decoding checks types, lengths and ranges, so a hostile frame
costs one ``ProtocolError`` and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from swarm.jobs.backend import Completion, Verdict, WorkItem
from swarm.jobs.offers import Hex64, SignedOffer
from swarm.jobs.receipt import Receipt, ReceiptBody

#: The largest frame either side decodes (a shard of long prompts fits with room to spare).
MAX_FRAME_BYTES = 4 << 20
#: The offer socket answers only hellos: anything bigger is not one.
MAX_HELLO_BYTES = 1024
MAX_SHARD_ITEMS = 1024
MAX_TEXT = 1000

Shard = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
#: A skin bundle's magnet link, and the BitTorrent peers (HOST:PORT) an assignment names for it.
MagnetLink = Annotated[str, msgspec.Meta(max_length=2000, pattern="^magnet:\\?")]
PeerEndpoint = Annotated[str, msgspec.Meta(max_length=300)]
MAX_SKIN_PEERS = 8


class ProtocolError(ValueError):
    """A frame that is too big or is not a message of its channel."""


class Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="t"):
    pass


# ---- requester -> worker -------------------------------------------------------------------------

class Hello(Msg, tag="hello"):
    requester: Hex64


class EscrowTerms(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the requester locked gold for this worker (Solana addresses as 64 hex digits): the
    escrow's gold token account and the 2-of-2 multisig that owns it, and how much it says is
    locked there. The worker checks all of it on chain before working."""
    account: Hex64
    multisig: Hex64
    amount: Count


class Assign(Msg, tag="assign", omit_defaults=True):
    job: Hex64
    shard: Shard
    requester: Hex64
    model: Hex64
    skin: Hex64 | None
    price_per_1k: Count
    items: Annotated[list[WorkItem], msgspec.Meta(min_length=1, max_length=MAX_SHARD_ITEMS)]
    escrow: EscrowTerms | None = None
    #: Where a worker without ``skin`` fetches it: the bundle torrent's magnet link, and peers
    #: that seed it (the requester's own node first). Without a magnet, only a worker that has
    #: the skin installed can take the shard.
    skin_magnet: MagnetLink | None = None
    skin_peers: Annotated[list[PeerEndpoint], msgspec.Meta(max_length=MAX_SKIN_PEERS)] = []


class Rescore(Msg, tag="rescore", omit_defaults=True):
    """Check another worker's claims for a shard (for a requester without the model). The check
    is paid like a shard; ``escrow`` (left out of the encoding when there is none) names where
    the requester locked gold for this worker; a checker without ``skin`` fetches it from
    ``skin_magnet`` as a shard's worker does (both left out when there is none)."""
    job: Hex64
    shard: Shard
    requester: Hex64
    model: Hex64
    skin: Hex64 | None
    items: Annotated[list[WorkItem], msgspec.Meta(min_length=1, max_length=MAX_SHARD_ITEMS)]
    claims: Annotated[list[Completion], msgspec.Meta(min_length=1, max_length=MAX_SHARD_ITEMS)]
    escrow: EscrowTerms | None = None
    skin_magnet: MagnetLink | None = None
    skin_peers: Annotated[list[PeerEndpoint], msgspec.Meta(max_length=MAX_SKIN_PEERS)] = []


class Cancel(Msg, tag="cancel"):
    job: Hex64
    shard: Shard


class SignReceipt(Msg, tag="sign"):
    body: ReceiptBody
    requester_sig: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]


#: A serialized Solana transaction message (a transaction fits Solana's 1,232-byte packet).
TxMessage = Annotated[bytes, msgspec.Meta(min_length=1, max_length=1232)]
Sig = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{128}$")]


class CosignRelease(Msg, tag="cosign_release"):
    """Co-sign this payment out of the escrow for these receipts (the worker holds them)."""
    job: Hex64
    account: Hex64  # the escrow's token account
    message: TxMessage
    requester_sig: Sig
    receipts: Annotated[list[Hex64], msgspec.Meta(min_length=1, max_length=MAX_SHARD_ITEMS)]


class CosignRefund(Msg, tag="cosign_refund"):
    """Co-sign returning what is left in the escrow to the requester and closing it (the
    escrow named in full: a worker that refused the shard never stored it)."""
    job: Hex64
    account: Hex64
    message: TxMessage
    requester_sig: Sig
    requester: Hex64
    multisig: Hex64


ToWorker = Union[Hello, Assign, Rescore, Cancel, SignReceipt, CosignRelease, CosignRefund]


# ---- worker -> requester -------------------------------------------------------------------------

class OfferReply(Msg, tag="offer"):
    signed: SignedOffer


class Accepted(Msg, tag="accepted"):
    job: Hex64
    shard: Shard


class Heartbeat(Msg, tag="heartbeat"):
    job: Hex64
    shard: Shard
    done: Count  # items finished so far
    paused: bool = False


class Result(Msg, tag="result"):
    job: Hex64
    shard: Shard
    completions: Annotated[list[Completion], msgspec.Meta(max_length=MAX_SHARD_ITEMS)]


class Rescored(Msg, tag="rescored"):
    """A ``Rescore``'s answer: one verdict per item, in the order asked."""
    job: Hex64
    shard: Shard
    verdicts: Annotated[list[Verdict], msgspec.Meta(max_length=MAX_SHARD_ITEMS)]


class ShardReleased(Msg, tag="released"):
    """The worker was paused too long and gives the shard back unfinished (no receipt)."""
    job: Hex64
    shard: Shard


class Countersigned(Msg, tag="countersigned"):
    receipt: Receipt


class Cosigned(Msg, tag="cosigned"):
    """The worker's signature over a ``CosignRelease`` or ``CosignRefund`` message."""
    job: Hex64
    account: Hex64
    signature: Sig


class Error(Msg, tag="error"):
    code: Text  # see ERROR_CODES
    message: Text
    job: Hex64 | None = None
    shard: Shard | None = None


ToRequester = Union[OfferReply, Accepted, Heartbeat, Result, Rescored, ShardReleased,
                    Countersigned, Cosigned, Error]

#: Error codes a worker sends.
MALFORMED = "malformed"
BUSY = "busy"
PAUSED = "paused"  # the worker's owner is back: no new shards for now
UNSERVED = "unserved"  # a model or skin the worker does not serve, or a price below its offer
BAD_RECEIPT = "bad_receipt"
FAILED = "failed"  # the backend failed on the shard
UNESCROWED = "unescrowed"  # the worker works only for gold locked in escrow (require_escrow)
ESCROW = "escrow"  # an escrow or an escrow transaction the worker checked and refuses
#: The shard's skin is not installed and the worker did not get it: it does not fetch skins, or
#: the fetch failed, was too big, or the bundle did not verify (nothing was installed).
SKIN = "skin"

_enc = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_to_requester = msgspec.msgpack.Decoder(ToRequester)


def encode(msg: Msg) -> bytes:
    return _enc.encode(msg)


def decode_to_worker(frame: bytes, limit: int = MAX_FRAME_BYTES) -> ToWorker:
    return _decode(_to_worker, frame, limit)


def decode_to_requester(frame: bytes, limit: int = MAX_FRAME_BYTES) -> ToRequester:
    return _decode(_to_requester, frame, limit)


def _decode(decoder: msgspec.msgpack.Decoder, frame: bytes, limit: int):
    if len(frame) > limit:
        raise ProtocolError(f"frame of {len(frame)} bytes is over the {limit}-byte limit")
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"not a message: {e}"[:MAX_TEXT]) from None
