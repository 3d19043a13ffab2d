"""Seeding: adding local content to the swarm, its resume data, and the upload policy.

A node that only seeds unchokes few peers at a time (``SEED_UPLOAD_SLOTS``, rotated often, in
libtorrent's anti-leech order), so the pieces it sends go to different peers, who trade them
among themselves; while it is also fetching it unchokes more (``FETCH_UPLOAD_SLOTS``) for
tit-for-tat. While the peers connected to a seeded torrent together hold every piece, the node
drops that torrent's upload to ``step_back_share`` of its limit. With eight downloaders the seed
sends about one copy (``tools/bench/swarm.py``). libtorrent's super-seeding would also spread
pieces, but in 2.1 it sends nothing to a new peer for its first ten seconds (its opening HAVE
messages are dropped during the handshake).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import libtorrent as lt

from common.files import atomic_write
from swarm.content import Content, ContentError, ContentRef, magnet_uri, make_torrent
from swarm.settings import SwarmSettings
from swarm.torrent.torrents import Torrent, info_key, real_files

if TYPE_CHECKING:
    from swarm.torrent.session import Session

#: Peers a node uploads to at once while it only seeds, and while it is also fetching (when
#: tit-for-tat trading wants more partners).
SEED_UPLOAD_SLOTS = 2
FETCH_UPLOAD_SLOTS = 4


@dataclass(frozen=True)
class Seeded:
    ref: ContentRef
    magnet: str
    name: str


def resume_path(state_dir: Path, name: str) -> Path:
    """Where the resume data of the seeded torrent ``name`` is kept."""
    return state_dir / "resume" / f"{name}.resume"


def seed(session: Session, state_dir: Path, content: Content) -> Seeded:
    """Start seeding ``content`` and return its magnet link. The first time, the content is
    hashed (the torrent is kept, so later runs do not hash it again); afterwards its resume
    data is used, so nothing is re-checked."""
    name = content.ref.torrent_name
    already = session.call(lambda ses: _seeded(session, name))
    if already is not None:
        return already
    atp = _resume_for_seed(state_dir, content)
    if atp is None:
        atp = _fresh_seed(state_dir, content)
    ti = atp.ti
    if ti.name() != name:
        raise ContentError(f"the torrent for {content.ref.short} is named {ti.name()!r}")
    on_disk = content.on_disk()
    renamed = {}
    for index, path, size in real_files(ti):
        if path not in on_disk:
            raise ContentError(f"{content.path}: the torrent holds {path!r}, which the "
                               f"content does not")
        disk = content.save_path / on_disk[path]
        if not disk.is_file() or disk.stat().st_size != size:
            raise ContentError(f"{disk}: missing or not the size the torrent says ({size})")
        renamed[index] = on_disk[path]
    atp.save_path = str(content.save_path)
    atp.renamed_files = renamed
    atp.flags &= ~lt.torrent_flags.auto_managed
    atp.flags &= ~lt.torrent_flags.paused
    atp.max_uploads = SEED_UPLOAD_SLOTS
    resume = resume_path(state_dir, name)
    key = info_key(ti.info_hashes())

    def add(ses):
        h = ses.add_torrent(atp)
        session.torrents[key] = Torrent(h, "seed", name, resume)
        if not resume.exists():
            h.save_resume_data(lt.save_resume_flags_t.save_info_dict)
    session.call(add)
    return Seeded(content.ref, magnet_uri(ti), name)


def _seeded(session: Session, name: str) -> Seeded | None:
    """The torrent ``name`` if this node already seeds it (on the session thread)."""
    t = session.torrents.named(name)
    if t is None or t.role != "seed" or not t.handle.is_valid():
        return None
    ti = t.handle.torrent_file()
    ref = ContentRef.from_name(name)
    return Seeded(ref, magnet_uri(ti), name) if ti is not None and ref is not None else None


def _fresh_seed(state_dir: Path, content: Content) -> lt.add_torrent_params:
    """Torrent parameters from the cached .torrent, hashing the content the first time."""
    cached = state_dir / "torrents" / f"{content.ref.torrent_name}.torrent"
    data = cached.read_bytes() if cached.is_file() else None
    if data is None:
        data = make_torrent(content)
        atomic_write(cached, data)
    atp = lt.add_torrent_params()
    try:
        atp.ti = lt.torrent_info(data)
    except RuntimeError as e:
        cached.unlink(missing_ok=True)
        raise ContentError(f"{cached}: unreadable torrent ({e})") from None
    # Seed mode: trust the files now, check each piece the first time it is sent.
    atp.flags |= lt.torrent_flags.seed_mode
    return atp


def _resume_for_seed(state_dir: Path, content: Content) -> lt.add_torrent_params | None:
    path = resume_path(state_dir, content.ref.torrent_name)
    if not path.is_file():
        return None
    try:
        atp = lt.read_resume_data(path.read_bytes())
    except RuntimeError:
        path.unlink(missing_ok=True)
        return None
    ti = atp.ti
    if ti is None or ti.name() != content.ref.torrent_name:
        path.unlink(missing_ok=True)
        return None
    pieces = list(atp.have_pieces)
    if len(pieces) != ti.num_pieces() or not all(pieces):
        return None  # not a complete copy: hash it afresh
    return atp


def promote(t: Torrent, ref: ContentRef, state_dir: Path) -> None:
    """Turn a finished, verified download into a seed (on the session thread)."""
    t.role, t.name = "seed", ref.torrent_name
    t.resume_path = resume_path(state_dir, ref.torrent_name)
    t.handle.set_max_uploads(SEED_UPLOAD_SLOTS)
    t.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)


class SeedingPolicy:
    """The node's upload slots and each seeded torrent's step-back (on the session thread)."""

    def __init__(self, settings: SwarmSettings):
        self.settings = settings
        self._slots = SEED_UPLOAD_SLOTS

    def use_slots(self, ses: lt.session, fetching: bool) -> None:
        slots = FETCH_UPLOAD_SLOTS if fetching else SEED_UPLOAD_SLOTS
        if slots != self._slots:
            self._slots = slots
            ses.apply_settings({"unchoke_slots_limit": slots})

    def apply(self, ses: lt.session, live: list[tuple[Torrent, lt.torrent_status]]) -> None:
        for t, st in live:
            if t.role == "seed":
                self._step_back(t, st)
        self.use_slots(ses, fetching=any(t.role == "fetch" for t, _ in live))

    def _step_back(self, t: Torrent, st: lt.torrent_status) -> None:
        """While the connected peers together hold every piece, upload only a trickle."""
        limit, share = self.settings.upload_limit, self.settings.step_back_share
        if not limit or share >= 1.0:
            return
        covered = False
        if st.num_peers >= 2:
            have = None
            for p in t.handle.get_peer_info():
                bits = p.pieces
                have = list(bits) if have is None else [a or b for a, b in zip(have, bits)]
            covered = bool(have) and all(have) and len(have) == st.num_pieces
        if covered != t.stepped_back:
            t.stepped_back = covered
            t.handle.set_upload_limit(max(1, int(limit * share)) if covered else 0)
