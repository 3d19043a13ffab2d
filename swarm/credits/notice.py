"""Settlement notices: how a worker or creator learns that a payer settled their receipts.

The payer's ledger knows which transaction paid which receipts; an earner's does not. A notice
carries the settlement transaction's bytes and the ids of the receipts it paid. The earner
trusts nothing in it that it cannot check: the transaction's signatures verify, the chain
reports that signature executed, its memo is the BLAKE3 of exactly those receipt ids, its payer
is the requester of every receipt the earner holds among them, and its transfers into the
earner's gold account add up to at least what those receipts owe the earner. Only then are the
receipts marked settled in the earner's ledger.
"""

from __future__ import annotations

import msgspec
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.token.constants import TOKEN_PROGRAM_ID

from swarm.credits.chain import ChainClient, pubkey_of
from swarm.credits.ledger import Ledger, entries_for
from swarm.credits.settle import batch_memo

_TRANSFER = 3  # the SPL Token program's Transfer instruction


class NoticeError(ValueError):
    """A notice that does not prove what it claims."""


class SettlementNotice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    signature: str
    tx: bytes
    receipts: list[str]


def notices_from(ledger: Ledger) -> list[SettlementNotice]:
    """Notices for every settlement this ledger's owner paid."""
    return [SettlementNotice(batch.signature, batch.tx, ids)
            for batch, ids in ledger.settled_batches()]


def _memo_and_transfers(tx: Transaction) -> tuple[str | None, list[tuple[Pubkey, int]]]:
    msg = tx.message
    keys = msg.account_keys
    memo, transfers = None, []
    for ix in msg.instructions:
        program = keys[ix.program_id_index]
        data = bytes(ix.data)
        if program == MEMO_PROGRAM_ID:
            memo = data.decode("utf-8", "replace")
        elif program == TOKEN_PROGRAM_ID and data[:1] == bytes([_TRANSFER]) and len(data) == 9:
            transfers.append((keys[ix.accounts[1]], int.from_bytes(data[1:9], "little")))
    return memo, transfers


def apply_notice(ledger: Ledger, client: ChainClient, notice: SettlementNotice) -> int:
    """Check a notice against the chain and mark the receipts it paid that this ledger holds
    as settled. Returns how many were newly marked. Raises NoticeError."""
    try:
        tx = Transaction.from_bytes(notice.tx)
    except Exception as e:  # solders raises its own types for malformed bytes
        raise NoticeError(f"notice {notice.signature[:12]}…: not a transaction ({e})") from None
    if str(tx.signatures[0]) != notice.signature or not all(tx.verify_with_results()):
        raise NoticeError(f"notice {notice.signature[:12]}…: the transaction's signatures do "
                          f"not verify")
    memo, transfers = _memo_and_transfers(tx)
    if memo != batch_memo(notice.receipts):
        raise NoticeError(f"notice {notice.signature[:12]}…: its memo does not name these "
                          f"receipts")
    if client.statuses([notice.signature]) != ["ok"]:
        raise NoticeError(f"notice {notice.signature[:12]}…: the chain has no such settlement")
    payer = bytes(tx.message.account_keys[0]).hex()
    held = {rid: item for rid, item in zip(
        notice.receipts, ledger.receipts_by_id(notice.receipts), strict=True) if item}
    owed = 0
    for rid, (receipt, split) in held.items():
        if receipt.body.requester != payer:
            raise NoticeError(f"notice {notice.signature[:12]}…: receipt {rid[:12]}… is not "
                              f"the payer's to settle")
        owed += sum(e.amount for e in entries_for(receipt, split) if e.account == ledger.owner)
    mine = client.gold().account_of(pubkey_of(ledger.owner))
    paid = sum(amount for dest, amount in transfers if dest == mine)
    if paid < owed:
        raise NoticeError(f"notice {notice.signature[:12]}…: it pays {paid} micro-gold where "
                          f"the receipts owe {owed}")
    return ledger.record_paid(notice.signature, notice.tx, memo, list(held))
