"""The embedded chain: one LiteSVM (the Solana runtime solders ships) behind the part of Solana's
JSON-RPC that Hearth's chain client uses, so requester, workers and creators on one machine or
LAN all see one chain, through the same client code a real cluster is reached with.

State lives in ``<dir>/chain.sqlite``: every account a transaction touched (written before the
answer goes back, in one SQLite transaction with the signature's status), the gold mint and its
authority, and the blockhash position. LiteSVM's blockhashes are a fixed sequence and its memory
of processed signatures dies with the process, so a chain restored from its accounts alone would
accept an old transaction again. Each start therefore moves one step further along the sequence
than any earlier run reached (the position is persisted first), which makes every transaction
signed before a restart stale, and the persisted signature table refuses exact replays too.

Blocks: LiteSVM has none. Block height and slot here are the blockhash position, and a blockhash
is valid until the next restart; ``lastValidBlockHeight`` says so, which is all a client needs
to tell "may still land" from "can never land".

Custom methods (a real cluster answers them with "method not found", which is how a client tells
the embedded chain from a real one): ``hearthGold`` (the mint and its decimals) and
``hearthMintGold`` (an airdrop of gold and fee lamports to a wallet).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from solders.account import Account
from solders.address_lookup_table_account import AddressLookupTable
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token.constants import TOKEN_PROGRAM_ID
from spl.token.instructions import (
    create_idempotent_associated_token_account, get_associated_token_address, initialize_mint2,
    mint_to,
)
from spl.token.models import InitializeMint2Params, MintToParams

GOLD_DECIMALS = 6
MINT_SIZE = 82
#: Lamports an airdrop of gold brings along, so a new wallet can pay transaction fees and the
#: rent of the token accounts its settlements create.
FEE_LAMPORTS = 1_000_000_000
DEFAULT_LISTEN = "127.0.0.1:8899"
LOCK_FILE = "chain.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (pubkey TEXT PRIMARY KEY, account BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signatures (signature TEXT PRIMARY KEY, slot INTEGER NOT NULL,
                                       err TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RpcError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class ChainBusy(RuntimeError):
    """Another process already serves the chain in this directory."""


class EmbeddedChain:
    """LiteSVM plus its persisted state. Not thread-safe: the server holds a lock around it."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ChainBusy(f"{self.dir}: another process is serving this chain") from None
        self.db = sqlite3.connect(self.dir / "chain.sqlite", isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.svm = LiteSVM()
        for key, blob in self.db.execute("SELECT pubkey, account FROM accounts"):
            self.svm.set_account(Pubkey.from_string(key), Account.from_bytes(blob))
        # Step past every blockhash an earlier run handed out, and persist that before serving.
        self.position = int(self._meta("position") or 0) + 1
        self._set_meta("position", str(self.position))
        for _ in range(self.position):
            self.svm.expire_blockhash()
        if self._meta("mint") is None:
            self._create_mint()
        self.mint = Pubkey.from_string(self._meta("mint"))
        self.mint_authority = Keypair.from_base58_string(self._meta("mint_authority"))

    def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)

    # ---- state ---------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _persist(self, keys: list[Pubkey], signature: str | None, err: str | None) -> None:
        rows, closed = [], []
        for key in keys:
            acct = self.svm.get_account(key)
            if acct is None or acct.lamports == 0:
                closed.append((str(key),))  # a closed account must not come back on restart
            else:
                rows.append((str(key), bytes(acct)))
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?)", rows)
            db.executemany("DELETE FROM accounts WHERE pubkey = ?", closed)
            if signature is not None and err is None:
                db.execute("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?)",
                           (signature, self.position, err))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _touched(self, tx: VersionedTransaction) -> list[Pubkey]:
        msg = tx.message
        keys = list(msg.account_keys)
        if isinstance(msg, MessageV0):
            for lookup in msg.address_table_lookups:
                table = self.svm.get_account(lookup.account_key)
                if table is None:
                    continue
                addresses = AddressLookupTable.deserialize(bytes(table.data)).addresses
                for i in list(lookup.writable_indexes) + list(lookup.readonly_indexes):
                    if i < len(addresses):
                        keys.append(addresses[i])
        return keys

    def _execute(self, tx: VersionedTransaction | Transaction, signers_persist: list[Pubkey]
                 | None = None) -> str:
        """Run one transaction; persist what it touched; return its signature or raise."""
        vtx = tx if isinstance(tx, VersionedTransaction) else VersionedTransaction.from_bytes(
            bytes(tx))
        sig = str(vtx.signatures[0])
        if self.db.execute("SELECT 1 FROM signatures WHERE signature = ?", (sig,)).fetchone():
            raise RpcError(-32002, "Transaction simulation failed: This transaction has already "
                                   "been processed", {"err": "AlreadyProcessed", "logs": []})
        result = self.svm.send_transaction(vtx)
        keys = self._touched(vtx) + (signers_persist or [])
        if isinstance(result, FailedTransactionMetadata):
            info = json.loads(result.to_json())
            self._persist(keys, sig, "failed")  # the fee was still taken
            raise RpcError(-32002, f"Transaction simulation failed: {info['err']}",
                           {"err": info["err"], "logs": info["meta"].get("logs", []),
                            "accounts": None, "unitsConsumed": 0, "returnData": None})
        self._persist(keys, sig, None)
        return sig

    def _create_mint(self) -> None:
        authority = Keypair()
        mint = Keypair()
        self.svm.airdrop(authority.pubkey(), 10 * FEE_LAMPORTS)
        rent = self.svm.minimum_balance_for_rent_exemption(MINT_SIZE)
        ixs = [create_account(CreateAccountParams(from_pubkey=authority.pubkey(),
                                                  to_pubkey=mint.pubkey(), lamports=rent,
                                                  space=MINT_SIZE, owner=TOKEN_PROGRAM_ID)),
               initialize_mint2(InitializeMint2Params(program_id=TOKEN_PROGRAM_ID,
                                                      mint=mint.pubkey(),
                                                      decimals=GOLD_DECIMALS,
                                                      mint_authority=authority.pubkey(),
                                                      freeze_authority=None))]
        tx = Transaction([authority, mint], Message(ixs, authority.pubkey()),
                         self.svm.latest_blockhash())
        self._execute(tx)
        self._set_meta("mint_authority", str(authority))
        self._set_meta("mint", str(mint.pubkey()))

    # ---- RPC methods ---------------------------------------------------------------------------

    def _context(self) -> dict:
        return {"slot": self.position, "apiVersion": "2.2.0"}

    def handle(self, method: str, params: list) -> object:
        fn = getattr(self, "rpc_" + method, None)
        if fn is None:
            raise RpcError(-32601, f"Method not found: {method}")
        try:
            return fn(*params)
        except RpcError:
            raise
        except (TypeError, ValueError) as e:
            raise RpcError(-32602, f"Invalid params: {e}") from None

    def rpc_getHealth(self, *_):
        return "ok"

    def rpc_getVersion(self, *_):
        return {"solana-core": "2.2.0", "feature-set": 0}

    def rpc_getGenesisHash(self, *_):
        return str(Hash.hash(self._meta("mint").encode()))

    def rpc_getSlot(self, *_):
        return self.position

    def rpc_getBlockHeight(self, *_):
        return self.position

    def rpc_getLatestBlockhash(self, *_):
        return {"context": self._context(),
                "value": {"blockhash": str(self.svm.latest_blockhash()),
                          "lastValidBlockHeight": self.position}}

    def rpc_isBlockhashValid(self, blockhash: str, *_):
        return {"context": self._context(),
                "value": blockhash == str(self.svm.latest_blockhash())}

    def rpc_getMinimumBalanceForRentExemption(self, size: int, *_):
        return self.svm.minimum_balance_for_rent_exemption(int(size))

    def rpc_sendTransaction(self, data: str, config: dict | None = None):
        encoding = (config or {}).get("encoding", "base58")
        if encoding != "base64":
            raise RpcError(-32602, f"only base64-encoded transactions are accepted, not {encoding}")
        try:
            tx = VersionedTransaction.from_bytes(base64.b64decode(data))
        except Exception as e:  # solders raises its own error types for malformed bytes
            raise RpcError(-32602, f"invalid transaction: {e}") from None
        if not tx.signatures:
            raise RpcError(-32602, "invalid transaction: it carries no signature")
        return self._execute(tx)

    def rpc_getSignatureStatuses(self, signatures: list[str], *_):
        out = []
        for sig in signatures:
            row = self.db.execute("SELECT slot FROM signatures WHERE signature = ?",
                                  (sig,)).fetchone()
            out.append(None if row is None else {
                "slot": row[0], "confirmations": None, "err": None, "status": {"Ok": None},
                "confirmationStatus": "finalized"})
        return {"context": self._context(), "value": out}

    def _account_json(self, key: str) -> dict | None:
        acct = self.svm.get_account(Pubkey.from_string(key))
        if acct is None or (acct.lamports == 0 and not acct.data):
            return None
        return {"data": [base64.b64encode(bytes(acct.data)).decode(), "base64"],
                "executable": acct.executable, "lamports": acct.lamports,
                "owner": str(acct.owner), "rentEpoch": 0, "space": len(acct.data)}

    def rpc_getAccountInfo(self, key: str, *_):
        return {"context": self._context(), "value": self._account_json(key)}

    def rpc_getMultipleAccounts(self, keys: list[str], *_):
        return {"context": self._context(), "value": [self._account_json(k) for k in keys]}

    def rpc_getBalance(self, key: str, *_):
        return {"context": self._context(),
                "value": self.svm.get_balance(Pubkey.from_string(key)) or 0}

    def _token_amount(self, amount: int) -> dict:
        ui = amount / 10**GOLD_DECIMALS
        return {"amount": str(amount), "decimals": GOLD_DECIMALS, "uiAmount": ui,
                "uiAmountString": f"{ui:.{GOLD_DECIMALS}f}".rstrip("0").rstrip(".")}

    def rpc_getTokenAccountBalance(self, key: str, *_):
        acct = self.svm.get_account(Pubkey.from_string(key))
        if acct is None or acct.owner != TOKEN_PROGRAM_ID or len(acct.data) < 72:
            raise RpcError(-32602, "Invalid param: could not find account")
        return {"context": self._context(),
                "value": self._token_amount(int.from_bytes(bytes(acct.data)[64:72], "little"))}

    def rpc_getTokenSupply(self, mint: str, *_):
        acct = self.svm.get_account(Pubkey.from_string(mint))
        if acct is None or acct.owner != TOKEN_PROGRAM_ID:
            raise RpcError(-32602, "Invalid param: not a Token mint")
        return {"context": self._context(),
                "value": self._token_amount(int.from_bytes(bytes(acct.data)[36:44], "little"))}

    def rpc_requestAirdrop(self, key: str, lamports: int, *_):
        owner = Pubkey.from_string(key)
        result = self.svm.airdrop(owner, int(lamports))
        if isinstance(result, FailedTransactionMetadata):
            raise RpcError(-32002, f"airdrop failed: {result.err()}")
        self._persist([owner, self.svm.airdrop_pubkey()], None, None)
        return str(result.signature())

    def rpc_hearthGold(self, *_):
        return {"mint": str(self.mint), "decimals": GOLD_DECIMALS, "embedded": True}

    def rpc_hearthMintGold(self, key: str, amount: int, *_):
        owner = Pubkey.from_string(key)
        amount = int(amount)
        if not 0 < amount < 2**64:
            raise RpcError(-32602, f"Invalid params: amount {amount} is out of range")
        if (self.svm.get_balance(owner) or 0) < FEE_LAMPORTS // 10:
            self.rpc_requestAirdrop(key, FEE_LAMPORTS)
        auth = self.mint_authority
        ata = get_associated_token_address(owner, self.mint)
        ixs = [create_idempotent_associated_token_account(auth.pubkey(), owner, self.mint),
               mint_to(MintToParams(program_id=TOKEN_PROGRAM_ID, mint=self.mint, dest=ata,
                                    mint_authority=auth.pubkey(), amount=amount)),
               # A nonce, so two equal airdrops under one blockhash are two transactions.
               create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=auth.pubkey(),
                                      message=os.urandom(8).hex().encode()))]
        if (self.svm.get_balance(auth.pubkey()) or 0) < FEE_LAMPORTS:
            self.svm.airdrop(auth.pubkey(), 10 * FEE_LAMPORTS)
        tx = Transaction([auth], Message(ixs, auth.pubkey()), self.svm.latest_blockhash())
        return self._execute(tx, [auth.pubkey()])


