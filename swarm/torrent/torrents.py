"""The node's table of torrents: what it knows about each one beyond libtorrent's own status.

Only the session thread reads or changes the table; everything else asks through a call onto
that thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

from common.files import atomic_write


@dataclass
class Torrent:
    handle: lt.torrent_handle
    role: str  # "seed" or "fetch"
    name: str
    resume_path: Path
    hash_failures: int = 0
    banned: list[str] = field(default_factory=list)
    #: Whether the seeding policy has cut this torrent's upload to a trickle.
    stepped_back: bool = False


def info_key(ih: lt.info_hash_t) -> str:
    """The v2 info-hash in hex when the torrent has one, else the v1 one."""
    return str(ih.v2) if ih.has_v2() else str(ih.v1)


def real_files(ti: lt.torrent_info) -> list[tuple[int, str, int]]:
    """(index, path, size) of every file in the torrent but its padding files."""
    fs = ti.layout()
    return [(i, fs.file_path(i), fs.file_size(i)) for i in range(fs.num_files())
            if not fs.file_flags(i) & lt.file_storage.flag_pad_file]


class Torrents(dict[str, Torrent]):
    """Torrent records keyed by :func:`info_key`."""

    def live(self) -> list[tuple[Torrent, lt.torrent_status]]:
        """Every torrent whose handle is still valid, with its current status."""
        return [(t, t.handle.status()) for t in list(self.values()) if t.handle.is_valid()]

    def named(self, name: str) -> Torrent | None:
        return next((t for t in self.values() if t.name == name), None)

    def for_alert(self, a) -> Torrent | None:
        try:
            return self.get(info_key(a.handle.info_hashes()))
        except (AttributeError, RuntimeError):
            return None

    def record(self, a) -> None:
        """Keep what a torrent alert says: resume data on disk, hash failures, bans."""
        if isinstance(a, lt.save_resume_data_alert):
            t = self.for_alert(a)
            if t is not None:
                try:
                    atomic_write(t.resume_path, lt.write_resume_data_buf(a.params))
                except OSError:
                    pass  # the next save tries again; a missing resume file only costs a re-check
        elif isinstance(a, lt.hash_failed_alert):
            t = self.for_alert(a)
            if t is not None:
                t.hash_failures += 1
        elif isinstance(a, lt.peer_ban_alert):
            t = self.for_alert(a)
            ep = f"{a.endpoint[0]}:{a.endpoint[1]}"
            if t is not None and ep not in t.banned:
                t.banned.append(ep)
