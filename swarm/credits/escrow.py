"""Escrow: before a job is dispatched the requester locks its budget in a gold account that only
the requester and the worker *together* can move — a token account owned by a 2-of-2 SPL Token
multisig. Each accepted shard releases the worker's share (and its skin royalties); when the job
completes the rest goes back to the requester. Every movement out needs both signatures, so the
requester cannot take back what it owes for work it received, and the worker cannot take more
than the requester agrees to.

The two signatures are gathered the way two processes would: one side builds the message
(``release_message`` / ``refund_message``), each side signs its bytes (``sign``), and either one
submits the assembled transaction (``submit``).

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

from dataclasses import dataclass

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction
from spl.token.constants import MULTISIG_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    close_account, create_idempotent_associated_token_account, initialize_multisig, transfer,
)
from spl.token.models import CloseAccountParams, InitializeMultisigParams, TransferParams

from swarm.credits.chain import ChainClient, ChainError, Gold


class EscrowError(RuntimeError):
    """An escrow step cannot be done (not both signatures, a refused transfer)."""


@dataclass(frozen=True)
class Escrow:
    requester: Pubkey
    worker: Pubkey
    multisig: Pubkey
    account: Pubkey  # the escrow's gold token account (the multisig's associated account)


def open_escrow(client: ChainClient, requester: Keypair, worker: Pubkey,
                budget: int) -> tuple[Escrow, str]:
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
    blockhash, _ = client.latest_blockhash()
    tx = Transaction([requester, multisig], Message(ixs, requester.pubkey()), blockhash)
    return escrow, _send(client, bytes(tx))


def _pay(escrow: Escrow, gold: Gold, recipient: Pubkey, amount: int) -> Instruction:
    return transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=escrow.account,
                                   dest=gold.account_of(recipient), owner=escrow.multisig,
                                   amount=amount, signers=[escrow.requester, escrow.worker]))


def release_message(client: ChainClient, escrow: Escrow, payouts: dict[Pubkey, int],
                    fee_payer: Pubkey, blockhash: Hash) -> Message:
    """The message that pays an accepted shard out of escrow: the worker's share and any
    royalties (recipients' gold accounts are created if missing, paid by ``fee_payer``)."""
    gold = client.gold()
    ixs: list[Instruction] = []
    for recipient, amount in sorted(payouts.items(), key=lambda kv: bytes(kv[0])):
        ixs.append(create_idempotent_associated_token_account(fee_payer, recipient, gold.mint))
        ixs.append(_pay(escrow, gold, recipient, amount))
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
    keys = list(message.account_keys[:message.header.num_required_signatures])
    missing = [str(k) for k in keys if k not in signatures]
    if missing:
        raise EscrowError(f"the escrow transaction still needs the signature of "
                          f"{', '.join(missing)}")
    tx = Transaction.populate(message, [signatures[k] for k in keys])
    if not all(tx.verify_with_results()):
        raise EscrowError("a signature does not match the escrow transaction")
    return _send(client, bytes(tx))


def _send(client: ChainClient, raw: bytes) -> str:
    try:
        sig = client.send(raw)
    except ChainError as e:
        raise EscrowError(f"the escrow transaction was refused ({e})") from None
    if client.wait(sig) != "ok":
        raise EscrowError(f"the escrow transaction {sig} failed on chain")
    return sig
