"""``hearth seed``, ``hearth fetch`` and the swarm side of ``hearth model`` and ``hearth skin``
(fetch, install from a magnet, publish, browse): their arguments and what they do. What the
swarm is handed from the stores lives in game/swarm_bridge.py."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from game.cli_error import CliError
from game.notices import note
from game.swarm_bridge import (
    VERIFIERS, discard, download_dir, fetch_limits, import_model, install_skin, local_content,
    local_content_for, own_skins, publish_index, republish_own_skins, resolve_content, start_node,
)
from swarm.content import parse_magnet
from swarm.settings import SwarmSettings, load_settings, parse_endpoints, parse_rate

if TYPE_CHECKING:  # libtorrent loads only when a command starts a node
    from swarm.torrent import SwarmNode

#: How long a command waits for the DHT to have a node before it gives up.
DHT_WAIT_SECONDS = 10.0


# ---- the node ----------------------------------------------------------------------------------

def settings_from_args(args: argparse.Namespace, **fixed) -> SwarmSettings:
    """``swarm.toml`` overridden by whatever network options the command line gave."""
    overrides: dict[str, Any] = dict(fixed)
    if getattr(args, "listen", None):
        overrides["listen"] = args.listen
    if getattr(args, "bootstrap", None) is not None:
        overrides["bootstrap"] = parse_endpoints(args.bootstrap)
    if getattr(args, "upload_limit", None) is not None:
        overrides["upload_limit"] = parse_rate(args.upload_limit)
    if getattr(args, "download_limit", None) is not None:
        overrides["download_limit"] = parse_rate(args.download_limit)
    if getattr(args, "loopback", False):
        overrides["loopback"] = True
    return load_settings(**overrides)


@contextmanager
def running_node(args: argparse.Namespace, **fixed) -> Iterator[SwarmNode]:
    """A swarm node started with ``swarm.toml``, the command line's network options and
    ``fixed``; closed on the way out, which saves its resume data."""
    node = start_node(settings_from_args(args, **fixed))
    try:
        yield node
    finally:
        node.close()


def wait_for_dht(node: SwarmNode, seconds: float = DHT_WAIT_SECONDS) -> int:
    """Wait (bounded) until the node's DHT knows at least one other node."""
    deadline = time.monotonic() + seconds
    while True:
        n = node.dht_node_count()
        if n or time.monotonic() > deadline:
            return n
        time.sleep(0.25)


def require_dht(node: SwarmNode) -> None:
    if not wait_for_dht(node):
        raise CliError("no DHT node answered: give one with --bootstrap HOST:PORT (or set "
                       "bootstrap in swarm.toml)")


# ---- fetching ----------------------------------------------------------------------------------

def fetch_with_progress(node: SwarmNode, args: argparse.Namespace, dest: Path):
    """Fetch ``args.magnet`` into ``dest`` with a progress bar on stderr, first waiting a little
    for the DHT if bootstrap nodes are configured."""
    from rich.console import Console
    from rich.progress import (
        BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
    )
    from swarm.torrent import FetchProgress

    if node.settings.bootstrap and not wait_for_dht(node):
        note("note: no DHT node answered yet; looking for peers anyway")
    m = parse_magnet(args.magnet)
    label = m.ref.short if m.ref else (m.name or m.key[:16])
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[peers]}"),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"fetching {label}", total=None, peers="")

        def progress(p: FetchProgress) -> None:
            bar.update(task, completed=p.done, total=p.total or None,
                       peers=f"{p.peers} peer{'s' if p.peers != 1 else ''}")
        try:
            return node.fetch(args.magnet, dest, verifiers=VERIFIERS, max_bytes=fetch_limits(),
                              peers=args.peer or [], timeout=args.timeout, progress=progress)
        except KeyboardInterrupt:
            note("interrupted: the partial download is kept; run the same command to continue")
            raise


