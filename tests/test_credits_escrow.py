"""Escrow through a 2-of-2 SPL multisig on the embedded chain, kept in the requester's ledger."""

from __future__ import annotations

import pytest
from credits_helpers import SKIN, client_for, lineage, make_receipt, party, running_chain
from solders.message import Message
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import transfer
from spl.token.models import TransferParams

from swarm.credits.chain import ChainError, keypair_for, pubkey_of
from swarm.credits.escrow import (
    EscrowError, close_escrow, escrow_from, open_escrow, pay_from_escrow, recover_escrows,
    release_message, sign, submit,
)
from swarm.credits.ledger import Ledger
from swarm.credits.settle import holdings


def test_escrow_locks_releases_with_both_signatures_and_returns_the_rest(tmp_path):
    ids = {n: party(tmp_path, n) for n in ("req", "wrk", "c1", "c2")}
    req, wrk, cre = (keypair_for(ids[n]) for n in ("req", "wrk", "c1"))
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client, \
            Ledger(tmp_path / "ledger.sqlite", ids["req"].public_hex) as ledger:
        sig = client.mint_gold(req.pubkey(), 10_000_000)
        ledger.deposit(sig, ids["req"].public_hex, 10_000_000, "airdrop")
        client.mint_gold(wrk.pubkey(), 1)  # fee lamports for the worker
        client.mint_gold(cre.pubkey(), 1)
        escrow = open_escrow(ledger, client, req, wrk.pubkey(), 6_000_000)
        assert [e["status"] for e in ledger.escrows()] == ["open"]
        assert client.token_balance(escrow.account) == 6_000_000
        assert client.gold_balance(req.pubkey()) == 4_000_000
        assert holdings(ledger, client) == ledger.settled_balance() == 10_000_000

        # a hand-made release: both signatures are needed, and only the parties' count
        blockhash, _ = client.latest_blockhash()
        msg = release_message(client, escrow, {wrk.pubkey(): 1_000}, wrk.pubkey(), blockhash)
        with pytest.raises(EscrowError, match="still needs the signature"):
            submit(client, msg, {wrk.pubkey(): sign(msg, wrk)})
        with pytest.raises(EscrowError, match="is not a signer"):
            sign(msg, cre)
        forged = {wrk.pubkey(): sign(msg, wrk), req.pubkey(): cre.sign_message(bytes(msg))}
        with pytest.raises(EscrowError, match="does not match"):
            submit(client, msg, forged)
        # one party alone cannot move escrowed gold, even signing the transfer itself
        gold = client.gold()
        alone = transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=escrow.account,
                                        dest=gold.account_of(req.pubkey()),
                                        owner=escrow.multisig, amount=5_000_000,
                                        signers=[req.pubkey()]))
        tx = Transaction([req], Message([alone], req.pubkey()), client.latest_blockhash()[0])
        with pytest.raises(ChainError, match="refused"):
            client.send(bytes(tx))

        # accepted shards: recorded receipts paid out of the escrow, royalties and all
        receipts = [make_receipt(ids["req"], ids["wrk"], shard=i, skin=SKIN if i % 2 else None)
                    for i in range(4)]
        for r in receipts:
            ledger.record(r, lineage(ids["c1"], ids["c2"]) if r.body.skin else None)
        worker_cosigns = lambda message, _sig, _ids: sign(message, wrk)  # noqa: E731
        assert pay_from_escrow(ledger, client, escrow, req, worker_cosigns) == 4
        assert not ledger.pending()
        for who in ("wrk", "c1", "c2"):
            on_chain = client.gold_balance(pubkey_of(ids[who].public_hex))
            assert on_chain == ledger.settled_balance(ids[who].public_hex) + (1 if who != "c2"
                                                                              else 0)
        assert client.gold_balance(req.pubkey()) == 4_000_000  # nothing left the wallet itself
        assert holdings(ledger, client) == ledger.settled_balance()

        # the job completes: the rest goes back and the escrow account is closed
        returned = close_escrow(ledger, client, escrow, req, worker_cosigns)
        assert returned == 6_000_000 - sum(r.body.amount for r in receipts)
        assert client.accounts_exist([escrow.account]) == [False]
        assert client.gold_balance(req.pubkey()) == ledger.settled_balance()
        assert ledger.audit().ok
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client:
        # after a restart the closed escrow stays closed and every balance is as it was
        assert client.accounts_exist([escrow.account]) == [False]
        assert client.gold_balance(req.pubkey()) == 10_000_000 - sum(r.body.amount
                                                                     for r in receipts)


def test_an_escrow_whose_opening_never_landed_is_forgotten_after_a_restart(tmp_path):
    req_id, wrk_id = party(tmp_path, "req"), party(tmp_path, "wrk")
    req = keypair_for(req_id)
    with running_chain(tmp_path / "chain") as chain, \
            Ledger(tmp_path / "ledger.sqlite", req_id.public_hex) as ledger:
        with client_for(chain) as client:
            ledger.deposit(client.mint_gold(req.pubkey(), 1_000_000), req_id.public_hex,
                           1_000_000, "airdrop")
            broken = client.send  # the process dies after recording, before sending

            def die(raw):
                raise KeyboardInterrupt
            client.send = die
            with pytest.raises(KeyboardInterrupt):
                open_escrow(ledger, client, req, keypair_for(wrk_id).pubkey(), 500_000)
            client.send = broken
            [row] = ledger.escrows()
            assert row["status"] == "opening"
            assert holdings(ledger, client) == 1_000_000
        chain.restart()
        with client_for(chain) as client:
            recover_escrows(ledger, client)
            assert [e["status"] for e in ledger.escrows()] == ["failed"]
            assert escrow_from(ledger, row).worker == keypair_for(wrk_id).pubkey()
            assert holdings(ledger, client) == ledger.settled_balance() == 1_000_000
