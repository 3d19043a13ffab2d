"""Escrow: a requester's gold locked for one worker in a token account that only the two of them
*together* can move — a gold token account owned by a 2-of-2 SPL Token multisig of the requester
and the worker. Paying accepted work out of it (the worker's share and its skin royalties) and
returning the rest to the requester both need both signatures, so the requester cannot take back
what it owes for work it received, and the worker cannot take more than the requester agrees to.
How a job uses it (one escrow per worker, locked before that worker's first shard is sent) is
``swarm/jobs/job_escrow.py``; the worker's checks are ``swarm/jobs/worker_escrow.py``.

The two signatures are gathered the way two processes would: the requester builds the message
(``release_message`` / ``refund_message``) and signs it, the worker checks it (``check_release``
/ ``check_refund``: nothing in it but transfers out of this escrow, to the right people, for
exactly the receipts named) and signs it, and the requester submits the assembled transaction.
``pay_from_escrow`` and ``close_escrow`` do this for the requester with a ``cosign`` callback
that asks the worker. Locking more (``top_up``) needs only the requester.

The requester's ledger knows every step (``on_step`` names them as settlement does): an escrow
is written there, with the job it is for and the signature of the transaction that opens it,
before that transaction is sent; a release is written as a settlement batch of the receipts it
pays — memo and all — before it is submitted, so its receipts are never paid again by
``hearth wallet settle`` nor by a second release, and a crash is resolved the way an interrupted
settlement is (``settle.recover``); a refund that landed before its escrow was marked closed is
found by ``recover_escrows`` (the account is gone). The gold in open escrows still belongs to the
requester: ``settle.holdings`` counts it with the wallet.

What this escrow cannot do without a custom on-chain program, and why:
- **Time-out refunds.** The SPL Token program has no notion of time. If the worker vanishes (or
  refuses to sign), the locked gold stays locked until it comes back and signs; nothing on chain
  can return it to the requester after a deadline. (A program holding the funds in a PDA could
  check the Clock sysvar.)
- **Dispute resolution.** A 2-of-2 multisig deadlocks when the parties disagree: a requester
  that will not sign a release keeps the worker unpaid (and its own gold locked), a worker that
  will not sign the refund keeps the rest locked. A 2-of-3 with a third key would let an arbiter
  break ties, but that is a trusted party, not code.
- **Release tied to a receipt or a result.** The chain does not check that a release matches a
  signed receipt, nor that work was delivered: the parties' own signatures over the release are
  the agreement, and the worker's only leverage is refusing to sign the refund.
- **Rent.** The multisig account's rent (about 0.0034 SOL) cannot be recovered: the Token
  program has no instruction that closes a multisig. The escrow token account's rent is
  returned to the requester when it is closed on completion.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, MULTISIG_LEN, TOKEN_PROGRAM_ID
from spl.token.instructions import (
    close_account, create_idempotent_associated_token_account, initialize_multisig, transfer,
)
from spl.token.models import CloseAccountParams, InitializeMultisigParams, TransferParams

from swarm.credits.chain import ChainClient, ChainError, Gold, pubkey_of
from swarm.credits.ledger import Ledger, worker_share
from swarm.credits.settle import PACKET_LIMIT, batch_memo, payouts
from swarm.jobs.receipt import Receipt, receipt_id

#: The requester's answer-getter: (message, requester's signature, receipt ids it pays — none
#: for a refund) -> the worker's signature.
Cosign = Callable[[Message, Signature, list[str]], Signature]
Step = Callable[[str, dict], None]

_TRANSFER, _CLOSE_ACCOUNT = 3, 9  # SPL Token instruction tags
_CREATE_IDEMPOTENT = 1  # Associated Token Account instruction tag
_TOKEN_ACCOUNT_LEN = 165


class EscrowError(RuntimeError):
    """An escrow step cannot be done (not both signatures, a refused transfer)."""


@dataclass(frozen=True)
class Escrow:
    requester: Pubkey
    worker: Pubkey
    multisig: Pubkey
    account: Pubkey  # the escrow's gold token account (the multisig's associated account)


def open_escrow(ledger: Ledger, client: ChainClient, requester: Keypair, worker: Pubkey,
                budget: int, job: str | None = None) -> Escrow:
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
                      str(tx.signatures[0]), last_valid, job)
    _send(client, bytes(tx))
    ledger.set_escrow(str(escrow.account), "open")
    return escrow


def escrow_from(ledger: Ledger, row: dict) -> Escrow:
    return Escrow(pubkey_of(ledger.owner), pubkey_of(row["worker"]),
                  Pubkey.from_string(row["multisig"]), Pubkey.from_string(row["account"]))


def recover_escrows(ledger: Ledger, client: ChainClient) -> None:
    """Resolve escrows a crash left half-done: an opening transaction unconfirmed, or a refund
    that landed (the escrow's account is gone) before the escrow was marked closed."""
    for row in ledger.escrows("opening"):
        status = client.statuses([row["signature"]])[0]
        if status == "ok":
            ledger.set_escrow(row["account"], "open")
        elif status == "failed" or client.block_height() > row["last_valid_height"]:
            ledger.set_escrow(row["account"], "failed")  # it can never open: nothing was locked
    rows = ledger.escrows("open")
    exists = client.accounts_exist([Pubkey.from_string(r["account"]) for r in rows]) if rows else []
    for row, there in zip(rows, exists, strict=True):
        if not there:
            ledger.set_escrow(row["account"], "closed")


def top_up(ledger: Ledger, client: ChainClient, escrow: Escrow, requester: Keypair,
           amount: int) -> str:
    """Lock ``amount`` more in an open escrow (the requester alone: adding needs no consent).
    Both accounts are the requester's holdings, so a crash anywhere loses nothing."""
    gold = client.gold()
    ixs = [transfer(TransferParams(program_id=TOKEN_PROGRAM_ID,
                                   source=gold.account_of(requester.pubkey()),
                                   dest=escrow.account, owner=requester.pubkey(), amount=amount)),
           # two top-ups of one amount under one blockhash would otherwise be one transaction
           create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=requester.pubkey(),
                                  message=f"hearth-escrow-top-up:{os.urandom(8).hex()}".encode()))]
    tx = Transaction([requester], Message(ixs, requester.pubkey()), client.latest_blockhash()[0])
    sig = _send(client, bytes(tx))
    ledger.set_escrow_budget(str(escrow.account), client.token_balance(escrow.account))
    return sig


