"""Escrow through a 2-of-2 SPL multisig on the embedded chain."""

from __future__ import annotations

import pytest
from credits_helpers import client_for, party, running_chain
from solders.message import Message
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import transfer
from spl.token.models import TransferParams

from swarm.credits.chain import ChainError, keypair_for
from swarm.credits.escrow import (
    EscrowError, open_escrow, refund_message, release_message, sign, submit,
)


def test_escrow_locks_releases_with_both_signatures_and_returns_the_rest(tmp_path):
    req, wrk, cre = (keypair_for(party(tmp_path, n)) for n in ("req", "wrk", "cre"))
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client:
        client.mint_gold(req.pubkey(), 10_000_000)
        client.mint_gold(wrk.pubkey(), 1)  # fee lamports for the worker
        escrow, _ = open_escrow(client, req, wrk.pubkey(), 6_000_000)
        assert client.token_balance(escrow.account) == 6_000_000
        assert client.gold_balance(req.pubkey()) == 4_000_000

        # a shard accepted: 900,000 to the worker, 100,000 royalty to the skin's creator
        blockhash, _ = client.latest_blockhash()
        msg = release_message(client, escrow, {wrk.pubkey(): 900_000, cre.pubkey(): 100_000},
                              wrk.pubkey(), blockhash)
        with pytest.raises(EscrowError, match="still needs the signature"):
            submit(client, msg, {wrk.pubkey(): sign(msg, wrk)})
        with pytest.raises(EscrowError, match="is not a signer"):
            sign(msg, cre)
        forged = {wrk.pubkey(): sign(msg, wrk), req.pubkey(): cre.sign_message(bytes(msg))}
        with pytest.raises(EscrowError, match="does not match"):
            submit(client, msg, forged)
        submit(client, msg, {wrk.pubkey(): sign(msg, wrk), req.pubkey(): sign(msg, req)})
        assert client.gold_balance(wrk.pubkey()) == 900_001
        assert client.gold_balance(cre.pubkey()) == 100_000

        # one party alone cannot move escrowed gold, even signing the transfer itself
        gold = client.gold()
        alone = transfer(TransferParams(program_id=TOKEN_PROGRAM_ID, source=escrow.account,
                                        dest=gold.account_of(req.pubkey()),
                                        owner=escrow.multisig, amount=5_000_000,
                                        signers=[req.pubkey()]))
        tx = Transaction([req], Message([alone], req.pubkey()), client.latest_blockhash()[0])
        with pytest.raises(ChainError, match="refused"):
            client.send(bytes(tx))

        # the job completes: the rest goes back and the escrow account is closed
        blockhash, _ = client.latest_blockhash()
        msg = refund_message(client, escrow, client.token_balance(escrow.account), blockhash)
        submit(client, msg, {req.pubkey(): sign(msg, req), wrk.pubkey(): sign(msg, wrk)})
        assert client.gold_balance(req.pubkey()) == 9_000_000
        assert client.accounts_exist([escrow.account]) == [False]
        total = sum(client.gold_balance(k.pubkey()) for k in (req, wrk, cre))
        assert total == 10_000_001
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client:
        # after a restart the closed escrow stays closed and every balance is as it was
        assert client.accounts_exist([escrow.account]) == [False]
        assert client.gold_balance(req.pubkey()) == 9_000_000
