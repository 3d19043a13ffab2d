"""Escrow: before a job is dispatched the requester locks its budget in a gold account that only
the requester and the worker *together* can move — a token account owned by a 2-of-2 SPL Token
multisig. Each accepted shard releases the worker's share (and its skin royalties); when the job
completes the rest goes back to the requester. Every movement out needs both signatures, so the
requester cannot take back what it owes for work it received, and the worker cannot take more
than the requester agrees to.

The two signatures are gathered the way two processes would: one side builds the message
(``release_message`` / ``refund_message``), each side signs its bytes (``sign``), and either one
submits the assembled transaction (``submit``). ``pay_from_escrow`` and ``close_escrow`` do this
for the requester with a ``cosign`` callback that asks the worker.

The requester's ledger knows every step: an escrow is written there (with the signature of the
transaction that opens it) before that transaction is sent, and a release is written as a
settlement batch of the receipts it pays — memo and all — before it is submitted, so a crash is
resolved the way an interrupted settlement is (``recover_escrows``, ``settle.recover``). The
gold in open escrows still belongs to the requester: ``settle.holdings`` counts it with the
wallet.

What this escrow cannot do without a custom on-chain program, and why:
- **Time-out refunds.** The SPL Token program has no notion of time. If the worker disappears, the
  locked budget stays locked until it comes back and signs; nothing on chain can return it to the
  requester after a deadline. (A program holding the funds in a PDA could check the Clock sysvar.)
- **Arbitration.** A 2-of-2 multisig deadlocks when the parties disagree; a 2-of-3 with a third
  key would let an arbiter break ties, but that is a trusted party, not code.
- **Release tied to a receipt.** The chain does not check that a release matches a signed
  receipt; the parties' own signatures over the release are the agreement.
- **Rent.** The multisig account's rent (about 0.0034 SOL) cannot be recovered: the Token
  program has no instruction that closes a multisig. The escrow token account's rent is
  returned to the requester when it is closed on completion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token.constants import MULTISIG_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    close_account, create_idempotent_associated_token_account, initialize_multisig, transfer,
)
from spl.token.models import CloseAccountParams, InitializeMultisigParams, TransferParams

from swarm.credits.chain import ChainClient, ChainError, Gold, pubkey_of
from swarm.credits.ledger import Ledger
from swarm.credits.settle import batch_memo, payouts
from swarm.jobs.receipt import receipt_id


class EscrowError(RuntimeError):
    """An escrow step cannot be done (not both signatures, a refused transfer)."""


@dataclass(frozen=True)
class Escrow:
    requester: Pubkey
    worker: Pubkey
    multisig: Pubkey
    account: Pubkey  # the escrow's gold token account (the multisig's associated account)


def open_escrow(ledger: Ledger, client: ChainClient, requester: Keypair, worker: Pubkey,
                budget: int) -> Escrow:
    """Make the 2-of-2 multisig and its gold account and lock ``budget`` in it (one
    transaction, signed by the requester alone: locking needs no one else's consent)."""
    gold = client.gold()
    multisig = Keypair()
    escrow = Escrow(requester.pubkey(), worker, multisig.pubkey(),
                    gold.account_of(multisig.pubkey()))
    rent = client.rent_exempt(MULTISIG_LEN)
    ixs = [create_account(CreateAccountParams(from_pubkey=requester.pubkey(),
                                              to_pubkey=multisig.pubkey(), lamports=rent,
                                              space=MULTISIG_LEN, owner=TOKEN_PROGRAM_ID)),
           initialize_multisig(InitializeMultisigParams(program_id=TOKEN_PROGRAM_ID,
                                                        multisig=multisig.pubkey(), m=2,
                                                        signers=[requester.pubkey(), worker])),
           create_idempotent_associated_token_account(requester.pubkey(), multisig.pubkey(),
                                                      gold.mint),
           transfer(TransferParams(program_id=TOKEN_PROGRAM_ID,
                                   source=gold.account_of(requester.pubkey()),
                                   dest=escrow.account, owner=requester.pubkey(),
                                   amount=budget))]
    blockhash, last_valid = client.latest_blockhash()
    tx = Transaction([requester, multisig], Message(ixs, requester.pubkey()), blockhash)
    ledger.add_escrow(str(escrow.account), str(escrow.multisig), bytes(worker).hex(), budget,
                      str(tx.signatures[0]), last_valid)
    _send(client, bytes(tx))
    ledger.set_escrow(str(escrow.account), "open")
    return escrow


def escrow_from(ledger: Ledger, row: dict) -> Escrow:
    return Escrow(pubkey_of(ledger.owner), pubkey_of(row["worker"]),
                  Pubkey.from_string(row["multisig"]), Pubkey.from_string(row["account"]))


def recover_escrows(ledger: Ledger, client: ChainClient) -> None:
    """Resolve escrows whose opening transaction a crash left unconfirmed."""
    for row in ledger.escrows("opening"):
        status = client.statuses([row["signature"]])[0]
        if status == "ok":
            ledger.set_escrow(row["account"], "open")
        elif status == "failed" or client.block_height() > row["last_valid_height"]:
            ledger.set_escrow(row["account"], "failed")  # it can never open: nothing was locked


def pay_from_escrow(ledger: Ledger, client: ChainClient, escrow: Escrow, requester: Keypair,
                    cosign: Callable[[Message], Signature]) -> int:
    """Pay the owner's recorded, unpaid receipts for this escrow's worker out of the escrow: one
    release per call, recorded as a settlement batch before it is submitted. Returns how many
    receipts it paid."""
    worker_hex = bytes(escrow.worker).hex()
    batch = [(r, split) for r, split in ledger.pending_to_pay()
             if r.body.worker == worker_hex]
    if not batch:
        return 0
    owed = payouts(batch, ledger.owner)
    if sum(owed.values()) > client.token_balance(escrow.account):
        raise EscrowError("the escrow holds less than these receipts owe")
    blockhash, last_valid = client.latest_blockhash()
    ids = [receipt_id(r.body) for r, _ in batch]
    memo = batch_memo(ids)
    message = release_message(client, escrow, {pubkey_of(k): v for k, v in owed.items()},
                              requester.pubkey(), blockhash, memo)
    signatures = {requester.pubkey(): sign(message, requester), escrow.worker: cosign(message)}
    tx = _assemble(message, signatures)
    batch_id = ledger.add_batch(str(tx.signatures[0]), bytes(tx), last_valid, memo, ids)
    _send(client, bytes(tx))
    ledger.mark_batch(batch_id, "settled")
    return len(ids)


def close_escrow(ledger: Ledger, client: ChainClient, escrow: Escrow, requester: Keypair,
                 cosign: Callable[[Message], Signature]) -> int:
    """On completion: what is left returns to the requester and the escrow account is closed.
    Returns the amount returned."""
    remaining = client.token_balance(escrow.account)
    blockhash, _ = client.latest_blockhash()
    message = refund_message(client, escrow, remaining, blockhash)
    submit(client, message, {requester.pubkey(): sign(message, requester),
                             escrow.worker: cosign(message)})
    ledger.set_escrow(str(escrow.account), "closed")
    return remaining


def _pay(escrow: Escrow, gold: Gold, recipient: Pubkey, amount: int) -> Instruction:
    return transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=escrow.account,
                                   dest=gold.account_of(recipient), owner=escrow.multisig,
                                   amount=amount, signers=[escrow.requester, escrow.worker]))


