"""The worker's side of escrow: it checks on chain the escrow a requester names before working,
and co-signs only transactions that move that escrow's gold the way the receipts it holds say.

- **Before a shard or a check** (``check_assign``): the named account is a gold token account
  owned by a 2-of-2 multisig of exactly this requester and this worker
  (``escrow.verify_escrow``), it holds at least the amount the requester says it locked, and
  enough for what this worker already served and checked in the job plus the most this shard
  can earn for its generated tokens alone (``max_tokens`` at the agreed price: the prompt's size
  in tokens is the worker's to count), or what this check earns (the claims' prompt and claimed
  tokens at the worker's price).
- **A release** (``cosign_release``): it pays receipts this worker holds for that job and
  requester, none of them paid by an earlier release that landed, and is exactly what they are
  worth (``escrow.check_release``). The whole signed transaction is stored before the signature
  goes back, so the worker knows what it signed after any restart.
- **The refund** (``cosign_refund``): signed only once every receipt this worker holds for the
  job has been paid by a release the chain executed — the worker's one lever, since the escrow
  cannot tell served work from anything else. An escrow the worker never checked (it refused the
  shard) holds nothing it is owed, so its refund is signed on the same rule.

Every chain read happens on the worker's network thread (the chain client is not thread-safe);
each is a local round trip on the embedded chain.
"""

from __future__ import annotations

from solders.message import Message
from solders.signature import Signature

from common.identity import Identity
from swarm.credits.chain import ChainClient, ChainError, keypair_for, pubkey_of
from swarm.credits.escrow import (
    Escrow, EscrowError, assemble, check_refund, check_release, sign, verify_escrow,
)
from swarm.credits.ledger import Ledger
from swarm.credits.notice import NoticeError, SettlementNotice, apply_notice
from swarm.jobs import protocol as p
from swarm.jobs.receipt import amount_for, check_tokens, receipt_id
from swarm.jobs.worker_store import EscrowRow, Release, WorkerStore


class WorkerEscrow:
    """One worker's escrow checks and signatures, on ``client``'s chain, kept in ``store``."""

    def __init__(self, client: ChainClient, identity: Identity, store: WorkerStore):
        self.client = client
        self.keypair = keypair_for(identity)
        self.me = identity.public_hex
        self.store = store

    def _escrow(self, requester: str, multisig: str, account: str) -> Escrow:
        return Escrow(pubkey_of(requester), self.keypair.pubkey(), pubkey_of(multisig),
                      pubkey_of(account))

    def check_assign(self, msg: p.Assign | p.Rescore, price_per_1k: int = 0) -> str | None:
        """Why the escrow an assignment (or a check, at ``price_per_1k``) names is not good
        enough to work for; None if it is."""
        terms = msg.escrow
        known = self.store.escrow(terms.account)
        if known is not None and (known.job, known.requester) != (msg.job, msg.requester):
            return "that escrow was named for another job"
        try:
            held = verify_escrow(self.client, self._escrow(msg.requester, terms.multisig,
                                                           terms.account))
        except (EscrowError, ChainError) as e:
            return str(e)
        if isinstance(msg, p.Rescore):
            this = amount_for(check_tokens(msg.claims), 0, price_per_1k)
        else:
            this = amount_for(0, sum(it.max_tokens for it in msg.items), msg.price_per_1k)
        needed = (self.store.served_amount(msg.job, msg.requester)
                  + self.store.checked_amount(msg.job, msg.requester) + this)
        if held < max(terms.amount, needed):
            return (f"the escrow holds {held} micro-gold, less than "
                    f"{'it is said to' if held < terms.amount else 'this work can earn'} "
                    f"({max(terms.amount, needed)})")
        self.store.add_escrow(EscrowRow(terms.account, msg.job, msg.requester, terms.multisig))
        return None

    def cosign_release(self, msg: p.CosignRelease) -> p.Msg:
        try:
            row, escrow, message, theirs = self._request(msg)
            receipts = self.store.receipts_by_id(msg.receipts)
            for rid, receipt in zip(msg.receipts, receipts, strict=True):
                if receipt is None or (receipt.body.job, receipt.body.requester,
                                       receipt.body.worker) != (row.job, row.requester, self.me):
                    raise EscrowError(f"receipt {rid[:12]}… is not one this worker holds for "
                                      f"the escrow's job")
            paid = self._paid(msg.account) & set(msg.receipts)
            if paid:
                raise EscrowError(f"receipt {sorted(paid)[0][:12]}… was already paid from this "
                                  f"escrow")
            check_release(self.client.gold(), message, theirs, escrow, receipts)
            mine = sign(message, self.keypair)
            tx = assemble(message, {escrow.requester: theirs, escrow.worker: mine})
            self.store.add_release(Release(str(tx.signatures[0]), msg.account, bytes(tx),
                                           [receipt_id(r.body) for r in receipts]))
        except (EscrowError, ChainError) as e:
            return p.Error(code=p.ESCROW, message=str(e)[:p.MAX_TEXT], job=msg.job)
        return p.Cosigned(job=msg.job, account=msg.account, signature=bytes(mine).hex())

    def cosign_refund(self, msg: p.CosignRefund) -> p.Msg:
        try:
            known = self.store.escrow(msg.account)
            if known is not None and (known.job, known.requester, known.multisig) != (
                    msg.job, msg.requester, msg.multisig):
                raise EscrowError("that escrow was named for another job")
            escrow = self._escrow(msg.requester, msg.multisig, msg.account)
            message, theirs = _decode(msg)
            held = {receipt_id(r.body) for r in self.store.job_receipts(msg.job, msg.requester)}
            unpaid = held - self._paid(msg.account)
            if unpaid:
                raise EscrowError(f"{len(unpaid)} receipt(s) held for this job are not paid yet")
            check_refund(self.client.gold(), message, theirs, escrow)
            mine = sign(message, self.keypair)
        except (EscrowError, ChainError) as e:
            return p.Error(code=p.ESCROW, message=str(e)[:p.MAX_TEXT], job=msg.job)
        return p.Cosigned(job=msg.job, account=msg.account, signature=bytes(mine).hex())

    def _request(self, msg: p.CosignRelease):
        row = self.store.escrow(msg.account)
        if row is None or row.job != msg.job:
            raise EscrowError("no escrow of this job was checked here")
        message, theirs = _decode(msg)
        return row, self._escrow(row.requester, row.multisig, row.account), message, theirs

    def _paid(self, account: str) -> set[str]:
        """Receipts paid by releases of this escrow that the chain executed."""
        releases = self.store.releases(account)
        if not releases:
            return set()
        statuses = self.client.statuses([r.signature for r in releases])
        return {rid for r, s in zip(releases, statuses, strict=True) if s == "ok"
                for rid in r.receipts}


def _decode(msg: p.CosignRelease | p.CosignRefund) -> tuple[Message, Signature]:
    try:
        return Message.from_bytes(msg.message), Signature.from_bytes(
            bytes.fromhex(msg.requester_sig))
    except Exception as e:  # solders raises its own types for malformed bytes
        raise EscrowError(f"not a transaction message ({e})") from None


def settle_released(ledger: Ledger, client: ChainClient, store: WorkerStore) -> int:
    """Mark settled, in the worker's own ledger, the receipts paid by releases it co-signed that
    the chain executed (each checked as a settlement notice is). Returns how many were newly
    marked; a release that never landed is skipped."""
    marked = 0
    for release in store.releases():
        try:
            marked += apply_notice(ledger, client, SettlementNotice(
                release.signature, release.tx, release.receipts))
        except NoticeError:
            continue
    return marked