def fetch_into_store(args: argparse.Namespace, kind: str | None = None) -> tuple[Any, str]:
    """Fetch ``args.magnet`` (of ``kind``, if given) and add it to the model or skin store;
    returns (the fetch result, the stored id). The node seeds it from there while it runs."""
    m = parse_magnet(args.magnet)
    if kind and m.ref is not None and m.ref.kind != kind:
        raise CliError(f"{args.magnet[:60]}… is a {m.ref.kind}, not a {kind}")
    with running_node(args) as node:
        result = fetch_with_progress(node, args, download_dir())
        if kind and result.ref.kind != kind:
            discard(result)
            raise CliError(f"the torrent holds a {result.ref.kind}, not a {kind}")
        ident = import_model(result) if result.ref.kind == "model" else install_skin(result)
        if node.settings.seeding:
            content = local_content_for(result.ref)
            if content is not None:
                node.seed(content)
    return result, ident


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.out is None:
        result, ident = fetch_into_store(args)
        where = "model store" if result.ref.kind == "model" else "skin store"
        print(f"verified {result.ref.kind} {ident}: added to the {where}")
        return 0
    with running_node(args) as node:
        result = fetch_with_progress(node, args, args.out)
    print(f"verified {result.ref.kind} {result.ref.id}: {result.path}")
    return 0


def cmd_skin_install_magnet(args: argparse.Namespace) -> int:
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    _, ident = fetch_into_store(args, "skin")
    skin = SkinStore().get(ident)
    print(f"installed: {skin.manifest.name} {ident}")
    if not ModelStore().path(skin.manifest.base_model).is_file():
        note(f"note: its base model {skin.manifest.base_model[:16]}… is not in your model store; "
             f"`hearth model fetch MAGNET` fetches it from peers that seed it")
    return 0


# ---- seeding -----------------------------------------------------------------------------------

