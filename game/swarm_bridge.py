"""Where the swarm meets the stores.

The swarm layer knows torrents, magnets and BLAKE3; this module hands it what it cannot know
itself: what is in the model and skin stores (as swarm ``Content``), how a downloaded skin bundle
is verified (signature, every file's hash, the skin id), where fetched content goes, and the
creator's skin index on the DHT.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from common.files import blake3_file
from common.paths import data_dir
from npc.skins.manifest import MANIFEST_FILE, SIGNATURE_FILE, SkinError
from swarm.content import Content, ContentError, ContentRef
from swarm.settings import SwarmSettings

if TYPE_CHECKING:  # libtorrent loads only when a command starts a node
    from swarm.torrent import SwarmNode

#: The skin index is put again this often while seeding (DHT nodes drop items after ~2 hours).
REPUBLISH_SECONDS = 30 * 60
#: A failed put (no DHT node yet) is tried again after this long.
RETRY_SECONDS = 60


# ---- the node ----------------------------------------------------------------------------------

def node_state_dir() -> Path:
    """Resume data, cached torrents and partial downloads."""
    return data_dir() / "swarm"


def start_node(settings: SwarmSettings) -> SwarmNode:
    from swarm.torrent import SwarmNode
    return SwarmNode(settings, node_state_dir()).start()


def download_dir() -> Path:
    d = node_state_dir() / "downloads"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---- the stores as swarm content ---------------------------------------------------------------

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


def local_content_for(ref: ContentRef) -> Content | None:
    return next((c for c in local_content() if c.ref == ref), None)


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
        return model_content(blake3_file(path), path)
    if "/" in target:
        raise ContentError(f"{target}: no such file or directory")
    found: list[Content] = []
    try:
        models = ModelStore()
        rec = models.get(target)
        found.append(model_content(rec.blake3, models.path(rec.blake3)))
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


# ---- fetched content into the stores -----------------------------------------------------------

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


#: How downloads are checked beyond BLAKE3, by content kind.
VERIFIERS = {"skin": verify_skin}


def fetch_limits() -> dict[str, int]:
    """The most bytes a torrent of each kind may hold (refused before downloading)."""
    from npc.skins.bundle import MAX_BUNDLE_BYTES
    from npc.skins.manifest import MAX_MANIFEST_BYTES
    return {"skin": MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + 64}


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
    """Install a fetched skin bundle (verified again by the store); returns its id."""
    from npc.skins.store import SkinStore
    try:
        return SkinStore().install(result.path)
    finally:
        shutil.rmtree(result.path, ignore_errors=True)


def discard(result) -> None:
    """Remove fetched content that will not be kept."""
    if result.path.is_dir():
        shutil.rmtree(result.path, ignore_errors=True)
    else:
        result.path.unlink(missing_ok=True)


# ---- the creator's skin index ------------------------------------------------------------------

def own_skins(public_hex: str) -> list:
    """The installed skins made by the creator with this key."""
    from npc.skins.store import SkinStore
    return [s for s in SkinStore().list() if s.manifest.creator == public_hex]


def publish_index(node: SwarmNode, identity, skins) -> tuple[int, int, list[str]]:
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


def republish_own_skins(node: SwarmNode) -> float:
    """Put the index of the skins this machine's creator made, if there are any; returns the
    seconds until it should be put again (sooner when there was no DHT node yet, or the put
    failed)."""
    from common.identity import identity_path, load_or_create_identity
    if not identity_path().exists():
        return REPUBLISH_SECONDS
    ident = load_or_create_identity()
    skins = own_skins(ident.public_hex)
    if not skins:
        return REPUBLISH_SECONDS
    if not node.dht_node_count():
        return RETRY_SECONDS
    try:
        publish_index(node, ident, skins)
    except ContentError:
        return RETRY_SECONDS
    return REPUBLISH_SECONDS
