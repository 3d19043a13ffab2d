"""Parties, receipts and a running embedded chain for the credits tests."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

from common.identity import Identity, load_or_create_identity
from swarm.credits.chain import ChainClient
from swarm.credits.chain_server import make_server
from swarm.jobs.receipt import Receipt, ReceiptBody, amount_for, sign_body

SKIN = "ee" * 32
PARENT_SKIN = "ff" * 32


def party(root: Path, name: str) -> Identity:
    return load_or_create_identity(root / "ids" / name)


def make_receipt(requester: Identity, worker: Identity, *, shard: int = 0, tokens_out: int = 64,
                 price: int = 2500, skin: str | None = None, job: str = "ab" * 32) -> Receipt:
    body = ReceiptBody(job=job, shard=shard, requester=requester.public_hex,
                       worker=worker.public_hex, model="cd" * 32, skin=skin, tokens_in=120,
                       tokens_out=tokens_out, price_per_1k=price,
                       amount=amount_for(120, tokens_out, price))
    return Receipt(body=body, requester_sig=sign_body(body, requester),
                   worker_sig=sign_body(body, worker))


def lineage(creator: Identity, parent_creator: Identity) -> list:
    """A remix (royalty 0.3 to its parent) as SkinStore.royalty_split gives it."""
    return [(creator.public_hex, SKIN, Fraction(7, 10)),
            (parent_creator.public_hex, PARENT_SKIN, Fraction(3, 10))]


class RunningChain:
    """An embedded chain served on 127.0.0.1 from a thread, restartable on the same state."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.port = 0
        self._start()

    def _start(self) -> None:
        self.server, self.chain = make_server(self.dir, "127.0.0.1", self.port)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.chain.close()

    def restart(self) -> None:
        self.stop()
        self._start()


@contextmanager
def running_chain(directory: Path):
    chain = RunningChain(directory)
    try:
        yield chain
    finally:
        chain.stop()


@contextmanager
def client_for(chain: RunningChain):
    client = ChainClient(chain.url)
    try:
        yield client
    finally:
        client.close()
