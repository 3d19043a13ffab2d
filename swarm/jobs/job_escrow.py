"""The requester's side of escrow in a job: gold is locked for a worker before that worker is
sent a shard, paid out for its receipts when the job completes, and the rest returned.

Structure: **one escrow per worker per job** (the 2-of-2 multisig's signers are the requester and
that worker, so an escrow cannot be shared), opened when the worker is first given a shard of the
job and sized to what the shards it holds can cost at most — and, budget permitting, its even
share of the shards not yet sent, so a worker given several shards in turn seldom needs more;
topped up (the requester alone can add) when a shard it is given is not covered. The job's ``budget`` caps the gold locked in all its escrows
together: a shard whose lock would pass it is not sent, and the job stops (resumably). The
default budget is twice the job's maximum cost, so every shard can be redone once after a worker
vanishes with the gold locked for it (its escrow cannot be refunded without it).

A shard's maximum cost is its prompts' UTF-8 bytes (a token is at least one byte) plus
``TEMPLATE_TOKENS`` per message and per prompt for a chat template's markers, plus every
request's ``max_tokens``, at the worker's price. Should a worker's receipts come to more anyway,
the requester tops the escrow up before paying it.

When the job completes, each worker's receipts (signed only then: a worker caught cheating is
paid nothing for the job) are recorded in the requester's ledger and paid out of its escrow in
one release the worker co-signs — its share and the skin royalties, exactly as ``hearth wallet
settle`` would pay them, so the ledger marks them settled with the release's signature and
settlement never pays them again — and then the worker co-signs the refund of the rest. An
escrow whose worker is not reachable stays open; running the job again finishes it.

Crash safety is the ledger's (``swarm/credits/escrow.py``): every escrow and every release is
written there before its transaction is sent, and ``recover`` resolves what a crash left in
flight before anything else is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from solders.keypair import Keypair
from solders.pubkey import Pubkey

from swarm.credits.chain import ChainClient, pubkey_of
from swarm.credits.escrow import (
    Cosign, EscrowError, Step, close_escrow, escrow_from, open_escrow, pay_from_escrow,
    recover_escrows, top_up,
)
from swarm.credits.ledger import Ledger, LedgerError
from swarm.credits.settle import SettleReport, payouts, recover
from swarm.jobs import protocol as p
from swarm.jobs.backend import WorkItem
from swarm.jobs.receipt import Receipt, amount_for, receipt_id

#: Tokens a chat template may add around each message, and around the prompt.
TEMPLATE_TOKENS = 16
#: The default budget is this many times the job's maximum cost.
DEFAULT_BUDGET_FACTOR = 2


def prompt_bound(item: WorkItem) -> int:
    """At least as many tokens as the item's prompt can take."""
    return TEMPLATE_TOKENS + sum(len(m.role.encode()) + len(m.content.encode()) + TEMPLATE_TOKENS
                                 for m in item.messages)


def max_cost(items: Sequence[WorkItem], price_per_1k: int) -> int:
    """The most ``items`` can cost at ``price_per_1k`` (each rounded up, so at least a shard's
    receipt, which rounds once)."""
    return sum(amount_for(prompt_bound(it), it.max_tokens, price_per_1k) for it in items)


def hex_address(key: Pubkey | str) -> str:
    """A Solana address (or its base58 text) as the jobs protocol carries it."""
    return bytes(Pubkey.from_string(key) if isinstance(key, str) else key).hex()


@dataclass
class EscrowFunds:
    """What a requester locks job budgets with: its ledger, the chain, its key, the royalty
    split of a skin (``SkinStore.royalty_split``: receipts that wore one pay its creators), and
    an optional ``on_step(name, info)`` told of every escrow step (``locked``, ``topped_up``,
    ``cosigned``, ``recorded``, ``sent``, ``settled``, ``refunded``; info has the ``worker``)."""
    ledger: Ledger
    client: ChainClient
    payer: Keypair
    royalty_split: Callable[[str], list] | None = None
    on_step: Step | None = None