def pay_from_escrow(ledger: Ledger, client: ChainClient, escrow: Escrow, requester: Keypair,
                    cosign: Cosign, receipt_ids: Sequence[str] | None = None,
                    on_step: Step | None = None) -> int:
    """Pay the owner's recorded, unpaid receipts for this escrow's worker (those of
    ``receipt_ids`` only, when given) out of the escrow: one release per call, recorded as a
    settlement batch before it is submitted. Returns how many receipts it paid.

    Steps: ``cosigned`` (both signatures held, nothing durable: a crash here sends nothing),
    ``recorded`` (the signed bytes are in the ledger: from here ``settle.recover`` resolves it),
    ``sent``, ``settled``."""
    worker_hex = bytes(escrow.worker).hex()
    wanted = None if receipt_ids is None else set(receipt_ids)
    batch = [(r, split) for r, split in ledger.pending_to_pay()
             if r.body.worker == worker_hex and (wanted is None or receipt_id(r.body) in wanted)]
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
    size = 1 + 64 * message.header.num_required_signatures + len(bytes(message))
    if size > PACKET_LIMIT:
        raise EscrowError(f"a release to {len(owed)} recipients is {size} bytes, over Solana's "
                          f"{PACKET_LIMIT}-byte packet (the skin's lineage is too long)")
    mine = sign(message, requester)
    tx = assemble(message, {requester.pubkey(): mine, escrow.worker: cosign(message, mine, ids)})
    signature = str(tx.signatures[0])
    _step(on_step, "cosigned", signature=signature, receipts=len(ids))
    batch_id = ledger.add_batch(signature, bytes(tx), last_valid, memo, ids)
    _step(on_step, "recorded", signature=signature)
    try:
        client.send(bytes(tx))
    except ChainError as e:
        raise EscrowError(f"the escrow release {signature} was refused ({e}); it is retried "
                          f"until its blockhash expires") from None
    _step(on_step, "sent", signature=signature)
    if client.wait(signature) != "ok":
        ledger.mark_batch(batch_id, "expired")
        raise EscrowError(f"the escrow release {signature} failed on chain")
    ledger.mark_batch(batch_id, "settled")
    _step(on_step, "settled", signature=signature, receipts=len(ids),
          amount=sum(owed.values()))
    return len(ids)


