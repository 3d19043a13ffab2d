"""Receipts: one per accepted shard, signed by the requester and the worker.

A receipt is what the credits ledger settles, so its bytes must mean the same thing to everyone:
the body is encoded canonically (msgspec JSON, fields in declaration order) and each party signs
``DOMAIN + body``. Its id is the BLAKE3 of those body bytes, so the same work yields the same id
however often it is sent, and settling is idempotent on it.

Amounts are integers in micro-gold (``UNITS_PER_GOLD`` per gold credit): the price is quoted per
1,000 tokens (prompt and generated alike) and the amount is rounded up to a whole unit.
"""

from __future__ import annotations

import blake3
import msgspec

from common.identity import Identity, verify_signature

DOMAIN = b"hearth-receipt-v1\x00"
UNITS_PER_GOLD = 1_000_000
MAX_AMOUNT = 2**63 - 1  # what an SPL token amount (u64) and SQLite's INTEGER both hold


class ReceiptError(ValueError):
    """A receipt that cannot be accepted (bad signature, wrong amount, bad field)."""


class ReceiptBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job: str  # the job id (hex)
    shard: int
    requester: str  # ed25519 public key, hex
    worker: str  # ed25519 public key, hex
    model: str  # BLAKE3 of the model file served, hex
    skin: str | None  # skin id worn, or None
    tokens_in: int
    tokens_out: int
    price_per_1k: int  # micro-gold per 1,000 tokens
    amount: int  # micro-gold the worker earns for this shard (royalties are paid out of it)


class Receipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body: ReceiptBody
    requester_sig: str  # hex, over DOMAIN + canonical body bytes
    worker_sig: str


def amount_for(tokens_in: int, tokens_out: int, price_per_1k: int) -> int:
    """What a shard costs: tokens × price per 1,000, rounded up to a whole micro-gold unit."""
    if min(tokens_in, tokens_out, price_per_1k) < 0:
        raise ReceiptError("token counts and prices cannot be negative")
    return -(-(tokens_in + tokens_out) * price_per_1k // 1000)


def check_tokens(claims) -> int:
    """What re-scoring ``claims`` (``Completion``s) takes a checker, counted as tokens in: their
    prompts (as claimed, never below 0) and claimed tokens. The requester, the checker and the
    checker's escrow check all count a check this way."""
    return sum(max(c.prompt_tokens, 0) + len(c.tokens) for c in claims)


def body_bytes(body: ReceiptBody) -> bytes:
    return msgspec.json.encode(body)


def receipt_id(body: ReceiptBody) -> str:
    return blake3.blake3(body_bytes(body)).hexdigest()


def sign_body(body: ReceiptBody, identity: Identity) -> str:
    return identity.sign(DOMAIN + body_bytes(body)).hex()


def check_body(body: ReceiptBody) -> None:
    """The body's own consistency: hex keys, sane counts, the amount its price gives."""
    for name in ("job", "requester", "worker", "model"):
        value = getattr(body, name)
        if len(value) != 64 or not _is_hex(value):
            raise ReceiptError(f"receipt {name} {value!r} is not 64 hex digits")
    if body.skin is not None and (len(body.skin) != 64 or not _is_hex(body.skin)):
        raise ReceiptError(f"receipt skin {body.skin!r} is not a skin id")
    if body.requester == body.worker:
        raise ReceiptError("a receipt's requester and worker must differ")
    if body.shard < 0:
        raise ReceiptError(f"receipt shard {body.shard} is negative")
    expected = amount_for(body.tokens_in, body.tokens_out, body.price_per_1k)
    if body.amount != expected:
        raise ReceiptError(f"receipt amount {body.amount} is not what its tokens and price give "
                           f"({expected})")
    if not 0 <= body.amount <= MAX_AMOUNT:
        raise ReceiptError(f"receipt amount {body.amount} is out of range")


def verify_receipt(receipt: Receipt) -> str:
    """Check the body and both signatures; return the receipt id. Raises ReceiptError."""
    check_body(receipt.body)
    data = DOMAIN + body_bytes(receipt.body)
    for who, key, sig in (("requester", receipt.body.requester, receipt.requester_sig),
                          ("worker", receipt.body.worker, receipt.worker_sig)):
        try:
            sig_bytes = bytes.fromhex(sig)
        except ValueError:
            raise ReceiptError(f"the {who}'s signature is not hex") from None
        if not verify_signature(bytes.fromhex(key), data, sig_bytes):
            raise ReceiptError(f"the {who}'s signature does not verify")
    return receipt_id(receipt.body)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text == text.lower()