class JobEscrow:
    """The escrows of one job, paid from ``funds`` and capped by ``budget`` (micro-gold)."""

    def __init__(self, funds: EscrowFunds, job: str, budget: int):
        if budget <= 0:
            raise EscrowError("a job's budget must be positive")
        self.funds = funds
        self.job = job
        self.budget = budget

    # ---- before dispatch ----------------------------------------------------------------------

    def recover(self) -> None:
        """Resolve escrows and releases a crash left in flight (any job's)."""
        recover_escrows(self.funds.ledger, self.funds.client)
        recover(self.funds.ledger, self.funds.client, SettleReport())

    def rows(self) -> list[dict]:
        return self.funds.ledger.escrows("open", job=self.job)

    def locked(self) -> int:
        """Gold in this job's open escrows now."""
        client = self.funds.client
        return sum(client.token_balance(Pubkey.from_string(r["account"])) for r in self.rows())

    def check_funds(self) -> None:
        """Refuse (EscrowError) when the wallet cannot lock the rest of the budget: gold on chain
        beyond what unpaid receipts owe, and beyond what the ledger has promised elsewhere."""
        ledger, client = self.funds.ledger, self.funds.client
        here = self.locked()
        elsewhere = sum(client.token_balance(Pubkey.from_string(r["account"]))
                        for r in ledger.escrows("open") if r["job"] != self.job)
        owed = sum(sum(payouts([item], ledger.owner).values())
                   for item in ledger.pending_to_pay(escrowed=False))
        wallet = client.gold_balance(self.funds.payer.pubkey())
        free = min(wallet - owed, ledger.balance() - elsewhere - here)
        need = self.budget - here
        if need > free:
            raise EscrowError(
                f"the job's budget is {self.budget} micro-gold and {need} of it is still to be "
                f"locked, but the wallet can lock only {max(free, 0)} (on chain {wallet}, "
                f"{owed} owed on unpaid receipts; the ledger has {ledger.balance()}, "
                f"{elsewhere} of it in other jobs' escrows)")

    # ---- dispatch -----------------------------------------------------------------------------

    def terms_for(self, worker: str, needed: int,
                  wanted: int | None = None) -> p.EscrowTerms | None:
        """Make sure ``worker``'s escrow for this job holds ``needed``: open it, or top it up,
        within the budget — to ``wanted`` (what the worker's share of the shards still to be
        sent can cost) when the budget allows, so most jobs need no top-up at all. None for a
        worker that works for free and has no escrow: there is nothing to lock."""
        ledger, client, payer = self.funds.ledger, self.funds.client, self.funds.payer
        row = next((r for r in self.rows() if r["worker"] == worker), None)
        if row is None and needed == 0:
            return None
        held = 0 if row is None else client.token_balance(Pubkey.from_string(row["account"]))
        if held >= needed:
            escrow = escrow_from(ledger, row)
        else:
            more = self._affordable(needed - held, max(wanted or needed, needed) - held)
            if row is None:
                escrow = open_escrow(ledger, client, payer, pubkey_of(worker), more, self.job)
                self._step("locked", worker, amount=more, account=str(escrow.account))
            else:
                escrow = escrow_from(ledger, row)
                top_up(ledger, client, escrow, payer, more)
                self._step("topped_up", worker, amount=more, account=str(escrow.account))
            held += more
        return p.EscrowTerms(account=hex_address(escrow.account),
                             multisig=hex_address(escrow.multisig), amount=held)

    def _affordable(self, least: int, most: int) -> int:
        """As much of ``most`` as the budget leaves room for; at least ``least`` or EscrowError."""
        room = self.budget - self.locked()
        if room < least:
            raise EscrowError(f"the job's budget of {self.budget} micro-gold is locked up "
                              f"({self.budget - room} in its escrows; {least} more is needed): "
                              f"run it again with a bigger budget")
        return min(most, room)

    # ---- completion ---------------------------------------------------------------------------

    def settle_worker(self, worker: str, receipts: list[Receipt], cosign: Cosign) -> tuple[int,
                                                                                          int]:
        """Pay ``worker``'s receipts of this job out of its escrow, then return the rest and
        close it. Returns (micro-gold released, micro-gold returned)."""
        ledger, client, payer = self.funds.ledger, self.funds.client, self.funds.payer
        row = next((r for r in self.rows() if r["worker"] == worker), None)
        if row is None:
            return 0, 0
        escrow = escrow_from(ledger, row)
        ids, owed = [], 0
        for receipt in receipts:
            rid = receipt_id(receipt.body)
            if ledger.receipt_settlement(rid) is not None:
                continue  # paid already: by an earlier release, or by `hearth wallet settle`
            skin = receipt.body.skin
            try:
                split = (self.funds.royalty_split(skin) if skin and self.funds.royalty_split
                         else None)
            except Exception as e:  # the split comes from the caller's skin store, any error
                raise EscrowError(f"the royalty split of skin {skin[:12]}… is not known: "
                                  f"{e}") from None
            try:
                ledger.record(receipt, split)
            except LedgerError as e:
                raise EscrowError(f"receipt {rid[:12]}… cannot be recorded: {e}") from None
            ids.append(rid)
            owed += receipt.body.amount
        held = client.token_balance(escrow.account)
        if owed > held:
            top_up(ledger, client, escrow, payer, owed - held)
            self._step("topped_up", worker, amount=owed - held, account=str(escrow.account))
        released = 0
        if ids:
            before = client.token_balance(escrow.account)
            pay_from_escrow(ledger, client, escrow, payer, cosign, ids,
                            on_step=lambda name, info: self._step(name, worker, **info))
            released = before - client.token_balance(escrow.account)
        returned = close_escrow(ledger, client, escrow, payer, cosign,
                                on_step=lambda name, info: self._step(name, worker, **info))
        return released, returned

    def _step(self, name: str, worker: str, **info) -> None:
        if self.funds.on_step is not None:
            self.funds.on_step(name, {"worker": worker, **info})