def close_escrow(ledger: Ledger, client: ChainClient, escrow: Escrow, requester: Keypair,
                 cosign: Cosign, on_step: Step | None = None) -> int:
    """On completion: what is left returns to the requester and the escrow account is closed.
    Returns the amount returned. A crash after the refund lands and before the escrow is
    marked closed is found by ``recover_escrows``."""
    remaining = client.token_balance(escrow.account)
    blockhash, _ = client.latest_blockhash()
    message = refund_message(client, escrow, remaining, blockhash)
    mine = sign(message, requester)
    signature = submit(client, message, {requester.pubkey(): mine,
                                         escrow.worker: cosign(message, mine, [])})
    ledger.set_escrow(str(escrow.account), "closed")
    _step(on_step, "refunded", signature=signature, amount=remaining)
    return remaining


def _step(on_step: Step | None, name: str, **info) -> None:
    if on_step is not None:
        on_step(name, info)


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


# ---- the worker's side ---------------------------------------------------------------------------


def verify_escrow(client: ChainClient, escrow: Escrow) -> int:
    """Check on chain that ``escrow`` is what it claims — a gold token account owned by a 2-of-2
    multisig of exactly the requester and the worker, with no delegate — and return the gold it
    holds. Raises EscrowError naming what is wrong."""
    gold = client.gold()
    account = client.account(escrow.account)
    if account is None:
        raise EscrowError(f"escrow account {escrow.account} does not exist on chain")
    owner, data = account
    if owner != TOKEN_PROGRAM_ID or len(data) != _TOKEN_ACCOUNT_LEN:
        raise EscrowError(f"escrow account {escrow.account} is not a token account")
    if Pubkey.from_bytes(data[0:32]) != gold.mint:
        raise EscrowError(f"escrow account {escrow.account} does not hold gold")
    if Pubkey.from_bytes(data[32:64]) != escrow.multisig:
        raise EscrowError(f"escrow account {escrow.account} is not owned by multisig "
                          f"{escrow.multisig}")
    if data[72:76] != bytes(4) or data[108] != 1:
        raise EscrowError(f"escrow account {escrow.account} has a delegate or is frozen")
    multisig = client.account(escrow.multisig)
    if multisig is None or multisig[0] != TOKEN_PROGRAM_ID or len(multisig[1]) != MULTISIG_LEN:
        raise EscrowError(f"{escrow.multisig} is not a token multisig")
    m, n, initialized = multisig[1][0], multisig[1][1], multisig[1][2]
    signers = {Pubkey.from_bytes(multisig[1][3 + 32 * i:35 + 32 * i]) for i in range(n)}
    if not initialized or m != 2 or n != 2 or signers != {escrow.requester, escrow.worker}:
        raise EscrowError(f"multisig {escrow.multisig} is not a 2-of-2 of the requester and "
                          f"the worker")
    return int.from_bytes(data[64:72], "little")


