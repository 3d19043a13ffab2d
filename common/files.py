"""Durable file writes and content hashes.

``atomic_write`` is the one way Hearth replaces a file: readers see the old bytes or the new ones,
never a mix, and once it returns the new file survives a power cut (the file and its directory
entry are both fsynced). ``blake3_file`` is the one way it names a file by its content.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import blake3

#: Called with (bytes done, bytes in all) while a large file is read.
Progress = Callable[[int, int], None]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: What a plain ``open(path, "w")`` would create: temp files start at 0o600, and a replaced file
#: should not lose group/other read access just because it was written atomically. (Read once:
#: setting the umask to read it is not thread-safe.)
DEFAULT_MODE = 0o666 & ~_umask()


def fsync_dir(path: Path | str) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_with_temp(path: Path, fill: Callable[[int, str], None], mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        fill(fd, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync dir).

    ``mode`` sets the permission bits before any byte is written (e.g. 0o600 for a secret key;
    by default what the umask allows a new file)."""
    def fill(fd: int, _tmp: str) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _replace_with_temp(Path(path), fill, mode)


def atomic_copy(src: Path | str, dst: Path | str) -> None:
    """Copy ``src`` to ``dst`` with the same guarantees as :func:`atomic_write`."""
    def fill(fd: int, tmp: str) -> None:
        os.close(fd)
        shutil.copyfile(src, tmp)
        fsync_file(tmp)
    _replace_with_temp(Path(dst), fill, DEFAULT_MODE)


def blake3_file(path: Path | str, progress: Progress | None = None, chunk: int = 1 << 22) -> str:
    """The BLAKE3 hex digest of a file's bytes (multi-threaded on large files)."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    path = Path(path)
    total = path.stat().st_size if progress else 0
    done = 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if progress:
                done += len(block)
                progress(done, total)
    return h.hexdigest()
