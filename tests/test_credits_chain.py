"""The embedded chain through solana-py: persistence, replay refusal, packet-size packing."""

from __future__ import annotations

import json
import urllib.request

import pytest
from credits_helpers import client_for, make_receipt, party, running_chain
from solders.message import Message
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import transfer
from spl.token.models import TransferParams

from swarm.credits.chain import ChainError, keypair_for
from swarm.credits.settle import PACKET_LIMIT, pack


def _gold_transfer(client, sender, receiver, amount, blockhash=None):
    gold = client.gold()
    blockhash = blockhash or client.latest_blockhash()[0]
    ix = transfer(TransferParams(program_id=TOKEN_PROGRAM_ID,
                                 source=gold.account_of(sender.pubkey()),
                                 dest=gold.account_of(receiver.pubkey()),
                                 owner=sender.pubkey(), amount=amount))
    return Transaction([sender], Message([ix], sender.pubkey()), blockhash)


def test_gold_and_accounts_survive_a_restart_and_old_transactions_do_not(tmp_path):
    a, b = keypair_for(party(tmp_path, "a")), keypair_for(party(tmp_path, "b"))
    with running_chain(tmp_path / "chain") as chain:
        with client_for(chain) as client:
            mint = client.gold().mint
            client.mint_gold(a.pubkey(), 5_000_000)
            client.mint_gold(b.pubkey(), 1)
            executed = _gold_transfer(client, a, b, 1_000)
            client.wait(client.send(bytes(executed)))
            with pytest.raises(ChainError, match="already been processed"):
                client.send(bytes(executed))
            never_sent = _gold_transfer(client, a, b, 2_000)
            height = client.block_height()
        chain.restart()
        with client_for(chain) as client:
            assert client.gold().mint == mint
            assert client.gold_balance(a.pubkey()) == 4_999_000
            assert client.gold_balance(b.pubkey()) == 1_001
            assert client.block_height() == height + 1
            assert client.statuses([str(executed.signatures[0])]) == ["ok"]
            for stale in (executed, never_sent):
                with pytest.raises(ChainError, match="refused"):
                    client.send(bytes(stale))
            assert client.gold_balance(a.pubkey()) == 4_999_000
            fresh = _gold_transfer(client, a, b, 2_000)
            assert client.wait(client.send(bytes(fresh))) == "ok"
            assert client.gold_balance(b.pubkey()) == 3_001


def test_a_transfer_without_the_owner_signature_or_funds_is_refused(tmp_path):
    a, b = keypair_for(party(tmp_path, "a")), keypair_for(party(tmp_path, "b"))
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client:
        client.mint_gold(a.pubkey(), 100)
        client.mint_gold(b.pubkey(), 100)
        with pytest.raises(ChainError, match="refused"):
            client.send(bytes(_gold_transfer(client, a, b, 101)))
        assert client.gold_balance(a.pubkey()) == 100


def test_bad_requests_get_json_rpc_errors(tmp_path):
    with running_chain(tmp_path / "chain") as chain:
        def call(method, params):
            req = urllib.request.Request(chain.url, json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
                {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        assert call("noSuchMethod", [])["error"]["code"] == -32601
        assert "invalid transaction" in call("sendTransaction",
                                             ["AAAA", {"encoding": "base64"}])["error"]["message"]
        assert call("getAccountInfo", ["not-a-key"])["error"]["code"] in (-32602, -32603)
        assert call("getHealth", [])["result"] == "ok"


def test_settlement_transactions_fit_a_packet_and_carry_at_least_15_receipts(tmp_path):
    req = party(tmp_path, "req")
    workers = [party(tmp_path, f"w{i}") for i in range(60)]
    payer = keypair_for(req)
    receipts = [(make_receipt(req, w, shard=i), []) for i, w in enumerate(workers)]
    with running_chain(tmp_path / "chain") as chain, client_for(chain) as client:
        gold = client.gold()
        blockhash = client.latest_blockhash()[0]
        known = {w.public_hex for w in workers}  # recipients that already hold gold accounts
        packed = pack(payer, gold, receipts, known, blockhash)
        fresh = pack(payer, gold, receipts, set(), blockhash)
    sizes = [len(bytes(tx)) for _, tx in packed + fresh]
    assert max(sizes) <= PACKET_LIMIT
    assert sum(len(batch) for batch, _ in packed) == len(receipts)
    per_tx = len(receipts) / len(packed)
    assert per_tx >= 15, per_tx
    assert len(fresh) > len(packed)  # creating recipients' accounts costs room


def test_airdrops_are_refused_on_a_chain_that_is_not_the_embedded_one(tmp_path):
    """A real cluster answers Hearth's own methods with "method not found"; the embedded chain
    with those methods turned away stands in for one (no public cluster is contacted)."""
    from swarm.credits.chain import ChainClient
    from swarm.credits.chain_server import RpcError

    with running_chain(tmp_path / "chain") as chain:
        real_handle = chain.chain.handle

        def cluster_like(method, params):
            if method.startswith("hearth"):
                raise RpcError(-32601, f"Method not found: {method}")
            return real_handle(method, params)
        chain.chain.handle = cluster_like
        with ChainClient(chain.url) as client:
            with pytest.raises(ChainError, match="set mint"):
                client.gold()
        with ChainClient(chain.url, mint=str(chain.chain.mint)) as client:
            gold = client.gold()
            assert not gold.embedded and gold.decimals == 6
            with pytest.raises(ChainError, match="only on the embedded chain"):
                client.mint_gold(keypair_for(party(tmp_path, "a")).pubkey(), 5)