# ---- the HTTP server -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    chain: EmbeddedChain
    lock: threading.Lock

    def log_message(self, *_):  # one line per request would drown the caller's terminal
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length))
        except ValueError:
            return self._reply({"jsonrpc": "2.0", "id": None,
                                "error": {"code": -32700, "message": "Parse error"}})
        if isinstance(request, list):
            return self._reply([self._one(r) for r in request])
        return self._reply(self._one(request))

    def _one(self, request: dict) -> dict:
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise RpcError(-32600, "Invalid request")
            params = request.get("params") or []
            if not isinstance(params, list):
                raise RpcError(-32602, "Invalid params: expected a list")
            with self.lock:
                result = self.chain.handle(request["method"], params)
            return {"jsonrpc": "2.0", "id": rid, "result": result}
        except RpcError as e:
            err = {"code": e.code, "message": e.message}
            if e.data is not None:
                err["data"] = e.data
            return {"jsonrpc": "2.0", "id": rid, "error": err}
        except Exception as e:  # a bug or a LiteSVM refusal: answered, not a dropped connection
            return {"jsonrpc": "2.0", "id": rid,
                    "error": {"code": -32603, "message": f"Internal error: {e!r}"}}

    def _reply(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def make_server(directory: Path, host: str, port: int) -> tuple[ThreadingHTTPServer,
                                                                 EmbeddedChain]:
    chain = EmbeddedChain(directory)
    handler = type("Handler", (_Handler,), {"chain": chain, "lock": threading.Lock()})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError:
        chain.close()
        raise
    server.daemon_threads = True
    return server, chain


def serve(directory: Path, host: str, port: int, ready=None) -> None:
    """Serve until interrupted. ``ready`` (if given) is called with the bound (host, port)."""
    server, chain = make_server(directory, host, port)
    try:
        if ready:
            ready(server.server_address[:2], chain)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        chain.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point for a client that starts the chain in the background."""
    from swarm.settings import parse_endpoint

    ap = argparse.ArgumentParser(prog="python -m swarm.credits.chain_server")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--listen", default=DEFAULT_LISTEN)
    args = ap.parse_args(argv)
    host, port = parse_endpoint(args.listen)
    try:
        serve(args.dir, host, port)
    except ChainBusy as e:
        print(e, file=sys.stderr)
        return 3
    except OSError as e:
        print(f"cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
