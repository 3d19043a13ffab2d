"""Credits: how fast receipts are recorded, how many fit one settlement transaction, and what
settling costs per receipt on the embedded chain.

Measured side by side in one run:

- ledger: N receipts (a third wearing a two-skin lineage) recorded one SQLite transaction each,
  next to the same receipts only signature-checked (the floor: two ed25519 verifications each),
  in alternating chunks of 100.
- packing: receipts to distinct recipients whose gold accounts exist (the worst case, one
  transfer per receipt) packed under the 1,232-byte packet limit as a legacy transaction (what
  settlement sends) and as a versioned transaction whose recipients come from an address lookup
  table (measured size only: settling that way needs the table created and extended on chain
  first).
- settle: M receipts to W workers settled end to end on an embedded chain over HTTP through
  solana-py (build, record, send, confirm, mark).

Last line: receipts_per_tx=<N> settle_ms_per_receipt=<ms> ledger_receipts_per_s=<N>
(receipts_per_tx is the legacy worst case: a full transaction of receipts to distinct recipients;
receipts to recipients already in the transaction share their transfer and cost only memo room).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from solders.address_lookup_table_account import AddressLookupTableAccount  # noqa: E402
from solders.message import MessageV0  # noqa: E402
from solders.pubkey import Pubkey  # noqa: E402
from solders.transaction import VersionedTransaction  # noqa: E402

from common.identity import load_or_create_identity  # noqa: E402
from swarm.credits.chain import ChainClient, keypair_for, pubkey_of  # noqa: E402
from swarm.credits.chain_server import make_server  # noqa: E402
from swarm.credits.ledger import Ledger  # noqa: E402
from swarm.credits.settle import PACKET_LIMIT, pack, settle, settlement_instructions  # noqa: E402
from swarm.jobs.receipt import Receipt, ReceiptBody, amount_for, sign_body, verify_receipt  # noqa: E402

SKIN, PARENT = "ee" * 32, "ff" * 32


def receipt(req, wrk, shard: int, skin: str | None = None) -> Receipt:
    body = ReceiptBody(job="ab" * 32, shard=shard, requester=req.public_hex,
                       worker=wrk.public_hex, model="cd" * 32, skin=skin, tokens_in=300,
                       tokens_out=100 + shard % 50, price_per_1k=2500,
                       amount=amount_for(300, 100 + shard % 50, 2500))
    return Receipt(body, sign_body(body, req), sign_body(body, wrk))


def bench_ledger(root: Path, n: int, chunk: int = 100) -> tuple[float, float]:
    """(receipts recorded per second, receipts signature-checked per second), measured in
    alternating chunks so both see the same machine load."""
    req, wrk, c1, c2 = (load_or_create_identity(root / "ids" / x) for x in ("r", "w", "c1", "c2"))
    split = [(c1.public_hex, SKIN, Fraction(7, 10)), (c2.public_hex, PARENT, Fraction(3, 10))]
    items = [(receipt(req, wrk, i, SKIN if i % 3 == 0 else None), i % 3 == 0) for i in range(n)]
    verify_s = record_s = 0.0
    with Ledger(root / "bench-ledger.sqlite", req.public_hex) as ledger:
        ledger.deposit("bench", req.public_hex, 10**15, "bench")
        for start in range(0, n, chunk):
            part = items[start:start + chunk]
            t = time.perf_counter()
            for r, _ in part:
                verify_receipt(r)
            verify_s += time.perf_counter() - t
            t = time.perf_counter()
            for r, skinned in part:
                ledger.record(r, split if skinned else None)
            record_s += time.perf_counter() - t
        assert ledger.audit().ok
    return n / record_s, n / verify_s


def alt_size(payer, gold, batch, blockhash) -> int:
    """Serialized size of the batch as a v0 transaction with recipients in a lookup table."""
    ixs = settlement_instructions(payer.pubkey(), gold, batch, {r.body.worker for r, _ in batch})
    recipients = [gold.account_of(pubkey_of(r.body.worker)) for r, _ in batch]
    table = AddressLookupTableAccount(key=Pubkey.new_unique(), addresses=recipients)
    msg = MessageV0.try_compile(payer.pubkey(), ixs, [table], blockhash)
    return len(bytes(VersionedTransaction(msg, [payer])))


def most_that_fit(sizes) -> int:
    n = 0
    for count, size in sizes:
        if size <= PACKET_LIMIT:
            n = count
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--receipts", type=int, default=2000, help="ledger receipts (default 2000)")
    ap.add_argument("--settle", type=int, default=400, help="receipts settled (default 400)")
    ap.add_argument("--workers", type=int, default=40, help="workers paid (default 40)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-credits-"))

    ledger_rate, verify_rate = bench_ledger(root, args.receipts)
    print(f"ledger: {ledger_rate:.0f} receipts/s recorded, {verify_rate:.0f}/s signature checks "
          f"alone (recording = {ledger_rate / verify_rate:.2f} x the verify-only rate)")

    server, chain = make_server(root / "chain", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = ChainClient(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        req = load_or_create_identity(root / "ids" / "r")
        payer = keypair_for(req)
        workers = [load_or_create_identity(root / "ids" / f"w{i}") for i in range(100)]
        gold = client.gold()
        blockhash, _ = client.latest_blockhash()
        distinct = [(receipt(req, w, i), []) for i, w in enumerate(workers)]
        legacy = pack(payer, gold, distinct, {w.public_hex for w in workers}, blockhash)
        full = max(len(b) for b, _ in legacy)
        per_tx = full  # the worst case: a full transaction, every receipt to a new recipient
        alt = most_that_fit((k, alt_size(payer, gold, distinct[:k], blockhash))
                            for k in range(1, len(distinct) + 1))
        print(f"packing (every receipt to its own recipient): legacy {full} receipts in "
              f"{max(len(bytes(t)) for _, t in legacy)} bytes "
              f"({len(distinct) / len(legacy):.1f} per tx over {len(distinct)}); "
              f"v0 + lookup table {alt} (= {alt / full:.1f} x legacy)")

        client.mint_gold(payer.pubkey(), 10**12)
        with Ledger(root / "settle-ledger.sqlite", req.public_hex) as ledger:
            ledger.deposit("airdrop", req.public_hex, 10**12, "bench")
            for i in range(args.workers):
                ledger.record(receipt(req, workers[i], i))
            settle(ledger, client, payer)  # creates the workers' gold accounts
            for i in range(args.workers, args.workers + args.settle):
                ledger.record(receipt(req, workers[i % args.workers], i))
            t = time.perf_counter()
            report = settle(ledger, client, payer)
            settle_ms = (time.perf_counter() - t) * 1000 / report.settled_receipts
            assert client.gold_balance(payer.pubkey()) == ledger.settled_balance()
        n_tx = len(report.transactions)
        print(f"settle: {report.settled_receipts} receipts to {args.workers} workers in {n_tx} "
              f"tx ({report.settled_receipts / n_tx:.0f} per tx: a worker's receipts share one "
              f"transfer), {settle_ms:.2f} ms per receipt")
    finally:
        client.close()
        server.shutdown()
        chain.close()
    print(f"receipts_per_tx={per_tx} settle_ms_per_receipt={settle_ms:.2f} "
          f"ledger_receipts_per_s={ledger_rate:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