def release_message(client: ChainClient, escrow: Escrow, amounts: dict[Pubkey, int],
                    fee_payer: Pubkey, blockhash: Hash, memo: str | None = None) -> Message:
    """The message that pays accepted shards out of escrow: the worker's share and any
    royalties (recipients' gold accounts are created if missing, paid by ``fee_payer``), and
    the memo naming the receipts paid."""
    gold = client.gold()
    ixs: list[Instruction] = []
    for recipient, amount in sorted(amounts.items(), key=lambda kv: bytes(kv[0])):
        ixs.append(create_idempotent_associated_token_account(fee_payer, recipient, gold.mint))
        ixs.append(_pay(escrow, gold, recipient, amount))
    if memo is not None:
        ixs.append(create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=fee_payer,
                                          message=memo.encode())))
    return Message.new_with_blockhash(ixs, fee_payer, blockhash)


def refund_message(client: ChainClient, escrow: Escrow, remaining: int,
                   blockhash: Hash) -> Message:
    """The message that ends the escrow: what is left goes back to the requester and the
    escrow's token account is closed (its rent to the requester)."""
    gold = client.gold()
    ixs = []
    if remaining:
        ixs.append(_pay(escrow, gold, escrow.requester, remaining))
    ixs.append(close_account(CloseAccountParams(program_id=TOKEN_PROGRAM_ID,
                                                account=escrow.account, dest=escrow.requester,
                                                owner=escrow.multisig,
                                                signers=[escrow.requester, escrow.worker])))
    return Message.new_with_blockhash(ixs, escrow.requester, blockhash)


def sign(message: Message, keypair: Keypair) -> Signature:
    """One party's signature over the message (which carries its blockhash)."""
    signers = message.account_keys[:message.header.num_required_signatures]
    if keypair.pubkey() not in signers:
        raise EscrowError(f"{keypair.pubkey()} is not a signer of this escrow transaction")
    return keypair.sign_message(bytes(message))


def submit(client: ChainClient, message: Message, signatures: dict[Pubkey, Signature]) -> str:
    """Assemble the transaction from each required signer's signature and send it."""
    return _send(client, bytes(_assemble(message, signatures)))


def _assemble(message: Message, signatures: dict[Pubkey, Signature]) -> Transaction:
    keys = list(message.account_keys[:message.header.num_required_signatures])
    missing = [str(k) for k in keys if k not in signatures]
    if missing:
        raise EscrowError(f"the escrow transaction still needs the signature of "
                          f"{', '.join(missing)}")
    tx = Transaction.populate(message, [signatures[k] for k in keys])
    if not all(tx.verify_with_results()):
        raise EscrowError("a signature does not match the escrow transaction")
    return tx


def _send(client: ChainClient, raw: bytes) -> str:
    try:
        sig = client.send(raw)
    except ChainError as e:
        raise EscrowError(f"the escrow transaction was refused ({e})") from None
    if client.wait(sig) != "ok":
        raise EscrowError(f"the escrow transaction {sig} failed on chain")
    return sig
