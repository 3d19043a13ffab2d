"""The client side of the chain: every read and every transaction goes through solana-py's RPC
client (``solana.rpc.async_api.AsyncClient``; solana-py 0.41 ships only the async client, driven
here from a private event loop), the code path a real cluster is reached by.

Settings come from ``wallet.toml`` in Hearth's config directory:

```toml
rpc_url = "https://api.devnet.solana.com"  # unset: the embedded chain (`hearth chain`)
listen = "127.0.0.1:8899"                   # where the embedded chain listens
mint = "<gold mint address>"                # needed on a real cluster; the embedded chain says
```

With no ``rpc_url`` the first local client that needs the chain starts the embedded one in the
background (``hearth chain`` does the same in the foreground). Keys are the user's ed25519
identity: the 32-byte seed that signs skins and receipts is also their Solana keypair, so their
wallet address is their creator id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.jsonrpc import JsonRpcRequest, SolanaJsonRpcError
from solana.rpc.models import TxOpts
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.token.instructions import get_associated_token_address

from common.identity import Identity
from common.paths import config_dir, data_dir
from swarm.settings import load_toml, parse_endpoint

CONFIG_FILE = "wallet.toml"
#: How long a client waits for an embedded chain it started to answer.
START_TIMEOUT = 20.0


class ChainError(RuntimeError):
    """The chain cannot be reached or refused what was asked; the message says which."""


class WalletSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: JSON-RPC endpoint of a Solana cluster; None means the embedded chain.
    rpc_url: str | None = None
    #: Where the embedded chain listens (and is looked for).
    listen: str = "127.0.0.1:8899"
    #: The gold mint on a real cluster (the embedded chain makes and names its own).
    mint: str | None = None

    def __post_init__(self) -> None:
        parse_endpoint(self.listen)
        if self.rpc_url is not None and not self.rpc_url.startswith(("http://", "https://")):
            raise ChainError(f"rpc_url {self.rpc_url!r} is not an http(s) URL")
        if self.mint is not None:
            try:
                Pubkey.from_string(self.mint)
            except ValueError:
                raise ChainError(f"mint {self.mint!r} is not a Solana address") from None

    @property
    def url(self) -> str:
        return self.rpc_url or f"http://{self.listen}"


def load_wallet_settings(path: Path | None = None, **overrides) -> WalletSettings:
    return load_toml(path or config_dir() / CONFIG_FILE, WalletSettings, overrides, ChainError)


def keypair_for(identity: Identity) -> Keypair:
    """The user's Solana keypair: the same ed25519 key as their Hearth identity."""
    kp = Keypair.from_seed(bytes(identity.signing_key))
    assert bytes(kp.pubkey()) == identity.public_bytes
    return kp


def pubkey_of(hex_key: str) -> Pubkey:
    """A Hearth public key (hex) as a Solana address."""
    return Pubkey.from_bytes(bytes.fromhex(hex_key))


@dataclass(frozen=True)
class Gold:
    mint: Pubkey
    decimals: int
    embedded: bool

    def account_of(self, owner: Pubkey) -> Pubkey:
        """The owner's gold token account (its associated token account)."""
        return get_associated_token_address(owner, self.mint)


