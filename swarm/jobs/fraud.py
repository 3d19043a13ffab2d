"""Fraud records: a requester's signed statement that a worker's claim failed re-scoring.

The record carries the evidence (the request, the claimed completion, where and why re-scoring
disagreed), so anyone holding the same model can re-check it; it is signed by the requester so it
cannot be forged in someone else's name. The requester keeps it and refuses the worker from then on.

When the requester has no copy of the model, other workers re-score the claim, and one worker's
rejection convicts nobody: a second checker must reject the claim too. The record then carries
both checkers' verdicts (``checks``). ``checks`` is left out of the encoding when empty, so a
record signed before it existed still verifies.
"""

from __future__ import annotations

import msgspec

from common.identity import Identity, verify_signature
from swarm.jobs.backend import Completion, Verdict, WorkItem

DOMAIN = b"hearth-fraud-v1\x00"


class CheckerVerdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One checking worker's verdict on the claim: the first request it found wrong."""
    checker: str  # the checking worker's ed25519 public key, hex
    custom_id: str
    verdict: Verdict


class FraudRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    requester: str
    worker: str
    job: str
    shard: int
    model: str
    skin: str | None
    item: WorkItem | None  # None when the result did not even match the shard's requests
    claim: Completion | None
    first_mismatch: int | None
    reason: str
    created: int
    #: The checkers' verdicts when workers re-scored the claim (the first rejection and the
    #: second checker's confirmation); empty when the requester re-scored it itself.
    checks: list[CheckerVerdict] = []


class SignedFraud(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    record: FraudRecord
    signature: str


def sign_fraud(record: FraudRecord, identity: Identity) -> SignedFraud:
    data = DOMAIN + msgspec.msgpack.encode(record)
    return SignedFraud(record, identity.sign(data).hex())


def verify_fraud(signed: SignedFraud) -> bool:
    data = DOMAIN + msgspec.msgpack.encode(signed.record)
    return verify_signature(bytes.fromhex(signed.record.requester), data,
                            bytes.fromhex(signed.signature))
