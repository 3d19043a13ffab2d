"""``hearth wallet``: gold credits — balances on the ledger and on chain, pending receipts,
history, settlement, audit, and airdrops on the embedded chain."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import msgspec

from common.identity import load_or_create_identity
from common.paths import data_dir
from game.cli_error import CliError
from game.notices import note
from npc.skins.manifest import SkinError
from swarm.credits.chain import ChainClient, ChainError, connect, keypair_for, load_wallet_settings
from swarm.credits.ledger import Ledger, LedgerError
from swarm.credits.escrow import recover_escrows
from swarm.credits.settle import SettleError, holdings, settle
from swarm.jobs.receipt import UNITS_PER_GOLD, Receipt

LEDGER_FILE = "ledger.sqlite"


def gold(units: int) -> str:
    """Micro-gold as gold, e.g. 1234567 -> '1.234567'."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_GOLD)
    return f"{sign}{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"


def parse_gold(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CliError(f"{text!r} is not an amount of gold (e.g. 5 or 0.25)") from None
    units = value * UNITS_PER_GOLD
    if units != units.to_integral_value() or units <= 0:
        raise CliError(f"{text!r}: an amount must be positive with at most 6 decimals")
    return int(units)


def ledger_path() -> Path:
    """One ledger per chain, so a switch to a real cluster starts a fresh book rather than
    counting embedded play money as settled there."""
    settings = load_wallet_settings()
    if settings.rpc_url is None:
        return data_dir() / "credits" / LEDGER_FILE
    import blake3
    key = settings.mint or blake3.blake3(settings.rpc_url.encode()).hexdigest()[:16]
    return data_dir() / "credits" / f"ledger-{key}.sqlite"


def open_ledger() -> tuple[Ledger, object]:
    """The wallet's ledger, with every receipt this machine's jobs produced recorded in it first
    (those of jobs it bought and of shards it served: nothing has to be recorded by hand)."""
    identity = load_or_create_identity()
    try:
        ledger = Ledger(ledger_path(), identity.public_hex)
    except LedgerError as e:
        raise CliError(str(e)) from None
    record_job_receipts(ledger)
    return ledger, identity


def record_job_receipts(ledger: Ledger) -> int:
    """Record the receipts in the local jobs stores (requester and worker side) the ledger does
    not hold yet; returns how many were new. A receipt the ledger refuses is reported and left
    out, never half-recorded."""
    from game.jobs_cli import jobs_dir
    from npc.skins.store import SkinStore
    from swarm.jobs.job_store import JobStore
    from swarm.jobs.receipt import receipt_id
    from swarm.jobs.worker_store import WorkerStore

    receipts = []
    for name, store_type in (("requester.sqlite", JobStore), ("worker.sqlite", WorkerStore)):
        path = jobs_dir() / name
        if path.exists():
            store = store_type(path)
            try:
                receipts += store.receipts()
            finally:
                store.close()
    known = ledger.receipts_by_id([receipt_id(r.body) for r in receipts]) if receipts else []
    new = 0
    skins = SkinStore()
    for receipt, have in zip(receipts, known):
        if have is not None:
            continue
        try:
            split = skins.royalty_split(receipt.body.skin) if receipt.body.skin else None
            new += ledger.record(receipt, split)
        except (LedgerError, SkinError) as e:
            note(f"hearth: receipt for job {receipt.body.job[:16]} shard {receipt.body.shard} "
                 f"not recorded: {e}")
    return new


def confirm_escrow_releases(ledger: Ledger, client: ChainClient) -> int:
    """Mark settled the receipts this machine's worker was paid for out of escrow (each release
    it co-signed, checked on chain as a settlement notice is). Returns how many were marked."""
    from game.jobs_cli import jobs_dir
    from swarm.jobs.worker_escrow import settle_released
    from swarm.jobs.worker_store import WorkerStore

    path = jobs_dir() / "worker.sqlite"
    if not path.exists():
        return 0
    store = WorkerStore(path)
    try:
        return settle_released(ledger, client, store)
    finally:
        store.close()


def skin_earnings(skin_id: str) -> dict[str, tuple[int, int]]:
    """creator -> (settled, pending) micro-gold earned from jobs wearing the skin, as far as this
    client's ledger knows ({} when there is no ledger yet: nothing is created to find out)."""
    path = ledger_path()
    if not path.exists():
        return {}
    ledger, _ = open_ledger()
    with ledger:
        return ledger.royalties_from(skin_id)


def _client(start: bool) -> ChainClient | None:
    """The chain client, or None when the chain does not answer (and is not to be started)."""
    try:
        return connect(load_wallet_settings(), start=start)
    except ChainError as e:
        if start:
            raise CliError(str(e)) from None
        return None


# ---- commands ----------------------------------------------------------------------------------

def cmd_wallet(args: argparse.Namespace) -> int:
    ledger, identity = open_ledger()
    with ledger:
        client = _client(start=False)
        on_chain = escrowed = None
        open_escrows = ledger.escrows("open", "opening")
        if client is not None:
            try:
                confirm_escrow_releases(ledger, client)
                on_chain = holdings(ledger, client)
                escrowed = on_chain - client.gold_balance(keypair_for(identity).pubkey())
            except ChainError:
                on_chain = None
            finally:
                client.close()
        pending = ledger.pending()
        out = {"account": identity.public_hex, "ledger": ledger.balance(),
               "settled": ledger.settled_balance(), "chain": on_chain,
               "escrowed": escrowed, "open_escrows": len(open_escrows),
               "pending": [{"receipt": rid, "job": r.body.job, "shard": r.body.shard,
                            "amount": r.body.amount, "paying": r.body.requester ==
                            identity.public_hex, "batch": sig} for rid, r, sig in pending],
               "history": ledger.history(limit=args.limit)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"account  {identity.public_hex}")
    print(f"ledger   {gold(out['ledger'])} gold (settled {gold(out['settled'])})")
    print(f"chain    " + (f"{gold(on_chain)} gold" if on_chain is not None
                          else "not reachable (start it with `hearth chain`)"))
    if out["open_escrows"]:
        print(f"escrow   {out['open_escrows']} open escrow(s) of your jobs" +
              (f" hold {gold(escrowed)} of it" if escrowed is not None else "") +
              " (run the job again to pay them out and refund the rest)")
    owe = sum(p["amount"] for p in out["pending"] if p["paying"])
    print(f"pending  {len(pending)} receipt(s); you owe {gold(owe)} gold on them")
    if out["history"]:
        print("history (newest first):")
    for h in out["history"]:
        state = "settled" if h["settled"] else "pending"
        what = h["note"] or h["role"]
        print(f"  {gold(h['amount']):>14}  {what:<9} {state:<8} {h['ref'][:16]}…")
    return 0


def cmd_settle(args: argparse.Namespace) -> int:
    ledger, identity = open_ledger()
    with ledger:
        client = _client(start=True)
        try:
            def step(name: str, info: dict) -> None:
                if name == "settled":
                    print(f"settled {info['receipts']} receipt(s) in {info['signature']}",
                          file=sys.stderr, flush=True)
                elif name == "recovered":
                    print(f"resolved an interrupted settlement {info['signature']}: "
                          f"{info['status'] or 'expired'}", file=sys.stderr, flush=True)
            recover_escrows(ledger, client)
            confirm_escrow_releases(ledger, client)
            report = settle(ledger, client, keypair_for(identity), on_step=step)
        except (SettleError, ChainError, LedgerError) as e:
            raise CliError(str(e)) from None
        finally:
            client.close()
    print(f"{report.settled_receipts} receipt(s) settled in {len(report.transactions)} "
          f"transaction(s)" + (f"; {report.expired} stale transaction(s) replaced"
                               if report.expired else ""))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    ledger, identity = open_ledger()
    with ledger:
        report = ledger.audit()
        problems = list(report.problems)
        client = _client(start=False)
        checked_chain = False
        if client is not None:
            try:
                confirm_escrow_releases(ledger, client)
                on_chain = holdings(ledger, client)
                checked_chain = True
                open_batches = ledger.open_batches()
                if open_batches:
                    problems.append(f"{len(open_batches)} settlement(s) were interrupted: run "
                                    f"`hearth wallet settle` to resolve them, then audit again")
                else:
                    low = ledger.settled_balance()
                    high = low + ledger.pending_incoming()
                    if not low <= on_chain <= high:
                        expected = gold(low) if low == high else f"{gold(low)} to {gold(high)}"
                        problems.append(f"the chain holds {gold(on_chain)} gold; the ledger "
                                        f"expects {expected}")
            except ChainError:
                pass
            finally:
                client.close()
    print(f"checked {report.receipts} receipt(s) and {report.deposits} deposit(s) against the "
          f"ledger's entries; " + ("checked against the chain" if checked_chain else
                                   "the chain was not reachable: not checked against it"))
    if problems:
        for p in problems:
            print(f"  problem: {p}")
        raise CliError(f"audit found {len(problems)} problem(s)", exit_code=1)
    print("the books balance")
    return 0


def cmd_airdrop(args: argparse.Namespace) -> int:
    units = parse_gold(args.amount)
    ledger, identity = open_ledger()
    with ledger:
        client = _client(start=True)
        try:
            if not client.gold().embedded:
                raise CliError("airdrops exist only on the embedded chain; this wallet is on a "
                               f"real cluster ({client.url})")
            sig = client.mint_gold(keypair_for(identity).pubkey(), units)
            ledger.deposit(sig, identity.public_hex, units, "airdrop")
        except (ChainError, LedgerError) as e:
            raise CliError(str(e)) from None
        finally:
            client.close()
    print(f"airdropped {gold(units)} gold ({sig})")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Record receipts from a file (one JSON receipt per line), each in its own transaction."""
    from npc.skins.store import SkinStore

    ledger, _ = open_ledger()
    new = old = 0
    with ledger:
        for n, line in enumerate(args.file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                receipt = msgspec.json.decode(line, type=Receipt)
            except msgspec.DecodeError as e:
                raise CliError(f"{args.file}:{n}: not a receipt ({e})") from None
            split = SkinStore().royalty_split(receipt.body.skin) if receipt.body.skin else None
            try:
                if ledger.record(receipt, split):
                    new += 1
                else:
                    old += 1
            except LedgerError as e:
                raise CliError(f"{args.file}:{n}: {e}") from None
    print(f"recorded {new} receipt(s)" + (f"; {old} already recorded" if old else ""))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from swarm.credits.settle import count_outside_gold

    ledger, _ = open_ledger()
    with ledger:
        client = _client(start=True)
        try:
            added = count_outside_gold(ledger, client)
        except (SettleError, ChainError, LedgerError) as e:
            raise CliError(str(e)) from None
        finally:
            client.close()
    print(f"counted {gold(added)} gold from outside the ledger" if added else
          "the ledger already explains everything your wallet holds")
    return 0


def cmd_notices(args: argparse.Namespace) -> int:
    from swarm.credits.notice import notices_from

    ledger, _ = open_ledger()
    with ledger:
        notices = notices_from(ledger)
    args.out.write_bytes(b"".join(msgspec.json.encode(n) + b"\n" for n in notices))
    print(f"wrote {len(notices)} settlement notice(s) to {args.out}")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from swarm.credits.notice import NoticeError, SettlementNotice, apply_notice

    ledger, _ = open_ledger()
    marked = 0
    with ledger:
        client = _client(start=True)
        try:
            for n, line in enumerate(args.file.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    notice = msgspec.json.decode(line, type=SettlementNotice)
                    marked += apply_notice(ledger, client, notice)
                except (msgspec.DecodeError, NoticeError, ChainError) as e:
                    raise CliError(f"{args.file}:{n}: {e}") from None
        finally:
            client.close()
    print(f"{marked} of your receipt(s) confirmed settled")
    return 0


def add_commands(sub) -> None:
    wp = sub.add_parser(
        "wallet", help="your gold credits: balance, pending receipts, settle, audit",
        description="Gold is the credit Hearth's compute market pays in: a requester pays "
                    "workers for accepted shards, and part of every job that wears a skin goes "
                    "to the skin's creators. Receipts are recorded in a local ledger and settled "
                    "as an SPL token on a Solana chain (the embedded one by default; rpc_url in "
                    "wallet.toml for a real cluster). With no subcommand: balances on the ledger "
                    "and on chain, pending receipts and recent history.")
    wp.add_argument("--json", action="store_true", help="print one JSON object")
    wp.add_argument("--limit", type=int, default=10, metavar="N", help="history lines (default 10)")
    wp.set_defaults(func=cmd_wallet)
    wsub = wp.add_subparsers(dest="wallet_command", metavar="SUBCOMMAND")

    p = wsub.add_parser("settle", help="pay your pending receipts on chain",
                        description="Pack your unpaid receipts into as few SPL transfer "
                                    "transactions as fit, each with a memo naming its receipts, "
                                    "and send them. Safe to interrupt: the next run finishes or "
                                    "replaces what was in flight and never pays twice.")
    p.set_defaults(func=cmd_settle)

    p = wsub.add_parser("audit", help="check the ledger against its receipts and the chain",
                        description="Re-verify every receipt and recompute every balance from "
                                    "the receipts alone, then compare the settled balance with "
                                    "the chain when it is reachable (and say whether it was). "
                                    "Exits 1 when anything disagrees.")
    p.set_defaults(func=cmd_audit)

    p = wsub.add_parser("airdrop", help="mint test gold on the embedded chain",
                        description="Mint N gold (and lamports for fees) to your wallet so a "
                                    "new requester can try a job. Only the embedded chain does "
                                    "this; it is refused on a real cluster.")
    p.add_argument("amount", metavar="N", help="gold to mint (up to 6 decimals)")
    p.set_defaults(func=cmd_airdrop)

    p = wsub.add_parser("record", help="record receipts from a file",
                        description="Verify and record signed receipts (one JSON receipt per "
                                    "line). A receipt that wore a skin pays royalties along the "
                                    "skin's lineage, so the skin must be installed. Recording a "
                                    "receipt twice changes nothing.")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_record)

    p = wsub.add_parser("sync", help="count gold that reached your wallet from outside",
                        description="Gold bought or sent to your wallet outside Hearth is not in "
                                    "your ledger, so it cannot pay receipts. This records the "
                                    "part of your chain balance the ledger cannot explain (beyond "
                                    "its settled balance and what unconfirmed receipts may have "
                                    "paid you) as a deposit.")
    p.set_defaults(func=cmd_sync)

    p = wsub.add_parser("notices", help="write notices of the settlements you paid",
                        description="Write one settlement notice per transaction that paid your "
                                    "receipts (its signed bytes and the receipt ids its memo "
                                    "names), for the workers and creators you paid.")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=cmd_notices)

    p = wsub.add_parser("confirm", help="mark receipts settled from a payer's notices",
                        description="Check each notice against the chain (signatures, the "
                                    "memo naming its receipts, that it executed, what it paid "
                                    "you) and mark the receipts you hold that it paid as "
                                    "settled.")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_confirm)
