"""``hearth seed``, ``hearth fetch``, ``hearth model fetch`` and the swarm side of ``hearth skin``
(install from a magnet, publish, browse), plus the node the game window runs.

This is where the swarm meets the stores: the swarm layer knows torrents, magnets and BLAKE3,
and this module hands it what it cannot know itself, namely what is in the model and skin
stores and how a downloaded skin bundle is verified (signature, every file's hash, the skin id).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common.files import blake3_file as hash_file
from game.swarm_box import SwarmBox
from npc.skins.manifest import MANIFEST_FILE, SIGNATURE_FILE, SkinError
from swarm.content import Content, ContentError, ContentRef, parse_magnet
from swarm.settings import SettingsError, SwarmSettings, load_settings, parse_endpoints, parse_rate

#: The skin index is put again this often while seeding (DHT nodes drop items after ~2 hours).
REPUBLISH_SECONDS = 30 * 60
#: A failed put (no DHT node yet) is tried again after this long.
RETRY_SECONDS = 60
#: How long a command waits for the DHT to have a node before it gives up.
DHT_WAIT_SECONDS = 10.0


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _swarm_errors(func):
    """Print the swarm's, the stores' and the skins' errors as ``hearth: error:`` and exit 2."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from npc.gguf_info import GGUFError
        from npc.store import StoreError
        try:
            return func(args)
        except (ContentError, SettingsError, StoreError, GGUFError, SkinError) as e:
            print(f"hearth: error: {e}", file=sys.stderr, flush=True)
            return 2
    return wrapper


# ---- settings and the stores -------------------------------------------------------------------

def state_dir() -> Path:
    from common.paths import data_dir
    return data_dir() / "swarm"


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


def model_content(digest: str, path: Path) -> Content:
    return Content(ContentRef("model", digest), path)


def skin_content(skin_id: str, bundle: Path) -> Content:
    from npc.skins.bundle import read_signed
    signed = read_signed(bundle)
    files = (MANIFEST_FILE, SIGNATURE_FILE) + tuple(f.path for f in signed.manifest.files)
    return Content(ContentRef("skin", skin_id), bundle, files)


def local_content() -> list[Content]:
    """Everything the local stores hold: every model file and every installed skin."""
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    models = ModelStore()
    out = [model_content(r.blake3, models.path(r.blake3)) for r in models.records()]
    out += [skin_content(s.skin_id, s.path) for s in SkinStore().list()]
    return out


def resolve_content(target: str) -> Content:
    """A model file, a skin bundle directory, or the id (or unique prefix) of a stored model or
    installed skin."""
    from npc.gguf_info import read_gguf
    from npc.skins.bundle import verify_bundle
    from npc.skins.store import SkinStore
    from npc.store import ModelStore, StoreError

    path = Path(target)
    if path.is_dir():
        verified = verify_bundle(path)
        return skin_content(verified.skin_id, path)
    if path.is_file():
        info = read_gguf(path)
        if info.kind != "model":
            raise ContentError(f"{path}: a GGUF of type {info.kind!r}, not a base model")
        return model_content(hash_file(path), path)
    if "/" in target:
        raise ContentError(f"{target}: no such file or directory")
    found: list[Content] = []
    try:
        rec = ModelStore().get(target)
        found.append(model_content(rec.blake3, ModelStore().path(rec.blake3)))
    except StoreError:
        pass
    try:
        skin = SkinStore().get(target)
        found.append(skin_content(skin.skin_id, skin.path))
    except SkinError:
        pass
    if not found:
        raise ContentError(f"{target!r} is neither a file, a bundle directory, a stored model "
                           f"nor an installed skin")
    if len(found) > 1:
        raise ContentError(f"{target!r} matches both a model and a skin; give more digits")
    return found[0]


def verify_skin(ref: ContentRef, path: Path) -> None:
    """A downloaded skin must verify completely and be the skin its torrent names."""
    from npc.skins.bundle import verify_bundle
    try:
        verified = verify_bundle(path)
    except SkinError as e:
        raise ContentError(f"the skin bundle does not verify: {e}") from None
    if verified.skin_id != ref.id:
        raise ContentError(f"the bundle is skin {verified.skin_id[:16]}…, but its torrent "
                           f"promises {ref.id[:16]}…")