def _parts(message: Message, escrow: Escrow,
           requester_sig: Signature) -> tuple[list[tuple[Pubkey, int]], list, str | None]:
    """The message's transfers out of the escrow, close instructions and memo, after checking
    who signs it and that it holds nothing else."""
    keys = message.account_keys
    signers = keys[:message.header.num_required_signatures]
    if not signers or signers[0] != escrow.requester or set(signers) != {escrow.requester,
                                                                          escrow.worker}:
        raise EscrowError("the escrow transaction must be paid by the requester and signed by "
                          "the requester and the worker alone")
    if not requester_sig.verify(escrow.requester, bytes(message)):
        raise EscrowError("the requester's signature does not match the escrow transaction")
    transfers, closes, memo = [], [], None
    for ix in message.instructions:
        program, data = keys[ix.program_id_index], bytes(ix.data)
        accounts = [keys[i] for i in ix.accounts]
        if program == MEMO_PROGRAM_ID and memo is None:
            memo = data.decode("utf-8", "replace")
        elif program == ASSOCIATED_TOKEN_PROGRAM_ID and data == bytes([_CREATE_IDEMPOTENT]) \
                and accounts[0] == escrow.requester:
            continue  # the requester pays for a recipient's gold account
        elif program == TOKEN_PROGRAM_ID and data[:1] == bytes([_TRANSFER]) and len(data) == 9 \
                and accounts[0] == escrow.account and accounts[2] == escrow.multisig:
            transfers.append((accounts[1], int.from_bytes(data[1:9], "little")))
        elif program == TOKEN_PROGRAM_ID and data == bytes([_CLOSE_ACCOUNT]) \
                and accounts[0] == escrow.account and accounts[2] == escrow.multisig:
            closes.append(accounts[1])
        else:
            raise EscrowError(f"the escrow transaction holds an instruction the worker does not "
                              f"sign (program {program})")
    return transfers, closes, memo


def check_release(gold: Gold, message: Message, requester_sig: Signature, escrow: Escrow,
                  receipts: Sequence[Receipt]) -> None:
    """What a worker checks before co-signing a release: it pays exactly ``receipts`` (their
    memo, their total out of the escrow, the worker's own share to the worker's gold account)
    and does nothing else. Raises EscrowError naming the problem."""
    transfers, closes, memo = _parts(message, escrow, requester_sig)
    ids = [receipt_id(r.body) for r in receipts]
    if closes or not receipts or memo != batch_memo(ids):
        raise EscrowError("the release does not name the receipts it pays")
    total = sum(r.body.amount for r in receipts)
    if sum(amount for _, amount in transfers) != total:
        raise EscrowError(f"the release moves {sum(a for _, a in transfers)} micro-gold where "
                          f"the receipts are worth {total}")
    mine = gold.account_of(escrow.worker)
    paid = sum(amount for dest, amount in transfers if dest == mine)
    owed = sum(worker_share(r.body) for r in receipts)
    if paid != owed:
        raise EscrowError(f"the release pays the worker {paid} micro-gold where its receipts "
                          f"give it {owed}")


def check_refund(gold: Gold, message: Message, requester_sig: Signature,
                 escrow: Escrow) -> None:
    """What a worker checks before co-signing a refund: everything left goes to the requester's
    gold account and the escrow account is closed to the requester, nothing else."""
    transfers, closes, memo = _parts(message, escrow, requester_sig)
    back = gold.account_of(escrow.requester)
    if memo is not None or closes != [escrow.requester] or any(d != back for d, _ in transfers):
        raise EscrowError("the refund does not return the escrow to the requester alone")


def sign(message: Message, keypair: Keypair) -> Signature:
    """One party's signature over the message (which carries its blockhash)."""
    signers = message.account_keys[:message.header.num_required_signatures]
    if keypair.pubkey() not in signers:
        raise EscrowError(f"{keypair.pubkey()} is not a signer of this escrow transaction")
    return keypair.sign_message(bytes(message))


def submit(client: ChainClient, message: Message, signatures: dict[Pubkey, Signature]) -> str:
    """Assemble the transaction from each required signer's signature and send it."""
    return _send(client, bytes(assemble(message, signatures)))


def assemble(message: Message, signatures: dict[Pubkey, Signature]) -> Transaction:
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
