"""Fetching: from a magnet link to verified content under its final name.

A download goes into ``dest/.hearth-partial-<hash>/``; once complete, flushed and verified it is
moved to ``dest/<torrent name>``, so nothing unverified ever appears under its final name. An
interrupted fetch keeps its partial data and resume data, and the next fetch of the same magnet
into the same ``dest`` continues from there.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import libtorrent as lt

from common.files import atomic_write
from swarm.content import (
    ContentError, ContentRef, Verifier, check_layout, magnet_uri, parse_magnet, verify_model_file,
)
from swarm.settings import parse_endpoint
from swarm.torrent.errors import FetchInterrupted, FetchStalled, SwarmError
from swarm.torrent.seeding import SeedingPolicy, promote, resume_path
from swarm.torrent.session import Session
from swarm.torrent.torrents import Torrent, info_key, real_files

#: libtorrent's errors::torrent_inconsistent_hashes ("v1 and v2 hashes do not describe the same
#: data"), and how many times a fetch recovers from it.
INCONSISTENT_HASHES = 217
MAX_RECOVERIES = 100
#: A fetch left with no peers but banned ones restarts its torrent after this long (and at most
#: this many times).
RESTART_AFTER_SECONDS = 5.0
MAX_RESTARTS = 5
#: How often a fetch looks at its torrent's status.
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class FetchProgress:
    done: int
    total: int
    peers: int
    down_rate: int
    up_rate: int
    state: str


@dataclass(frozen=True)
class FetchResult:
    ref: ContentRef
    path: Path
    magnet: str
    size: int
    seconds: float
    #: Payload bytes downloaded by this run (less than ``size`` when a fetch resumed).
    downloaded: int
    hash_failures: int
    banned: tuple[str, ...]


class _Restart(Exception):
    pass


class Fetch:
    """One fetch of one magnet into one directory, and everything it has learnt so far."""

    def __init__(self, session: Session, policy: SeedingPolicy, state_dir: Path, magnet: str,
                 dest: Path | str, *, verifiers: dict[str, Verifier] | None = None,
                 max_bytes: dict[str, int] | None = None, peers: list[str] = (),
                 timeout: float | None = None,
                 progress: Callable[[FetchProgress], None] | None = None,
                 keep_seeding: bool = False):
        self.session, self.policy, self.state_dir = session, policy, state_dir
        self.magnet = parse_magnet(magnet)
        self.dest = Path(dest)
        self.verifiers = {"model": verify_model_file, **(verifiers or {})}
        self.max_bytes = max_bytes or {}
        self.peers = [parse_endpoint(p) for p in peers]
        self.timeout, self.progress, self.keep_seeding = timeout, progress, keep_seeding
        self.key = self.magnet.key
        self.partial = self.dest / f".hearth-partial-{self.key[:32]}"
        self.resume_path = state_dir / "partial" / f"{self.key}.resume"
        self.label = self.magnet.name or self.key
        self.started = time.monotonic()
        self.handle: lt.torrent_handle | None = None
        #: Known once the metadata has arrived.
        self.ref: ContentRef | None = None
        self.ti: lt.torrent_info | None = None
        #: Over every restart of the torrent.
        self.downloaded = 0
        self.hash_failures = 0
        self.banned: list[str] = []

    def run(self) -> FetchResult:
        if self.magnet.ref is not None:
            self._check_fetchable(self.magnet.ref)
        self.dest.mkdir(parents=True, exist_ok=True)
        for attempt in range(MAX_RESTARTS + 1):
            self.handle = self.session.call(self._add)
            try:
                if self.ref is None:
                    self._await_metadata()
                self._await_download(may_restart=attempt < MAX_RESTARTS)
                self.downloaded += self.handle.status().total_payload_download
                if self.keep_seeding:
                    self._flush()
                    self.session.call(lambda ses: self._count(self.session.torrents[self.key]))
                else:
                    self._forget(keep_resume=True)
                break
            except _Restart:
                # Everyone this torrent may talk to is banned (on one machine an honest peer can
                # be, for sharing a failed piece with a liar): start it afresh from its resume
                # data, which keeps every piece that passed and forgets the bans.
                self.downloaded += self.handle.status().total_payload_download
                self._forget(keep_resume=True)
            except FetchInterrupted:
                raise  # the node saved the resume data as it closed
            except SwarmError:  # stalled, timed out, or the node misbehaved: keep what came
                if self.session.running:
                    self._forget(keep_resume=True)
                raise
            except ContentError:  # the torrent is not what it should be: drop it
                if self.session.running:
                    self._forget(keep_resume=False)
                    shutil.rmtree(self.partial, ignore_errors=True)
                raise
            except BaseException:
                # Interrupted from outside (Ctrl-C): keep the partial data for the next attempt.
                if self.session.running:
                    self._forget(keep_resume=True)
                raise
        return self._finish()

    # ---- adding the torrent ---------------------------------------------------------------------

    def _add(self, ses: lt.session) -> lt.torrent_handle:
        if self.key in self.session.torrents:
            raise SwarmError(f"{self.label}: already being fetched or seeded by this node")
        atp = self._resume_or_magnet()
        atp.save_path = str(self.partial)
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        atp.peers = self.peers
        if atp.ti is None and self.ref is None:
            # Request no piece until the metadata has arrived and its layout and size pass
            # (upload mode still exchanges the metadata): an oversized torrent costs nothing.
            atp.flags |= lt.torrent_flags.upload_mode
        h = ses.add_torrent(atp)
        self.session.torrents[self.key] = Torrent(h, "fetch", self.label, self.resume_path)
        self.policy.use_slots(ses, fetching=True)
        return h

    def _resume_or_magnet(self) -> lt.add_torrent_params:
        if self.resume_path.is_file() and self.partial.is_dir():
            try:
                atp = lt.read_resume_data(self.resume_path.read_bytes())
                if info_key(atp.info_hashes) == self.key:
                    return atp
            except RuntimeError:
                pass
        self.resume_path.unlink(missing_ok=True)
        return lt.parse_magnet_uri(self.magnet.uri)

    def _check_fetchable(self, ref: ContentRef) -> None:
        if ref.kind not in self.verifiers:
            raise ContentError(f"no way to verify a {ref.kind} here, so it is not fetched")
        final = self.dest / ref.torrent_name
        if final.exists():
            raise ContentError(f"{final} already exists")

    # ---- waiting ----------------------------------------------------------------------------

    def _deadline_check(self, what: str) -> None:
        if not self.session.running:
            raise FetchInterrupted("the swarm node closed during the fetch; run it again to "
                                   "continue where it stopped")
        if self.timeout is not None and time.monotonic() - self.started > self.timeout:
            raise FetchStalled(f"{what}: timed out after {self.timeout:.0f} s; run the fetch "
                               f"again to continue")

    def _await_metadata(self) -> None:
        """Wait for the info dictionary and refuse a torrent that is not the content named."""
        stall = self.session.settings.stall_timeout
        last_peer = time.monotonic()
        while True:
            self._deadline_check(self.label)
            st = self.handle.status()
            if st.has_metadata:
                break
            if st.num_peers:
                last_peer = time.monotonic()
            elif time.monotonic() - last_peer > stall:
                raise FetchStalled(f"{self.label}: no peer found in {stall:.0f} s (is anyone "
                                   f"seeding it, and is the DHT bootstrapped?)")
            time.sleep(POLL_SECONDS)
        ti = self.handle.torrent_file()
        ref = ContentRef.from_name(ti.name())
        if ref is None:
            raise ContentError(f"torrent {ti.name()!r} is not Hearth content (its name does not "
                               f"say what it holds)")
        m = self.magnet
        if m.ref is not None and ref != m.ref:
            raise ContentError(f"the magnet link names {m.name} but the torrent is {ti.name()}")
        if m.ref is None:
            self._check_fetchable(ref)
        check_layout(ref, [(p, s) for _, p, s in real_files(ti)], self.max_bytes.get(ref.kind))
        self.ref, self.ti = ref, ti
        self.handle.unset_flags(lt.torrent_flags.upload_mode)

    def _await_download(self, may_restart: bool) -> None:
        name = self.ref.torrent_name
        stall = self.session.settings.stall_timeout
        best, last_gain = -1, time.monotonic()
        recovered = 0
        while True:
            self._deadline_check(name)
            st = self.handle.status()
            if st.errc.value():
                if st.errc.value() == INCONSISTENT_HASHES \
                        and st.errc.category().name() == "libtorrent" \
                        and recovered < MAX_RECOVERIES:
                    # A hybrid torrent stops when a piece passes one of its v1/v2 checks and
                    # fails the other, which a peer sending bad data can cause; the piece is
                    # dropped either way, so carry on (the sender is banned for its hash fails).
                    recovered += 1
                    self.handle.clear_error()
                    self.handle.resume()
                    time.sleep(POLL_SECONDS)
                    continue
                raise ContentError(f"{name}: {st.errc.message()}")
            if self.progress is not None:
                self.progress(FetchProgress(st.total_wanted_done, st.total_wanted, st.num_peers,
                                            st.download_payload_rate, st.upload_payload_rate,
                                            str(st.state)))
            if st.is_finished or st.is_seeding:
                return
            if st.total_wanted_done > best:
                best, last_gain = st.total_wanted_done, time.monotonic()
            elif may_restart and st.num_peers == 0 and \
                    time.monotonic() - last_gain > RESTART_AFTER_SECONDS and self._has_bans():
                raise _Restart()
            elif time.monotonic() - last_gain > stall:
                raise FetchStalled(f"{name}: no data arrived for {stall:.0f} s "
                                   f"({st.num_peers} peers connected)")
            time.sleep(POLL_SECONDS)

    def _has_bans(self) -> bool:
        torrents = self.session.torrents
        return bool(self.session.call(lambda ses: self.key in torrents
                                      and torrents[self.key].banned))

    # ---- the end of a fetch -------------------------------------------------------------------

    def _finish(self) -> FetchResult:
        """Verify the complete download and move it to its final place."""
        ref, ti = self.ref, self.ti
        got = self.partial / ref.torrent_name
        final = self.dest / ref.torrent_name
        try:
            self.verifiers[ref.kind](ref, got)
        except ContentError as e:
            if self.keep_seeding and self.session.running:
                self._forget(keep_resume=False)
            shutil.rmtree(self.partial, ignore_errors=True)
            self.resume_path.unlink(missing_ok=True)
            raise ContentError(f"{ref.short} failed verification after download, so it was "
                               f"deleted: {e}") from None
        if self.keep_seeding:
            self._move_to_seed()
        else:
            try:
                os.rename(got, final)
            except OSError as e:
                raise ContentError(f"{final}: cannot move the verified download there "
                                   f"({e.strerror}); it is in {self.partial}") from None
            # The completed torrent's resume data lets the node seed it from its new home.
            done = self.resume_path.with_suffix(".done")
            if done.is_file():
                os.replace(done, resume_path(self.state_dir, ref.torrent_name))
        shutil.rmtree(self.partial, ignore_errors=True)
        self.resume_path.unlink(missing_ok=True)
        return FetchResult(ref=ref, path=final, magnet=magnet_uri(ti),
                           size=sum(size for _, _, size in real_files(ti)),
                           seconds=time.monotonic() - self.started, downloaded=self.downloaded,
                           hash_failures=self.hash_failures, banned=tuple(self.banned))

    def _count(self, t: Torrent) -> None:
        """Add a torrent record's hash failures and bans to the fetch's (on the session
        thread, which owns the record)."""
        self.hash_failures += t.hash_failures
        self.banned += [b for b in t.banned if b not in self.banned]

    def _flush(self) -> tuple[bytes | None, bool]:
        """Write the torrent's data to disk and return (its resume data, whether complete)."""
        handle = self.handle

        def saved(a):
            # Alerts live only until the next pop_alerts: take what is needed now.
            if isinstance(a, lt.save_resume_data_failed_alert) and a.handle == handle:
                return (None, False)
            if isinstance(a, lt.save_resume_data_alert) and a.handle == handle:
                params = a.params
                have = list(params.have_pieces)
                complete = params.ti is not None and len(have) == params.ti.num_pieces() \
                    and all(have)
                return (lt.write_resume_data_buf(params), complete)
            return None
        try:
            return self.session.expect(
                lambda ses: handle.save_resume_data(lt.save_resume_flags_t.flush_disk_cache
                                                    | lt.save_resume_flags_t.save_info_dict),
                saved, 30.0)
        except FutureTimeout:
            return None, False

    def _move_to_seed(self) -> None:
        """Move a verified download to its final place without leaving the swarm: libtorrent
        moves the files and the torrent goes on, now as a seed."""
        handle, final = self.handle, self.dest / self.ref.torrent_name

        def moved(a):
            if isinstance(a, lt.storage_moved_failed_alert) and a.handle == handle:
                raise ContentError(f"{final}: cannot move the verified download there "
                                   f"({a.message()})")
            if isinstance(a, lt.storage_moved_alert) and a.handle == handle:
                return True
            return None
        self.session.expect(
            lambda ses: handle.move_storage(str(self.dest), lt.move_flags_t.fail_if_exist),
            moved, 60.0)
        self.session.call(lambda ses: promote(self.session.torrents[self.key], self.ref,
                                              self.state_dir))

    def _forget(self, keep_resume: bool) -> None:
        """Flush the torrent's data to disk, save its resume data (``.resume`` while partial,
        ``.done`` when complete; kept only if asked, or when complete) and remove it from the
        session, waiting until libtorrent has closed its files."""
        handle, key = self.handle, self.key
        buf, complete = self._flush()

        def remove(ses):
            t = self.session.torrents.pop(key, None)
            if t is None:
                return
            self._count(t)
            if buf is not None:
                if complete:
                    atomic_write(t.resume_path.with_suffix(".done"), buf)
                    t.resume_path.unlink(missing_ok=True)
                elif keep_resume:
                    atomic_write(t.resume_path, buf)
            if not keep_resume:
                t.resume_path.unlink(missing_ok=True)
            ses.remove_torrent(handle)

        def removed(a):
            if isinstance(a, lt.torrent_removed_alert) and info_key(a.info_hashes) == key:
                return True
            return None
        try:
            self.session.expect(remove, removed, 10.0)
        except FutureTimeout:
            pass