def fetch_limits() -> dict[str, int]:
    from npc.skins.bundle import MAX_BUNDLE_BYTES
    from npc.skins.manifest import MAX_MANIFEST_BYTES
    return {"skin": MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + 64}


def start_node(settings: SwarmSettings):
    from swarm.torrent import SwarmNode
    return SwarmNode(settings, state_dir()).start()


def wait_for_dht(node, seconds: float = DHT_WAIT_SECONDS) -> int:
    """Wait (bounded) until the node's DHT knows at least one other node."""
    deadline = time.monotonic() + seconds
    while True:
        n = node.dht_node_count()
        if n or time.monotonic() > deadline:
            return n
        time.sleep(0.25)


# ---- fetching ----------------------------------------------------------------------------------

def fetch_with_progress(node, magnet: str, dest: Path, peers: list[str],
                        timeout: float | None, quiet: bool = False):
    """``node.fetch`` with a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
    )
    from swarm.torrent import FetchProgress

    m = parse_magnet(magnet)
    label = m.ref.short if m.ref else (m.name or m.key[:16])
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[peers]}"),
                  console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task(f"fetching {label}", total=None, peers="")

        def progress(p: FetchProgress) -> None:
            bar.update(task, completed=p.done, total=p.total or None,
                       peers=f"{p.peers} peer{'s' if p.peers != 1 else ''}")
        return node.fetch(magnet, dest, verifiers={"skin": verify_skin}, max_bytes=fetch_limits(),
                          peers=peers, timeout=timeout, progress=progress)


def import_model(result) -> str:
    """Move a fetched, BLAKE3-verified model into the model store (which checks it is a GGUF
    base model); returns its id."""
    from npc.store import ModelStore, StoreError
    try:
        rec = ModelStore().import_file(result.path, source=result.magnet, move=True)
    except StoreError:
        result.path.unlink(missing_ok=True)
        raise
    if rec.blake3 != result.ref.id:  # hashed a third time by the store; cannot differ
        raise ContentError(f"the model store hashed {rec.blake3}, not {result.ref.id}")
    return rec.blake3


def install_skin(result) -> str:
    from npc.skins.store import SkinStore
    try:
        return SkinStore().install(result.path)
    finally:
        shutil.rmtree(result.path, ignore_errors=True)


def _download_dir() -> Path:
    d = state_dir() / "downloads"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _fetch_into_store(args, kind: str | None) -> tuple[Any, str]:
    m = parse_magnet(args.magnet)
    if kind and m.ref is not None and m.ref.kind != kind:
        raise ContentError(f"{args.magnet[:60]}… is a {m.ref.kind}, not a {kind}")
    settings = settings_from_args(args)
    node = start_node(settings)
    try:
        if settings.bootstrap and not wait_for_dht(node):
            _note("note: no DHT node answered yet; looking for peers anyway")
        result = fetch_with_progress(node, args.magnet, _download_dir(), args.peer or [],
                                     args.timeout)
        if kind and result.ref.kind != kind:
            if result.path.is_dir():
                shutil.rmtree(result.path, ignore_errors=True)
            else:
                result.path.unlink(missing_ok=True)
            raise ContentError(f"the torrent holds a {result.ref.kind}, not a {kind}")
        ident = import_model(result) if result.ref.kind == "model" else install_skin(result)
        if settings.seeding:
            content = local_content_for(result.ref)
            if content is not None:
                node.seed(content)
        return result, ident
    except KeyboardInterrupt:
        _note("interrupted: the partial download is kept; run the same command to continue")
        raise
    finally:
        node.close()


def local_content_for(ref: ContentRef) -> Content | None:
    for c in local_content():
        if c.ref == ref:
            return c
    return None


@_swarm_errors
def cmd_fetch(args: argparse.Namespace) -> int:
    if args.out is None:
        result, ident = _fetch_into_store(args, None)
        where = "model store" if result.ref.kind == "model" else "skin store"
        print(f"verified {result.ref.kind} {ident}: added to the {where}")
        return 0
    settings = settings_from_args(args)
    node = start_node(settings)
    try:
        if settings.bootstrap and not wait_for_dht(node):
            _note("note: no DHT node answered yet; looking for peers anyway")
        result = fetch_with_progress(node, args.magnet, args.out, args.peer or [], args.timeout)
    except KeyboardInterrupt:
        _note("interrupted: the partial download is kept; run the same command to continue")
        return 130
    finally:
        node.close()
    print(f"verified {result.ref.kind} {result.ref.id}: {result.path}")
    return 0


@_swarm_errors
def cmd_model_fetch(args: argparse.Namespace) -> int:
    result, ident = _fetch_into_store(args, "model")
    print(f"{ident}  fetched and verified ({result.size / 1e6:.1f} MB); added to the model store")
    return 0


@_swarm_errors
def cmd_skin_install_magnet(args: argparse.Namespace) -> int:
    result, ident = _fetch_into_store(args, "skin")
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    skin = SkinStore().get(ident)
    print(f"installed: {skin.manifest.name} {ident}")
    if not ModelStore().path(skin.manifest.base_model).is_file():
        _note(f"note: its base model {skin.manifest.base_model[:16]}… is not in your model store; "
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


@_swarm_errors
def cmd_seed(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, seeding=True)
    contents = [resolve_content(t) for t in args.targets] if args.targets else local_content()
    if not contents:
        raise ContentError("nothing to seed: the model and skin stores are empty")
    with _Stop() as stop:
        node = start_node(settings)
        try:
            print(f"listening: {node.endpoint}", flush=True)
            for c in contents:
                if stop.is_set():
                    break
                seeded = node.seed(c)
                print(f"magnet: {seeded.magnet}", flush=True)
                _note(f"seeding {c.ref.short} from {c.path}")
            next_publish = time.monotonic()
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while not stop.is_set():
                if time.monotonic() >= next_publish:
                    ok = _publish_own_skins(node, quiet=True)
                    next_publish = time.monotonic() + (REPUBLISH_SECONDS if ok else RETRY_SECONDS)
                if deadline is not None and time.monotonic() > deadline:
                    break
                stop.wait(1.0)
            _note("stopping: saving resume data")
        finally:
            node.close()
    return 0


# ---- the skin index ----------------------------------------------------------------------------

def _own_skins(public_hex: str) -> list:
    from npc.skins.store import SkinStore
    return [s for s in SkinStore().list() if s.manifest.creator == public_hex]


def publish_index(node, identity, skins) -> tuple[int, int, list[str]]:
    """Seed ``skins`` and put the creator's index (merged with what the DHT already holds) under
    their key. Returns (sequence number, nodes that stored it, names left out for space)."""
    from swarm.index import decode_index, encode_index, entry_for, verify_item
    entries = {}
    pk = bytes.fromhex(identity.public_hex)
    old = node.get_item(pk)
    if old is not None:
        try:
            verify_item(old, pk)
            for e in decode_index(old.value).entries:
                entries[e.skin_id] = e
        except ContentError:
            pass  # an unreadable old index is replaced
    for s in skins:
        seeded = node.seed(skin_content(s.skin_id, s.path))
        entries[s.skin_id] = entry_for(s.skin_id, s.manifest.name, seeded.magnet)
    # The newest skins first, so they are the ones kept if the index is full.
    fresh = [entries.pop(s.skin_id) for s in skins]
    value, left_out = encode_index(fresh + list(entries.values()))
    seq, stored = node.put_item(bytes(identity.signing_key), value)
    return seq, stored, [e.name for e in left_out]


def _publish_own_skins(node, quiet: bool = False) -> bool:
    """Put the index of the skins this machine's creator made, if there are any. False when it
    should be tried again later (no DHT node yet, or the put failed)."""
    from npc.skins.identity import identity_path, load_or_create_identity
    if not identity_path().exists():
        return True
    ident = load_or_create_identity()
    skins = _own_skins(ident.public_hex)
    if not skins:
        return True
    if not node.dht_node_count():
        return False
    try:
        seq, stored, _ = publish_index(node, ident, skins)
    except ContentError as e:
        if not quiet:
            _note(f"note: could not publish your skin index: {e}")
        return False
    if not quiet:
        _note(f"published the index of {len(skins)} skins (seq {seq}, {stored} nodes)")
    return True


@_swarm_errors
def cmd_skin_publish(args: argparse.Namespace) -> int:
    from npc.skins.identity import load_or_create_identity
    from npc.skins.store import SkinStore
    ident = load_or_create_identity()
    skin = SkinStore().get(args.skin)
    if skin.manifest.creator != ident.public_hex:
        raise ContentError(f"skin {skin.manifest.name} was made by {skin.manifest.creator[:16]}…, "
                           f"not by you ({ident.public_hex[:16]}…); only its creator can list it")
    settings = settings_from_args(args)
    node = start_node(settings)
    try:
        if not wait_for_dht(node):
            raise ContentError("no DHT node answered: give one with --bootstrap HOST:PORT (or "
                               "set bootstrap in swarm.toml)")
        others = [s for s in _own_skins(ident.public_hex) if s.skin_id != skin.skin_id]
        seq, stored, left_out = publish_index(node, ident, [skin] + others)
    finally:
        node.close()
    print(f"published {skin.manifest.name} {skin.skin_id}")
    print(f"creator key: {ident.public_hex}  (index seq {seq}, stored by {stored} DHT nodes)")
    if left_out:
        _note(f"note: the index is full; left out: {', '.join(left_out)}")
    _note("peers fetch the skin from nodes that seed it: keep `hearth seed` or the game running")
    return 0


@_swarm_errors
def cmd_skin_browse(args: argparse.Namespace) -> int:
    from swarm.index import decode_index, verify_item
    try:
        pk = bytes.fromhex(args.creator)
        if len(pk) != 32:
            raise ValueError
    except ValueError:
        raise ContentError(f"{args.creator!r} is not a creator key (64 hex digits, see "
                           f"`hearth id`)") from None
    settings = settings_from_args(args)
    node = start_node(settings)
    try:
        if not wait_for_dht(node):
            raise ContentError("no DHT node answered: give one with --bootstrap HOST:PORT")
        item = node.get_item(pk)
    finally:
        node.close()
    if item is None:
        raise ContentError(f"no skin index found in the DHT for creator {args.creator[:16]}…")
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


# ---- the game window's node --------------------------------------------------------------------

class GameSwarm:
    """The node behind the game window: started with the window, seeding the local stores in
    the background; ``status`` is what the swarm box shows."""

    def __init__(self, settings: SwarmSettings):
        self.settings = settings
        self.node = None
        self._note: str | None = None
        self._error: str | None = None
        self._closed = threading.Event()

    def start(self) -> GameSwarm:
        if not self.settings.seeding:
            self._note = "seeding is switched off (swarm.toml)"
            return self
        try:
            self.node = start_node(self.settings)
        except ContentError as e:
            self._error = str(e)
            return self
        threading.Thread(target=self._seed_local, name="hearth-seed-local", daemon=True).start()
        return self

    def _seed_local(self) -> None:
        node = self.node
        failed: list[str] = []
        try:
            contents = local_content()
        except (ContentError, SkinError, OSError) as e:
            self._note = f"could not list the stores: {e}"
            return
        self._note = f"preparing {len(contents)} items"
        for c in contents:
            if self._closed.is_set() or not node.running:
                return
            try:
                node.seed(c)
            except (ContentError, OSError) as e:
                failed.append(f"{c.ref.short}: {e}")
        self._note = f"could not seed {len(failed)} items" if failed else None
        delay = 0.0
        while not self._closed.wait(delay) and node.running:
            try:
                ok = _publish_own_skins(node, quiet=True)
            except (ContentError, SkinError, OSError):
                ok = False
            delay = REPUBLISH_SECONDS if ok else RETRY_SECONDS

    def status(self) -> SwarmBox:
        if self._error:
            return SwarmBox(note=self._error, failed=True)
        if self.node is None:
            return SwarmBox(note=self._note or "not started")
        return SwarmBox(self.node.status(), self._note)

    def close(self) -> None:
        self._closed.set()
        if self.node is not None:
            self.node.close()
            self.node = None


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


def _add_fetch_args(p: argparse.ArgumentParser) -> None:
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
    _add_fetch_args(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="put the verified content here instead of the stores")
    p.set_defaults(func=cmd_fetch)


def add_model_fetch(msub) -> None:
    q = msub.add_parser("fetch", help="fetch a base model from peers by magnet link",
                        description="Download a model by magnet link from peers that seed it, "
                                    "check its BLAKE3 against its name and add it to the store.")
    _add_fetch_args(q)
    q.set_defaults(func=cmd_model_fetch)


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
