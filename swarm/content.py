"""Content addressing for the swarm: what a torrent holds and how it is named.

Every object the swarm carries (a base model file, a skin bundle directory) becomes a standard
hybrid BitTorrent torrent (v1 SHA-1 pieces plus v2 SHA-256 merkle trees) whose public address is
its magnet link. The torrent's name carries the Hearth content id, so a fetcher knows from the
info dictionary itself (which the info-hash covers) what kind of object it receives and which
BLAKE3 it must find once the download is complete:

- a model: one file named ``hearth-model-<blake3>.gguf``; its BLAKE3 must be ``<blake3>``;
- a skin: a directory ``hearth-skin-<skin id>/`` holding the bundle; the skin id (the BLAKE3 of
  the signed manifest) must come out of verifying the bundle.

BitTorrent's piece hashes protect the transfer; the BLAKE3 check after download is a second,
independent one that also catches a torrent whose pieces are self-consistent but whose content
is not what its name claims.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlparse

import libtorrent as lt

from common.files import blake3_file

KINDS = ("model", "skin")
CREATOR = "Hearth"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^hearth-(?P<kind>model|skin)-(?P<id>[0-9a-f]{64})(?P<suffix>\.gguf)?$")
_PLAIN_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class ContentError(Exception):
    """Content that cannot be addressed, fetched or verified; the message names what failed."""


@dataclass(frozen=True)
class ContentRef:
    """What a torrent claims to hold: a kind and a 64-hex-digit Hearth content id."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ContentError(f"unknown content kind {self.kind!r}")
        if not _HEX64.match(self.id):
            raise ContentError(f"{self.id!r} is not a content id (64 hex digits)")

    @property
    def torrent_name(self) -> str:
        return f"hearth-{self.kind}-{self.id}" + (".gguf" if self.kind == "model" else "")

    @property
    def short(self) -> str:
        return f"{self.kind} {self.id[:16]}…"

    @classmethod
    def from_name(cls, name: str) -> ContentRef | None:
        """The reference a torrent name carries, or None for a name Hearth did not make."""
        m = _NAME.match(name or "")
        if not m:
            return None
        if (m["kind"] == "model") != bool(m["suffix"]):
            return None
        return cls(m["kind"], m["id"])


@dataclass(frozen=True)
class Content:
    """Something on local disk to seed: ``path`` is the model file, or the bundle directory
    whose ``files`` (plain names) make up the skin."""

    ref: ContentRef
    path: Path
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ref.kind == "model" and self.files:
            raise ContentError("a model is a single file")
        if self.ref.kind == "skin":
            if not self.files:
                raise ContentError("a skin bundle needs its file list")
            for name in self.files:
                if not _PLAIN_FILE.match(name):
                    raise ContentError(f"{name!r} is not a plain file name")

    def torrent_files(self) -> list[tuple[str, Path]]:
        """(path inside the torrent, file on disk), in torrent order."""
        name = self.ref.torrent_name
        if self.ref.kind == "model":
            return [(name, self.path)]
        return [(f"{name}/{f}", self.path / f) for f in sorted(self.files)]

    def on_disk(self) -> dict[str, str]:
        """Torrent path -> path relative to ``save_path`` (the store's own names)."""
        if self.ref.kind == "model":
            return {self.ref.torrent_name: self.path.name}
        return {f"{self.ref.torrent_name}/{f}": f"{self.path.name}/{f}" for f in self.files}

    @property
    def save_path(self) -> Path:
        return self.path.parent


def make_torrent(content: Content, piece_size: int = 0) -> bytes:
    """Hash ``content`` into a hybrid v1+v2 .torrent (bencoded). The files are read through a
    staging directory of symlinks laid out under the torrent's own names, so the store keeps
    its names and nothing is copied."""
    entries = []
    for tpath, disk in content.torrent_files():
        try:
            size = disk.stat().st_size
        except OSError as e:
            raise ContentError(f"{disk}: cannot read ({e.strerror})") from None
        entries.append((tpath, disk, size))
    if sum(size for _, _, size in entries) == 0:
        raise ContentError(f"{content.path}: nothing to share (empty)")
    ct = lt.create_torrent([lt.create_file_entry(tpath, size) for tpath, _, size in entries],
                           piece_size)
    ct.set_creator(CREATOR)
    ct.set_comment(f"Hearth {content.ref.kind} {content.ref.id}")
    stage = Path(tempfile.mkdtemp(prefix="hearth-torrent-"))
    try:
        for tpath, disk, _ in entries:
            link = stage / tpath
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(disk.resolve(), link)
        try:
            lt.set_piece_hashes(ct, str(stage))
        except RuntimeError as e:
            raise ContentError(f"{content.path}: hashing failed ({e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return lt.bencode(ct.generate())


def magnet_uri(ti: lt.torrent_info) -> str:
    """The magnet link: v1 ``btih`` and v2 ``btmh`` info-hashes and the name; no trackers."""
    return lt.make_magnet_uri(ti)


@dataclass(frozen=True)
class Magnet:
    uri: str
    name: str
    ref: ContentRef | None
    #: v2 info-hash (hex) if the link has one, else the v1 one; names partial downloads.
    key: str


def parse_magnet(uri: str) -> Magnet:
    uri = uri.strip()
    if not uri.startswith("magnet:?"):
        raise ContentError(f"{uri[:60]!r} is not a magnet link")
    q = parse_qs(urlparse(uri).query)
    xts = q.get("xt", [])
    if not any(x.startswith(("urn:btih:", "urn:btmh:")) for x in xts):
        raise ContentError("the magnet link has no BitTorrent info-hash (xt=urn:btih or urn:btmh)")
    try:
        atp = lt.parse_magnet_uri(uri)
    except RuntimeError as e:
        raise ContentError(f"bad magnet link ({e})") from None
    ih = atp.info_hashes
    key = str(ih.v2) if ih.has_v2() else str(ih.v1)
    name = atp.name or ""
    return Magnet(uri=uri, name=name, ref=ContentRef.from_name(name), key=key)


#: Checks downloaded content against its reference; raises ContentError naming what failed.
Verifier = Callable[[ContentRef, Path], None]


def verify_model_file(ref: ContentRef, path: Path) -> None:
    """A model is one file whose BLAKE3 is its content id."""
    if not path.is_file():
        raise ContentError(f"{path}: the downloaded model is not a single file")
    digest = blake3_file(path)
    if digest != ref.id:
        raise ContentError(f"{path.name}: BLAKE3 mismatch: the content hashes to "
                           f"{digest[:16]}…, its name promises {ref.id[:16]}… (the torrent "
                           f"does not hold the model it claims to)")


def check_layout(ref: ContentRef, files: list[tuple[str, int]], max_bytes: int | None) -> None:
    """Refuse, before a byte is downloaded, a torrent whose files do not fit its kind: a model
    is one file under the torrent's name; a skin is a flat directory of plain names."""
    total = sum(size for _, size in files)
    if max_bytes is not None and total > max_bytes:
        raise ContentError(f"{ref.torrent_name}: {total / 2**20:.1f} MiB, over the "
                           f"{max_bytes / 2**20:.0f} MiB limit for a {ref.kind}")
    if ref.kind == "model":
        if [p for p, _ in files] != [ref.torrent_name]:
            raise ContentError(f"{ref.torrent_name}: a model torrent must hold exactly one file "
                               f"of that name")
        return
    for path, _ in files:
        parts = path.split("/")
        if len(parts) != 2 or parts[0] != ref.torrent_name or not _PLAIN_FILE.match(parts[1]):
            raise ContentError(f"{ref.torrent_name}: unexpected file {path!r} in a skin torrent")