class _Stop:
    """SIGINT/SIGTERM set an event instead of raising, so shutdown saves resume data."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old = {}

    def __enter__(self) -> threading.Event:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self.event

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def cmd_seed(args: argparse.Namespace) -> int:
    contents = [resolve_content(t) for t in args.targets] if args.targets else local_content()
    if not contents:
        raise CliError("nothing to seed: the model and skin stores are empty")
    with _Stop() as stop, running_node(args, seeding=True) as node:
        print(f"listening: {node.endpoint}", flush=True)
        for c in contents:
            if stop.is_set():
                break
            seeded = node.seed(c)
            print(f"magnet: {seeded.magnet}", flush=True)
            note(f"seeding {c.ref.short} from {c.path}")
        next_publish = time.monotonic()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + republish_own_skins(node)
            if deadline is not None and time.monotonic() > deadline:
                break
            stop.wait(1.0)
        note("stopping: saving resume data")
    return 0


# ---- the skin index ----------------------------------------------------------------------------

def cmd_skin_publish(args: argparse.Namespace) -> int:
    from common.identity import load_or_create_identity
    from npc.skins.store import SkinStore
    ident = load_or_create_identity()
    skin = SkinStore().get(args.skin)
    if skin.manifest.creator != ident.public_hex:
        raise CliError(f"skin {skin.manifest.name} was made by {skin.manifest.creator[:16]}…, "
                       f"not by you ({ident.public_hex[:16]}…); only its creator can list it")
    with running_node(args) as node:
        require_dht(node)
        others = [s for s in own_skins(ident.public_hex) if s.skin_id != skin.skin_id]
        seq, stored, left_out = publish_index(node, ident, [skin] + others)
    print(f"published {skin.manifest.name} {skin.skin_id}")
    print(f"creator key: {ident.public_hex}  (index seq {seq}, stored by {stored} DHT nodes)")
    if left_out:
        note(f"note: the index is full; left out: {', '.join(left_out)}")
    note("peers fetch the skin from nodes that seed it: keep `hearth seed` or the game running")
    return 0


def cmd_skin_browse(args: argparse.Namespace) -> int:
    from swarm.index import decode_index, verify_item
    try:
        pk = bytes.fromhex(args.creator)
        if len(pk) != 32:
            raise ValueError
    except ValueError:
        raise CliError(f"{args.creator!r} is not a creator key (64 hex digits, see "
                       f"`hearth id`)") from None
    with running_node(args) as node:
        require_dht(node)
        item = node.get_item(pk)
    if item is None:
        raise CliError(f"no skin index found in the DHT for creator {args.creator[:16]}…")
    verify_item(item, pk)
    index = decode_index(item.value)
    if args.json:
        print(json.dumps({"creator": args.creator, "seq": item.seq,
                          "skins": [{"name": e.name, "id": e.skin_id, "magnet": e.magnet}
                                    for e in index.entries]}, ensure_ascii=False))
        return 0
    print(f"skins by {args.creator} (index seq {item.seq}):")
    for e in index.entries:
        print(f"  {e.name}  {e.skin_id}")
        print(f"    {e.magnet}")
    return 0


# ---- parser ------------------------------------------------------------------------------------

def add_network_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="where to listen for peers and DHT nodes (default from swarm.toml, "
                        "else 0.0.0.0:6881; port 0 picks a free one)")
    p.add_argument("--bootstrap", default=None, metavar="HOST:PORT,...",
                   help="DHT nodes to join through (replaces the configured list)")
    p.add_argument("--upload-limit", default=None, metavar="RATE",
                   help="upload rate limit, e.g. 512K or 8M per second (0: none)")
    p.add_argument("--download-limit", default=None, metavar="RATE",
                   help="download rate limit (0: none)")
    p.add_argument("--loopback", action="store_true",
                   help="test mode: every peer is on this machine (127.0.0.1)")


def add_fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("magnet", metavar="MAGNET", help="a magnet link (quote it in the shell)")
    p.add_argument("--peer", action="append", default=None, metavar="HOST:PORT",
                   help="also connect to this peer (repeatable)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up after this long (default: only when no data arrives for "
                        "stall_timeout seconds)")
    add_network_args(p)


def add_commands(sub) -> None:
    """Register ``seed`` and ``fetch`` on the main parser's subcommands."""
    p = sub.add_parser("seed", help="seed models and skins to the swarm",
                       description="Make each model or skin a BitTorrent torrent (hybrid v1+v2), "
                                   "print its magnet link (a line `magnet: URI` as soon as it is "
                                   "ready), announce it on the DHT and serve it until "
                                   "interrupted (Ctrl-C or SIGTERM saves the resume data, so the "
                                   "next start does not hash anything again). Without PATH_OR_ID "
                                   "everything in your model and skin stores is seeded.")
    p.add_argument("targets", nargs="*", metavar="PATH_OR_ID",
                   help="a GGUF model file, a skin bundle directory, or the id (or prefix) of "
                        "a stored model or installed skin")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long instead of waiting for Ctrl-C")
    add_network_args(p)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("fetch", help="download a model or skin by magnet link and verify it",
                       description="Find peers through the DHT (and any --peer), download with a "
                                   "progress bar, then check the content's BLAKE3 (a model's "
                                   "hash is its name; a skin bundle must verify, signature "
                                   "included). With --out DIR the verified content is placed in "
                                   "DIR; without it, a model goes into the model store and a "
                                   "skin is installed. Exits 0 only with verified content, 2 "
                                   "with a message naming what failed; unverified data never "
                                   "reaches its final place. An interrupted fetch continues "
                                   "where it stopped when run again.")
    add_fetch_args(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="put the verified content here instead of the stores")
    p.set_defaults(func=cmd_fetch)


def add_skin_commands(ssub) -> None:
    p = ssub.add_parser("publish", help="list one of your skins in your index on the DHT",
                        description="Seed the skin and put your skin index (a BEP44 item signed "
                                    "with your creator key, listing your skins' names, ids and "
                                    "magnet links) into the DHT, so `hearth skin browse "
                                    "YOUR_KEY` finds it. Nodes drop the item after about two "
                                    "hours; `hearth seed` and the game put it again while they "
                                    "run.")
    p.add_argument("skin", metavar="SKIN_ID", help="an installed skin of yours (id or prefix)")
    add_network_args(p)
    p.set_defaults(func=cmd_skin_publish)

    p = ssub.add_parser("browse", help="list a creator's skins from the DHT",
                        description="Read the creator's signed skin index from the DHT, check "
                                    "its signature against the key, and list the skins with "
                                    "their magnet links (`hearth skin install MAGNET` fetches "
                                    "one).")
    p.add_argument("creator", metavar="CREATOR_KEY", help="the creator's public key (hex)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_network_args(p)
    p.set_defaults(func=cmd_skin_browse)
