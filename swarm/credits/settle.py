"""Settlement: the requester's unpaid receipts become SPL transfers of gold on the chain.

Each transaction pays a batch of receipts: one transfer per recipient (the worker's share and
each creator's royalty, summed over the batch), the recipients' token accounts created when
they have none yet, and a Memo carrying the BLAKE3 of the batch's receipt ids, so anyone holding
the receipts can tell which transaction paid them. Batches are packed greedily into as few
transactions as fit Solana's 1,232-byte packet (measured on the serialized transaction: LiteSVM
does not enforce the limit, a real cluster does).

Crash safety, step by step (``on_step`` names each):

``signed``    the transaction is built and signed; nothing durable yet — a crash loses nothing.
``recorded``  the signed bytes, their signature and last valid block height are committed to the
              ledger (synchronous=FULL) with the batch's receipts claimed. From here the
              transaction may land at any moment, so these receipts are never put in another one
              while this one can still land.
``sent``      the chain has it.
``settled``   the chain reports it executed; the batch is marked settled.

Receipts of a job whose escrow for their worker is still open are left to that escrow
(``swarm/jobs/job_escrow.py``), so a receipt is never paid both from the wallet and from escrow.

On every start, open batches are resolved first: one the chain reports executed is marked
settled; one it has not seen is sent again (the same bytes, so the same signature: it can land at
most once) while its blockhash is valid; once the chain's block height passes its last valid
height it can never land, so it is marked expired and its receipts are paid in a new batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import create_idempotent_associated_token_account, transfer
from spl.token.models import TransferParams

from swarm.credits.chain import ChainClient, ChainError, Gold, pubkey_of
from swarm.credits.ledger import Ledger, RoyaltyShare, entries_for
from swarm.jobs.receipt import Receipt, receipt_id

#: Solana's packet size: the most a serialized transaction may be.
PACKET_LIMIT = 1232
MEMO_PREFIX = "hearth-settle:"

Step = Callable[[str, dict], None]


class SettleError(RuntimeError):
    """Settlement cannot go on (not enough gold, a transaction refused); the message says why."""


@dataclass
class SettleReport:
    settled_receipts: int = 0
    transactions: list[str] = field(default_factory=list)
    recovered: int = 0  # open batches found landed on start
    resent: int = 0  # open batches sent again on start
    expired: int = 0  # open batches that can never land; their receipts were paid again


def batch_memo(receipt_ids: list[str]) -> str:
    """The memo of a batch: the BLAKE3 of its receipt ids (sorted, concatenated)."""
    h = blake3.blake3()
    for rid in sorted(receipt_ids):
        h.update(bytes.fromhex(rid))
    return MEMO_PREFIX + h.hexdigest()


def payouts(batch: list[tuple[Receipt, list[RoyaltyShare]]], payer_hex: str) -> dict[str, int]:
    """What each recipient is owed for a batch (summed over its receipts), the payer left out."""
    owed: dict[str, int] = {}
    for receipt, split in batch:
        for e in entries_for(receipt, split):
            if e.amount > 0 and e.account != payer_hex:
                owed[e.account] = owed.get(e.account, 0) + e.amount
    return owed


def build_transaction(payer: Keypair, gold: Gold, batch: list[tuple[Receipt, list[RoyaltyShare]]],
                      have_account: set[str], blockhash: Hash) -> Transaction:
    """One settlement transaction (legacy format, signed by the payer)."""
    ixs = settlement_instructions(payer.pubkey(), gold, batch, have_account)
    return Transaction([payer], Message(ixs, payer.pubkey()), blockhash)


def settlement_instructions(payer_key: Pubkey, gold: Gold,
                            batch: list[tuple[Receipt, list[RoyaltyShare]]],
                            have_account: set[str]) -> list[Instruction]:
    """Token accounts created where missing, a transfer per recipient, and the batch memo."""
    source = gold.account_of(payer_key)
    ixs: list[Instruction] = []
    for recipient, amount in sorted(payouts(batch, bytes(payer_key).hex()).items()):
        owner = pubkey_of(recipient)
        if recipient not in have_account:
            ixs.append(create_idempotent_associated_token_account(payer_key, owner, gold.mint))
        if amount:
            ixs.append(transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=source,
                                               dest=gold.account_of(owner), owner=payer_key,
                                               amount=amount)))
    memo = batch_memo([receipt_id(r.body) for r, _ in batch])
    ixs.append(create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=payer_key,
                                      message=memo.encode())))
    return ixs


def pack(payer: Keypair, gold: Gold, pending: list[tuple[Receipt, list[RoyaltyShare]]],
         have_account: set[str], blockhash: Hash,
         limit: int = PACKET_LIMIT) -> list[tuple[list, Transaction]]:
    """Greedy packing: add receipts in order while the serialized transaction still fits.

    A transaction's size depends only on its set of recipients (amounts are fixed-width and the
    memo is one hash), so a receipt whose recipients are all in the transaction already always
    fits, and only one that brings a new recipient is tried."""
    payer_hex = bytes(payer.pubkey()).hex()
    have_account = set(have_account)  # grows as earlier transactions of this run create accounts
    out: list[tuple[list, Transaction]] = []
    current: list = []
    recipients: set[str] = set()

    def close() -> None:
        out.append((current, build_transaction(payer, gold, current, have_account, blockhash)))
        have_account.update(recipients)

    for item in pending:
        new = set(payouts([item], payer_hex)) - recipients
        if current and not new:
            current.append(item)
            continue
        trial = build_transaction(payer, gold, current + [item], have_account, blockhash)
        if len(bytes(trial)) <= limit:
            current.append(item)
            recipients |= new
            continue
        if not current:
            raise SettleError(f"receipt {receipt_id(item[0].body)[:12]}… alone does not fit one "
                              f"transaction (its skin lineage is too long)")
        close()
        current, recipients = [], set()
        trial = build_transaction(payer, gold, [item], have_account, blockhash)
        if len(bytes(trial)) > limit:
            raise SettleError(f"receipt {receipt_id(item[0].body)[:12]}… alone does not fit one "
                              f"transaction (its skin lineage is too long)")
        current, recipients = [item], set(payouts([item], payer_hex))
    if current:
        close()
    return out


def recover(ledger: Ledger, client: ChainClient, report: SettleReport,
            on_step: Step | None = None) -> None:
    """Resolve batches that a previous run recorded but did not see settled."""
    open_batches = ledger.open_batches()
    if not open_batches:
        return
    statuses = client.statuses([b.signature for b in open_batches])
    for batch, status in zip(open_batches, statuses, strict=True):
        if status is None and client.block_height() <= batch.last_valid_height:
            try:
                client.send(batch.tx)
                report.resent += 1
            except ChainError as e:
                if "already been processed" not in str(e):
                    raise SettleError(f"settlement transaction {batch.signature} was refused "
                                      f"({e}); it is retried until its blockhash expires") from None
            status = client.wait(batch.signature)
        if status == "ok":
            ledger.mark_batch(batch.id, "settled")
            report.recovered += 1
            report.settled_receipts += len(ledger.batch_receipts(batch.id))
            report.transactions.append(batch.signature)
        else:
            # Never seen and past its last valid block height (or executed with an error, which
            # moved nothing): it can never pay, so its receipts are paid afresh.
            ledger.mark_batch(batch.id, "expired")
            report.expired += 1
        if on_step:
            on_step("recovered", {"signature": batch.signature, "status": status})


def settle(ledger: Ledger, client: ChainClient, payer: Keypair, *, max_receipts: int | None = None,
           on_step: Step | None = None) -> SettleReport:
    """Pay the ledger owner's unpaid receipts. Safe to kill at any point and run again."""
    if bytes(payer.pubkey()).hex() != ledger.owner:
        raise SettleError("the paying key is not the ledger's owner")
    report = SettleReport()
    recover(ledger, client, report, on_step)
    # Receipts to the same recipients side by side, so each transfer pays for as many as can be.
    pending = sorted(ledger.pending_to_pay(max_receipts, escrowed=False),
                     key=lambda item: (item[0].body.worker, item[0].body.skin or ""))
    if not pending:
        return report
    gold = client.gold()
    held = client.gold_balance(payer.pubkey())
    recipients = sorted({acct for r, s in pending for acct in payouts([(r, s)], ledger.owner)})
    exists = client.accounts_exist([gold.account_of(pubkey_of(k)) for k in recipients])
    have_account = {k for k, e in zip(recipients, exists, strict=True) if e}
    blockhash, last_valid = client.latest_blockhash()
    for batch, tx in pack(payer, gold, pending, have_account, blockhash):
        total = sum(payouts(batch, ledger.owner).values())
        if total > held:
            raise SettleError(f"the next batch pays {total} micro-gold but the wallet holds "
                              f"{held} on chain: top it up (`hearth wallet airdrop N` on the "
                              f"embedded chain)")
        signature = str(tx.signatures[0])
        ids = [receipt_id(r.body) for r, _ in batch]
        if on_step:
            on_step("signed", {"signature": signature, "receipts": len(ids)})
        batch_id = ledger.add_batch(signature, bytes(tx), last_valid,
                                    batch_memo(ids), ids)
        if on_step:
            on_step("recorded", {"signature": signature})
        try:
            client.send(bytes(tx))
        except ChainError as e:
            raise SettleError(f"settlement transaction {signature} was refused ({e})") from None
        if on_step:
            on_step("sent", {"signature": signature})
        if client.wait(signature) != "ok":
            ledger.mark_batch(batch_id, "expired")
            raise SettleError(f"settlement transaction {signature} executed with an error")
        ledger.mark_batch(batch_id, "settled")
        held -= total
        have_account.update(payouts(batch, ledger.owner))
        report.settled_receipts += len(ids)
        report.transactions.append(signature)
        if on_step:
            on_step("settled", {"signature": signature, "receipts": len(ids)})
    return report


def holdings(ledger: Ledger, client: ChainClient) -> int:
    """The owner's gold on chain: their gold account plus what their open escrows hold (which
    together is what the ledger's settled balance should equal)."""
    total = client.gold_balance(pubkey_of(ledger.owner))
    for row in ledger.escrows("open", "opening"):
        total += client.token_balance(Pubkey.from_string(row["account"]))
    return total


def count_outside_gold(ledger: Ledger, client: ChainClient) -> int:
    """Record as a deposit the gold the owner's chain account holds beyond everything the ledger
    can explain (its settled balance plus what unconfirmed receipts may have paid it): gold bought
    or sent from outside. Returns the amount recorded (0 if none)."""
    if ledger.open_batches():
        raise SettleError("a settlement is still in flight: run settle first")
    held = holdings(ledger, client)
    surplus = held - ledger.settled_balance() - ledger.pending_incoming()
    if surplus <= 0:
        return 0
    ledger.deposit(f"outside:{client.block_height()}:{held}", ledger.owner, surplus,
                   "from outside")
    return surplus
