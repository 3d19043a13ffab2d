"""``hearth chain``: the embedded Solana chain in the foreground (what a wallet command starts in
the background when nothing answers at the configured address)."""

from __future__ import annotations

import argparse
from pathlib import Path

from game.cli_error import CliError
from swarm.credits.chain import chain_dir, load_wallet_settings
from swarm.credits.chain_server import ChainBusy, serve
from swarm.settings import parse_endpoint


def cmd_chain(args: argparse.Namespace) -> int:
    settings = load_wallet_settings()
    listen = args.listen or settings.listen
    host, port = parse_endpoint(listen)
    directory = args.dir or chain_dir()

    def ready(address, chain) -> None:
        print(f"embedded chain listening on http://{address[0]}:{address[1]}", flush=True)
        print(f"gold mint {chain.mint} · state in {directory} · start {chain.position}",
              flush=True)

    try:
        serve(directory, host, port, ready=ready)
    except ChainBusy as e:
        raise CliError(f"{e} (it is already running)") from None
    except OSError as e:
        raise CliError(f"cannot listen on {listen}: {e.strerror}") from None
    except KeyboardInterrupt:
        print("chain stopped; its state is saved", flush=True)
    return 0


def add_command(sub) -> None:
    p = sub.add_parser(
        "chain", help="run the embedded Solana chain that settles gold credits",
        description="Run LiteSVM (an in-process Solana runtime) behind the part of Solana's "
                    "JSON-RPC that Hearth's wallet uses, so every local client - requesters, "
                    "workers, skin creators - settles on one chain. The gold mint is created on "
                    "first run; accounts and the blockhash position are saved after every "
                    "transaction, so a restart keeps every balance and refuses transactions "
                    "signed before it. Wallet commands start it in the background when nothing "
                    "answers; set rpc_url in wallet.toml to use a real cluster instead.")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="address to answer on (default: listen in wallet.toml, 127.0.0.1:8899)")
    p.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="where the chain's state lives (default: <hearth home>/chain)")
    p.set_defaults(func=cmd_chain)