class ChainClient:
    """A blocking facade over solana-py's AsyncClient. Not thread-safe (one event loop)."""

    def __init__(self, url: str, mint: str | None = None, timeout: float = 30.0):
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(url, timeout=timeout)
        self._mint_setting = mint
        self._gold: Gold | None = None

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()

    def __enter__(self) -> ChainClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coro):
        try:
            return self._loop.run_until_complete(coro)
        except SolanaRpcException as e:
            raise ChainError(f"the chain at {self.url} cannot be reached ({e.__cause__ or e})") \
                from None
        except RPCException as e:
            raise ChainError(_rpc_message(e)) from None
        except SolanaJsonRpcError as e:
            raise ChainError(f"the chain refused: {e}") from None

    # ---- what the chain is ---------------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            return bool(self._run(self._client.is_connected()))
        except ChainError:
            return False

    def gold(self) -> Gold:
        """The gold mint: asked of the embedded chain, read from wallet.toml on a real one."""
        if self._gold is None:
            info = self._custom("hearthGold", [])
            if info is not None:
                self._gold = Gold(Pubkey.from_string(info["mint"]), int(info["decimals"]), True)
            elif self._mint_setting:
                supply = self._run(self._client.get_token_supply(
                    Pubkey.from_string(self._mint_setting)))
                self._gold = Gold(Pubkey.from_string(self._mint_setting), supply.value.decimals,
                                  False)
            else:
                raise ChainError(f"{self.url} is not the embedded chain: set mint (the gold "
                                 f"mint's address) in {CONFIG_FILE}")
        return self._gold

    def _custom(self, method: str, params: list):
        """A Hearth-only method; None when the chain does not know it (a real cluster)."""
        try:
            return self._run(self._client.send_rpc_request(
                JsonRpcRequest(method=method, params=params), object))
        except ChainError as e:
            if "not found" in str(e).lower() or "-32601" in str(e):
                return None
            raise

    # ---- reads ---------------------------------------------------------------------------------

    def latest_blockhash(self) -> tuple[Hash, int]:
        resp = self._run(self._client.get_latest_blockhash())
        return resp.value.blockhash, resp.value.last_valid_block_height

    def block_height(self) -> int:
        return self._run(self._client.get_block_height()).value

    def rent_exempt(self, size: int) -> int:
        """Lamports an account of ``size`` bytes needs to be rent-exempt."""
        return self._run(self._client.get_minimum_balance_for_rent_exemption(size)).value

    def lamports(self, owner: Pubkey) -> int:
        return self._run(self._client.get_balance(owner)).value

    def accounts_exist(self, keys: list[Pubkey]) -> list[bool]:
        out: list[bool] = []
        for i in range(0, len(keys), 100):  # the RPC limit per call
            resp = self._run(self._client.get_multiple_accounts(keys[i:i + 100]))
            out += [a is not None for a in resp.value]
        return out

    def account(self, key: Pubkey) -> tuple[Pubkey, bytes] | None:
        """An account's owning program and data; None when it does not exist."""
        value = self._run(self._client.get_account_info(key)).value
        return None if value is None else (value.owner, bytes(value.data))

    def gold_balance(self, owner: Pubkey) -> int:
        """Micro-gold in the owner's gold account (0 if it has none yet)."""
        return self.token_balance(self.gold().account_of(owner))

    def token_balance(self, token_account: Pubkey) -> int:
        if not self.accounts_exist([token_account])[0]:
            return 0
        return int(self._run(self._client.get_token_account_balance(token_account)).value.amount)

    def statuses(self, signatures: list[str]) -> list[str | None]:
        """'ok', 'failed', or None (the chain has not seen it) per signature."""
        sigs = [Signature.from_string(s) for s in signatures]
        out: list[str | None] = []
        for i in range(0, len(sigs), 256):
            resp = self._run(self._client.get_signature_statuses(sigs[i:i + 256],
                                                                  search_transaction_history=True))
            out += [None if s is None else ("ok" if s.err is None else "failed")
                    for s in resp.value]
        return out

    # ---- writes --------------------------------------------------------------------------------

    def send(self, raw: bytes) -> str:
        """Send a signed transaction (preflight on, no waiting); its signature."""
        resp = self._run(self._client.send_raw_transaction(
            raw, TxOpts(skip_confirmation=True, skip_preflight=False)))
        return str(resp.value)

    def wait(self, signature: str, timeout: float = 60.0) -> str:
        """Poll until the chain reports the signature; 'ok' or 'failed'. Raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.statuses([signature])[0]
            if status is not None:
                return status
            if time.monotonic() > deadline:
                raise ChainError(f"transaction {signature} not confirmed after {timeout:.0f} s")
            time.sleep(0.2)

    def mint_gold(self, owner: Pubkey, amount: int) -> str:
        """Airdrop gold (and fee lamports) on the embedded chain; refused on a real one."""
        if not self.gold().embedded:
            raise ChainError("airdrops exist only on the embedded chain; on a real cluster gold "
                             "is bought or earned")
        sig = self._custom("hearthMintGold", [str(owner), int(amount)])
        self.wait(sig)
        return sig


def _rpc_message(e: RPCException) -> str:
    arg = e.args[0] if e.args else e
    message = getattr(arg, "message", None)
    if message is None and isinstance(arg, dict):
        message = arg.get("message")
    return f"the chain refused: {message or arg}"


# ---- the embedded chain, started on demand ---------------------------------------------------


def chain_dir() -> Path:
    return data_dir() / "chain"


def connect(settings: WalletSettings | None = None, *, start: bool = True) -> ChainClient:
    """A client for the configured chain. With no rpc_url, the embedded chain at
    ``settings.listen``, started in the background if nothing answers there and ``start``."""
    settings = settings or load_wallet_settings()
    client = ChainClient(settings.url, settings.mint)
    if settings.rpc_url is not None or client.healthy():
        return client
    if not start:
        client.close()
        raise ChainError(f"no chain answers at {settings.url}: start one with `hearth chain`")
    start_embedded_chain(settings.listen)
    deadline = time.monotonic() + START_TIMEOUT
    while not client.healthy():
        if time.monotonic() > deadline:
            client.close()
            raise ChainError(f"the embedded chain did not start at {settings.url} (see "
                             f"{chain_dir() / 'chain.log'})")
        time.sleep(0.2)
    return client


def start_embedded_chain(listen: str) -> subprocess.Popen:
    """Start the embedded chain as a detached process that outlives this one."""
    directory = chain_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "chain.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "swarm.credits.chain_server", "--dir", str(directory),
             "--listen", listen],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=Path(__file__).resolve().parents[2], env={**os.environ})
