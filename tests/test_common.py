"""The shared helpers: durable atomic writes, BLAKE3 file hashes, the data and config directories."""

import os
import stat

import blake3
import pytest

from common import files
from common.files import atomic_copy, atomic_write, blake3_file
from common.paths import config_dir, data_dir


def test_atomic_write_replaces_the_content_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "state.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert os.listdir(path.parent) == ["state.bin"]


def test_atomic_write_fsyncs_the_directory(tmp_path, monkeypatch):
    synced = []
    real = files.fsync_dir
    monkeypatch.setattr(files, "fsync_dir", lambda p: (synced.append(p), real(p)))
    atomic_write(tmp_path / "a", b"x")
    atomic_copy(tmp_path / "a", tmp_path / "b")
    assert synced == [tmp_path, tmp_path]


def test_a_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "state.bin"
    atomic_write(path, b"old")

    def refuse(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    with pytest.raises(OSError, match="disk full"):
        atomic_copy(path, tmp_path / "copy.bin")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.bin"]


def test_atomic_write_sets_the_mode(tmp_path):
    path = tmp_path / "secret"
    atomic_write(path, b"key", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, b"key", mode=0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_copy_copies(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(10_000))
    atomic_copy(src, tmp_path / "out" / "dst")
    assert (tmp_path / "out" / "dst").read_bytes() == src.read_bytes()
    assert os.listdir(tmp_path / "out") == ["dst"]


def test_blake3_file_is_the_hash_of_the_bytes_and_reports_progress(tmp_path):
    data = os.urandom(5_500)
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen = []
    digest = blake3_file(path, progress=lambda done, total: seen.append((done, total)), chunk=1000)
    assert digest == blake3.blake3(data).hexdigest() == blake3_file(path)
    assert seen == [(n, 5_500) for n in (1000, 2000, 3000, 4000, 5000, 5500)]


def test_the_directories_follow_their_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEARTH_CONFIG_DIR", str(tmp_path / "config"))
    assert data_dir() == tmp_path / "home" and config_dir() == tmp_path / "config"
    monkeypatch.delenv("HEARTH_HOME")
    monkeypatch.delenv("HEARTH_CONFIG_DIR")
    assert data_dir().name == "hearth" and config_dir().name == "hearth"


def test_replaced_files_get_the_mode_a_plain_write_would(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic_write(tmp_path / "a", b"x")
    atomic_copy(plain, tmp_path / "b")
    want = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == want
