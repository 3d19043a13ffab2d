"""The swarm node: one libtorrent session on its own thread, behind a synchronous facade.

The thread owns the session. It pumps alerts (resume data, hash failures, bans, DHT replies),
runs the calls the facade queues, and once a second refreshes the status the game shows and
applies the seeding policy. Facade methods block the caller, never the thread, and every wait
has a deadline.

Seeding policy. A node that only seeds unchokes few peers at a time (``SEED_UPLOAD_SLOTS``,
rotated often, in libtorrent's anti-leech order), so the pieces it sends go to different peers,
who trade them among themselves; while it is also fetching it unchokes more
(``FETCH_UPLOAD_SLOTS``) for tit-for-tat. While the peers connected to a seeded torrent together
hold every piece, the node drops that torrent's upload to ``step_back_share`` of its limit.
With eight downloaders the seed sends about one copy (``tools/bench/swarm.py``). libtorrent's
super-seeding would also spread pieces, but in 2.1 it sends nothing to a new peer for its first
ten seconds (its opening HAVE messages are dropped during the handshake).

Resume data is written whenever a torrent finishes, every few minutes, and on close, so a
restart neither re-hashes what is seeded nor re-downloads what a fetch already has.
"""

from __future__ import annotations

import atexit
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import libtorrent as lt

from swarm.content import (
    Content, ContentError, ContentRef, Magnet, Verifier, check_layout, magnet_uri, make_torrent,
    parse_magnet, verify_model_file,
)
from swarm.index import INDEX_SALT, SignedItem, expanded_secret
from swarm.settings import SwarmSettings, parse_endpoint

#: Peers a node uploads to at once while it only seeds (see the module docstring), and while it
#: is also fetching (when tit-for-tat trading wants more partners).
SEED_UPLOAD_SLOTS = 2
FETCH_UPLOAD_SLOTS = 4
#: How often the node thread refreshes status and policy, and how long it sleeps per alert wait.
TICK_SECONDS = 1.0
ALERT_WAIT_MS = 50
RESUME_EVERY_SECONDS = 300.0
CALL_TIMEOUT = 30.0
DHT_ITEM_TIMEOUT = 20.0

#: libtorrent's errors::torrent_inconsistent_hashes ("v1 and v2 hashes do not describe the same
#: data"), and how many times a fetch recovers from it.
INCONSISTENT_HASHES = 217
MAX_RECOVERIES = 100
#: A fetch left with no peers but banned ones restarts its torrent after this long (and at most
#: this many times).
RESTART_AFTER_SECONDS = 5.0
MAX_RESTARTS = 5

ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
              | lt.alert_category.peer | lt.alert_category.ip_block | lt.alert_category.dht
              | lt.alert_category.dht_operation)


class SwarmError(ContentError):
    """The node could not do what was asked (not running, timed out, closed meanwhile)."""


class FetchInterrupted(SwarmError):
    """The node closed during a fetch; what was downloaded is kept for the next attempt."""


class FetchStalled(SwarmError):
    """A fetch timed out or stopped making progress; what was downloaded is kept."""


class _Restart(Exception):
    pass


def session_settings(s: SwarmSettings) -> dict[str, Any]:
    """libtorrent settings for a Hearth node. Port mapping and public bootstrap routers are
    always off: the node reaches only the nodes it is configured with and peers they lead to."""
    host, port = parse_endpoint(s.listen, allow_zero=True)
    iface = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pack: dict[str, Any] = {
        "listen_interfaces": iface,
        "enable_dht": s.dht,
        "dht_bootstrap_nodes": "",
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_lsd": s.lan_discovery,
        "upload_rate_limit": s.upload_limit,
        "download_rate_limit": s.download_limit,
        "alert_mask": ALERT_MASK,
        "alert_queue_size": 10000,
        "user_agent": "Hearth/0.1 libtorrent/" + lt.__version__,
        # A failed connection is retried soon: with a peer sending bad data, a piece mixed from
        # two peers can cost the honest one a strike, and waiting the default minute stalls.
        "min_reconnect_time": 2,
        "unchoke_slots_limit": SEED_UPLOAD_SLOTS,
        "seed_choking_algorithm": 2,  # anti-leech: favour peers that have little or almost all
        "unchoke_interval": 5,
    }
    if s.loopback:
        pack.update({
            # Every peer is 127.0.0.1: uTP on loopback is many times slower than TCP, and the
            # one-connection/one-DHT-node-per-IP rules would leave a single peer.
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_prefer_verified_node_ids": False,
            "dht_ignore_dark_internet": False,
            "dht_block_ratelimit": 100000,
            "dht_announce_interval": 30,
            # BEP 6's allowed-fast set is derived from the peer's IP: on one IP every peer would
            # be offered the same pieces first.
            "allowed_fast_set_size": 0,
            # Rate limits are handed out per tick; a short one keeps the round trips short.
            "tick_interval": 20,
            "unchoke_interval": 1,
        })
    return pack


@dataclass
class _Torrent:
    handle: lt.torrent_handle
    role: str  # "seed" or "fetch"
    name: str
    resume_path: Path
    hash_failures: int = 0
    banned: list[str] = field(default_factory=list)
    error: str | None = None
    stepped_back: bool = False


@dataclass(frozen=True)
class Seeded:
    ref: ContentRef
    magnet: str
    name: str


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


def info_key(ih: lt.info_hash_t) -> str:
    """The v2 info-hash in hex when the torrent has one, else the v1 one."""
    return str(ih.v2) if ih.has_v2() else str(ih.v1)


def _real_files(ti: lt.torrent_info) -> list[tuple[int, str, int]]:
    fs = ti.layout()
    return [(i, fs.file_path(i), fs.file_size(i)) for i in range(fs.num_files())
            if not fs.file_flags(i) & lt.file_storage.flag_pad_file]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rate(n: float) -> str:
    for unit in ("B/s", "KB/s", "MB/s"):
        if n < 1000 or unit == "MB/s":
            return f"{n:.0f} {unit}" if unit == "B/s" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


class SwarmNode:
    """A Hearth swarm node. ``state_dir`` keeps its torrents' resume data and torrent files."""

    def __init__(self, settings: SwarmSettings, state_dir: Path | str):
        self.settings = settings
        self.state_dir = Path(state_dir)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._ses: lt.session | None = None
        self._port = 0
        # Only the node thread touches these two.
        self._waiters: list[tuple[Callable[[Any], Any], Future]] = []
        self._torrents: dict[str, _Torrent] = {}
        self._status: dict[str, Any] = {"state": "starting"}
        self._slots = SEED_UPLOAD_SLOTS

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> SwarmNode:
        for sub in ("resume", "torrents", "partial"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="hearth-swarm",
                                        daemon=True)
        self._thread.start()
        # A session still running when the interpreter exits aborts the process.
        atexit.register(self.close)
        try:
            ready.result(timeout)
        except FutureTimeout:
            raise SwarmError("the swarm node did not start in time") from None
        except RuntimeError as e:
            raise SwarmError(f"cannot start the swarm node on {self.settings.listen}: {e}") from None
        return self

    def close(self, timeout: float = 20.0) -> None:
        """Save every torrent's resume data and shut the session down."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)
        self._thread = None
        atexit.unregister(self.close)

    def __enter__(self) -> SwarmNode:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping.is_set() \
            and not self._stopped.is_set()

    @property
    def listen_port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        host = self.settings.listen_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{host}:{self._port}"

    # ---- the node thread ----------------------------------------------------------------------

    def _run(self, ready: Future) -> None:
        try:
            ses = lt.session(session_settings(self.settings))
            if self.settings.loopback:
                # Local peers are exempt from rate limits by default; on loopback every peer is.
                f = lt.ip_filter()
                f.add_rule("0.0.0.0", "255.255.255.255", 1 << ses.global_peer_class_id)
                ses.set_peer_class_filter(f)
            for node in self.settings.bootstrap:
                ses.add_dht_node(parse_endpoint(node))
            self._ses = ses
            self._port = ses.listen_port()
            if not self._port:
                raise RuntimeError("not listening (is the port in use?)")
        except Exception as e:
            ready.set_exception(RuntimeError(str(e)))
            self._stopped.set()
            return
        ready.set_result(None)
        last_tick, last_resume = 0.0, time.monotonic()
        try:
            while not self._stopping.is_set():
                ses.wait_for_alert(ALERT_WAIT_MS)
                self._drain(ses)
                now = time.monotonic()
                if now - last_tick >= TICK_SECONDS:
                    last_tick = now
                    self._tick(ses)
                if now - last_resume >= RESUME_EVERY_SECONDS:
                    last_resume = now
                    for t in self._torrents.values():
                        if t.handle.need_save_resume_data():
                            t.handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
            self._shutdown(ses)
        finally:
            self._stopped.set()
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(FetchInterrupted("the swarm node closed"))
            self._waiters.clear()
            while True:
                try:
                    _, fut = self._calls.get_nowait()
                except queue.Empty:
                    break
                if not fut.done():
                    fut.set_exception(SwarmError("the swarm node closed"))
            self._ses = None

    def _drain(self, ses: lt.session) -> None:
        for a in ses.pop_alerts():
            self._on_alert(a)
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(ses))
                except BaseException as e:  # handed to the caller, who re-raises it
                    fut.set_exception(e)

    def _torrent_for(self, a) -> _Torrent | None:
        try:
            return self._torrents.get(info_key(a.handle.info_hashes()))
        except (AttributeError, RuntimeError):
            return None

    def _on_alert(self, a) -> None:
        if isinstance(a, lt.save_resume_data_alert):
            t = self._torrent_for(a)
            if t is not None:
                try:
                    _write_atomic(t.resume_path, lt.write_resume_data_buf(a.params))
                except OSError:
                    pass  # the next save tries again; a missing resume file only costs a re-check
        elif isinstance(a, lt.hash_failed_alert):
            t = self._torrent_for(a)
            if t is not None:
                t.hash_failures += 1
        elif isinstance(a, lt.peer_ban_alert):
            t = self._torrent_for(a)
            ep = f"{a.endpoint[0]}:{a.endpoint[1]}"
            if t is not None and ep not in t.banned:
                t.banned.append(ep)
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            t = self._torrent_for(a)
            if t is not None:
                t.error = a.message()
        for match, fut in list(self._waiters):
            try:
                result = match(a)
            except Exception as e:
                self._waiters.remove((match, fut))
                fut.set_exception(e)
                continue
            if result is not None:
                self._waiters.remove((match, fut))
                if not fut.done():
                    fut.set_result(result)

    def _tick(self, ses: lt.session) -> None:
        peers = up = down = 0
        seeding: list[str] = []
        fetching = 0
        for t in list(self._torrents.values()):
            if not t.handle.is_valid():
                continue
            st = t.handle.status()
            peers += st.num_peers
            up += st.upload_payload_rate
            down += st.download_payload_rate
            if t.role == "seed":
                seeding.append(t.name.split("-")[1] if t.name.startswith("hearth-") else "file")
                self._step_back(t, st)
            else:
                fetching += 1
        slots = FETCH_UPLOAD_SLOTS if fetching else SEED_UPLOAD_SLOTS
        if slots != self._slots:
            self._slots = slots
            ses.apply_settings({"unchoke_slots_limit": slots})
        kinds = {k: seeding.count(k) for k in ("model", "skin", "file") if seeding.count(k)}
        sharing = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items())
        state = "fetching" if fetching else ("seeding" if seeding else "idle")
        self._status = {"state": state, "peers": peers,
                        "rates": f"up {_rate(up)}, down {_rate(down)}",
                        "sharing": sharing or "nothing yet"}

    def _step_back(self, t: _Torrent, st) -> None:
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

    def _shutdown(self, ses: lt.session) -> None:
        pending = 0
        for t in self._torrents.values():
            if t.handle.is_valid():
                t.handle.save_resume_data(lt.save_resume_flags_t.flush_disk_cache
                                          | lt.save_resume_flags_t.save_info_dict)
                pending += 1
        deadline = time.monotonic() + 10.0
        while pending and time.monotonic() < deadline:
            ses.wait_for_alert(100)
            for a in ses.pop_alerts():
                if isinstance(a, (lt.save_resume_data_alert, lt.save_resume_data_failed_alert)):
                    pending -= 1
                self._on_alert(a)
        ses.pause()

    # ---- calls onto the thread ----------------------------------------------------------------

    def _call(self, fn: Callable[[lt.session], Any], timeout: float = CALL_TIMEOUT) -> Any:
        if not self.running:
            raise SwarmError("the swarm node is not running")
        fut: Future = Future()
        self._calls.put((fn, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise SwarmError("the swarm node did not answer in time") from None

    def _register(self, start: Callable[[lt.session], Any],
                  match: Callable[[Any], Any]) -> Future:
        """Run ``start`` on the thread with a waiter for the first alert ``match`` maps to a
        value (registered first, so the alert cannot slip past); the future gets that value."""
        fut: Future = Future()

        def run(ses):
            self._waiters.append((match, fut))
            start(ses)
        self._call(run)
        return fut

    def _unregister(self, fut: Future) -> None:
        def drop(ses):
            self._waiters[:] = [w for w in self._waiters if w[1] is not fut]
        if not fut.done() and self.running:
            self._call(drop)

    def _expect(self, start: Callable[[lt.session], Any], match: Callable[[Any], Any],
                timeout: float) -> Any:
        fut = self._register(start, match)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            self._unregister(fut)
            raise

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the game's swarm box shows: state, peers, rates, what is being shared."""
        if not self.running:
            return {"state": "offline"}
        return dict(self._status)

    def dht_node_count(self) -> int:
        name = "dht.dht_nodes"

        def match(a):
            if isinstance(a, lt.session_stats_alert):
                return int(a.values[name])
            return None
        return self._expect(lambda ses: ses.post_session_stats(), match, 5.0)

    def add_dht_nodes(self, endpoints: list[str]) -> None:
        nodes = [parse_endpoint(e) for e in endpoints]
        self._call(lambda ses: [ses.add_dht_node(n) for n in nodes])

    def torrent_stats(self, ref: ContentRef) -> dict[str, Any]:
        """Counters for one torrent (hash failures, banned peers, bytes), for tests and tools."""
        def get(ses):
            for t in self._torrents.values():
                if t.name == ref.torrent_name:
                    st = t.handle.status()
                    return {"hash_failures": t.hash_failures, "banned": list(t.banned),
                            "uploaded": st.total_payload_upload,
                            "downloaded": st.total_payload_download, "peers": st.num_peers,
                            "seeding": st.is_seeding}
            return None
        return self._call(get)

    def set_rate_limits(self, upload: int | None = None, download: int | None = None) -> None:
        pack = {}
        if upload is not None:
            pack["upload_rate_limit"] = upload
            self.settings.upload_limit = upload
        if download is not None:
            pack["download_rate_limit"] = download
            self.settings.download_limit = download
        self._call(lambda ses: ses.apply_settings(pack))

    # ---- seeding ------------------------------------------------------------------------------

    def seeded(self) -> list[Seeded]:
        def get(ses):
            out = []
            for t in self._torrents.values():
                if t.role == "seed" and t.handle.is_valid():
                    ti = t.handle.torrent_file()
                    ref = ContentRef.from_name(t.name)
                    if ti is not None and ref is not None:
                        out.append(Seeded(ref, magnet_uri(ti), t.name))
            return out
        return self._call(get)

    def seed(self, content: Content) -> Seeded:
        """Start seeding ``content`` and return its magnet link. The first time, the content is
        hashed (the torrent is kept, so later runs do not hash it again); afterwards its resume
        data is used, so nothing is re-checked."""
        name = content.ref.torrent_name
        for s in self.seeded():
            if s.name == name:
                return s
        atp = self._resume_for_seed(content)
        if atp is None:
            cached = self.state_dir / "torrents" / f"{name}.torrent"
            data = cached.read_bytes() if cached.is_file() else None
            if data is None:
                data = make_torrent(content)
                _write_atomic(cached, data)
            atp = lt.add_torrent_params()
            try:
                atp.ti = lt.torrent_info(data)
            except RuntimeError as e:
                cached.unlink(missing_ok=True)
                raise ContentError(f"{cached}: unreadable torrent ({e})") from None
            # Seed mode: trust the files now, check each piece the first time it is sent.
            atp.flags |= lt.torrent_flags.seed_mode
        ti = atp.ti
        if ti.name() != name:
            raise ContentError(f"the torrent for {content.ref.short} is named {ti.name()!r}")
        on_disk = content.on_disk()
        renamed = {}
        for index, path, size in _real_files(ti):
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
        resume_path = self.state_dir / "resume" / f"{name}.resume"
        key = info_key(ti.info_hashes())

        def add(ses):
            h = ses.add_torrent(atp)
            self._torrents[key] = _Torrent(h, "seed", name, resume_path)
            if not resume_path.exists():
                h.save_resume_data(lt.save_resume_flags_t.save_info_dict)
            return h
        self._call(add)
        return Seeded(content.ref, magnet_uri(ti), name)

    def _resume_for_seed(self, content: Content) -> lt.add_torrent_params | None:
        path = self.state_dir / "resume" / f"{content.ref.torrent_name}.resume"
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

    def stop_seeding(self, ref: ContentRef) -> None:
        def stop(ses):
            for key, t in list(self._torrents.items()):
                if t.name == ref.torrent_name and t.role == "seed":
                    ses.remove_torrent(t.handle)
                    del self._torrents[key]
        self._call(stop)

    # ---- fetching -----------------------------------------------------------------------------

    def fetch(self, magnet: str, dest: Path | str, *, verifiers: dict[str, Verifier] | None = None,
              max_bytes: dict[str, int] | None = None, peers: list[str] = (),
              timeout: float | None = None,
              progress: Callable[[FetchProgress], None] | None = None,
              keep_seeding: bool = False) -> FetchResult:
        """Download ``magnet`` into ``dest``: first into ``dest/.hearth-partial-<hash>/``, then,
        once complete, flushed and verified, moved to ``dest/<torrent name>``. Content that fails
        verification is deleted and a ContentError names what failed; nothing unverified ever
        appears under its final name. An interrupted fetch (the node closed, the process
        stopped) keeps its partial data and resume data, and the next fetch of the same magnet
        into the same ``dest`` continues from there. With ``keep_seeding`` the torrent stays in
        the swarm throughout and goes on seeding the content from its final place."""
        m = parse_magnet(magnet)
        dest = Path(dest)
        verifiers = {"model": verify_model_file, **(verifiers or {})}
        max_bytes = max_bytes or {}
        if m.ref is not None:
            self._check_fetchable(m.ref, dest, verifiers)
        dest.mkdir(parents=True, exist_ok=True)
        partial = dest / f".hearth-partial-{m.key[:32]}"
        resume_path = self.state_dir / "partial" / f"{m.key}.resume"
        key = m.key
        started = time.monotonic()

        def add(ses):
            if key in self._torrents:
                raise SwarmError(f"{m.name or key}: already being fetched or seeded by this node")
            atp = self._resume_for_fetch(m, resume_path, partial)
            atp.save_path = str(partial)
            atp.flags &= ~lt.torrent_flags.auto_managed
            atp.flags &= ~lt.torrent_flags.paused
            atp.peers = [parse_endpoint(p) for p in peers]
            h = ses.add_torrent(atp)
            self._torrents[key] = _Torrent(h, "fetch", m.name or key, resume_path)
            if self._slots != FETCH_UPLOAD_SLOTS:
                self._slots = FETCH_UPLOAD_SLOTS
                ses.apply_settings({"unchoke_slots_limit": FETCH_UPLOAD_SLOTS})
            return h
        downloaded, hash_failures, banned = 0, 0, []
        ref = ti = None
        for attempt in range(MAX_RESTARTS + 1):
            handle = self._call(add)
            try:
                if ref is None:
                    ref, ti = self._await_metadata(handle, m, dest, verifiers, max_bytes, started,
                                                   timeout)
                self._await_download(handle, ref, started, timeout, progress,
                                     may_restart=attempt < MAX_RESTARTS)
                downloaded += handle.status().total_payload_download
                if keep_seeding:
                    self._flush(handle)
                    stats = self._call(lambda ses: (self._torrents[key].hash_failures,
                                                    list(self._torrents[key].banned)))
                else:
                    stats = self._forget(key, handle, keep_resume=True)
                hash_failures += stats[0]
                banned += [b for b in stats[1] if b not in banned]
                break
            except _Restart:
                # Everyone this torrent may talk to is banned (on one machine an honest peer can
                # be, for sharing a failed piece with a liar): start it afresh from its resume
                # data, which keeps every piece that passed and forgets the bans.
                downloaded += handle.status().total_payload_download
                stats = self._forget(key, handle, keep_resume=True)
                hash_failures += stats[0]
                banned += [b for b in stats[1] if b not in banned]
            except FetchInterrupted:
                raise  # the node saved the resume data as it closed
            except SwarmError:  # stalled, timed out, or the node misbehaved: keep what came
                if self.running:
                    self._forget(key, handle, keep_resume=True)
                raise
            except ContentError:  # the torrent is not what it should be: drop it
                if self.running:
                    self._forget(key, handle, keep_resume=False)
                    shutil.rmtree(partial, ignore_errors=True)
                raise
            except BaseException:
                # Interrupted from outside (Ctrl-C): keep the partial data for the next attempt.
                if self.running:
                    self._forget(key, handle, keep_resume=True)
                raise
        size = sum(size for _, _, size in _real_files(ti))
        got = partial / ref.torrent_name
        final = dest / ref.torrent_name
        try:
            verifiers[ref.kind](ref, got)
        except ContentError as e:
            if keep_seeding and self.running:
                self._forget(key, handle, keep_resume=False)
            shutil.rmtree(partial, ignore_errors=True)
            resume_path.unlink(missing_ok=True)
            raise ContentError(f"{ref.short} failed verification after download, so it was "
                               f"deleted: {e}") from None
        if keep_seeding:
            self._move_to_seed(key, handle, dest, ref)
        else:
            try:
                os.rename(got, final)
            except OSError as e:
                raise ContentError(f"{final}: cannot move the verified download there "
                                   f"({e.strerror}); it is in {partial}") from None
            # The completed torrent's resume data lets the node seed it from its new home.
            done = resume_path.with_suffix(".done")
            if done.is_file():
                os.replace(done, self.state_dir / "resume" / f"{ref.torrent_name}.resume")
        shutil.rmtree(partial, ignore_errors=True)
        resume_path.unlink(missing_ok=True)
        return FetchResult(ref=ref, path=final, magnet=magnet_uri(ti), size=size,
                           seconds=time.monotonic() - started, downloaded=downloaded,
                           hash_failures=hash_failures, banned=tuple(banned))

    def _check_fetchable(self, ref: ContentRef, dest: Path, verifiers: dict[str, Verifier]) -> None:
        if ref.kind not in verifiers:
            raise ContentError(f"no way to verify a {ref.kind} here, so it is not fetched")
        final = dest / ref.torrent_name
        if final.exists():
            raise ContentError(f"{final} already exists")

    def _resume_for_fetch(self, m: Magnet, resume_path: Path, partial: Path):
        if resume_path.is_file() and partial.is_dir():
            try:
                atp = lt.read_resume_data(resume_path.read_bytes())
                if info_key(atp.info_hashes) == m.key:
                    return atp
            except RuntimeError:
                pass
        resume_path.unlink(missing_ok=True)
        return lt.parse_magnet_uri(m.uri)

    def _deadline_check(self, started: float, timeout: float | None, what: str) -> None:
        if not self.running:
            raise FetchInterrupted("the swarm node closed during the fetch; run it again to "
                                   "continue where it stopped")
        if timeout is not None and time.monotonic() - started > timeout:
            raise FetchStalled(f"{what}: timed out after {timeout:.0f} s; run the fetch again "
                               f"to continue")

    def _await_metadata(self, handle, m: Magnet, dest: Path, verifiers, max_bytes, started,
                        timeout) -> tuple[ContentRef, lt.torrent_info]:
        last_peer = time.monotonic()
        while True:
            self._deadline_check(started, timeout, m.name or m.key)
            st = handle.status()
            if st.has_metadata:
                break
            if st.num_peers:
                last_peer = time.monotonic()
            elif time.monotonic() - last_peer > self.settings.stall_timeout:
                raise FetchStalled(f"{m.name or m.key}: no peer found in "
                                   f"{self.settings.stall_timeout:.0f} s (is anyone seeding it, "
                                   f"and is the DHT bootstrapped?)")
            time.sleep(0.1)
        ti = handle.torrent_file()
        ref = ContentRef.from_name(ti.name())
        if ref is None:
            raise ContentError(f"torrent {ti.name()!r} is not Hearth content (its name does not "
                               f"say what it holds)")
        if m.ref is not None and ref != m.ref:
            raise ContentError(f"the magnet link names {m.name} but the torrent is "
                               f"{ti.name()}")
        if m.ref is None:
            self._check_fetchable(ref, dest, verifiers)
        check_layout(ref, [(p, s) for _, p, s in _real_files(ti)], max_bytes.get(ref.kind))
        return ref, ti

    def _await_download(self, handle, ref: ContentRef, started, timeout, progress,
                        may_restart: bool = False) -> None:
        best, last_gain = -1, time.monotonic()
        recovered = 0
        key = info_key(handle.info_hashes())
        while True:
            self._deadline_check(started, timeout, ref.torrent_name)
            st = handle.status()
            if st.errc.value():
                if st.errc.value() == INCONSISTENT_HASHES and st.errc.category().name() == "libtorrent" \
                        and recovered < MAX_RECOVERIES:
                    # A hybrid torrent stops when a piece passes one of its v1/v2 checks and
                    # fails the other, which a peer sending bad data can cause; the piece is
                    # dropped either way, so carry on (the sender is banned for its hash fails).
                    recovered += 1
                    handle.clear_error()
                    handle.resume()
                    time.sleep(0.1)
                    continue
                raise ContentError(f"{ref.torrent_name}: {st.errc.message()}")
            if progress is not None:
                progress(FetchProgress(st.total_wanted_done, st.total_wanted, st.num_peers,
                                       st.download_payload_rate, st.upload_payload_rate,
                                       str(st.state)))
            if st.is_finished or st.is_seeding:
                return
            if st.total_wanted_done > best:
                best, last_gain = st.total_wanted_done, time.monotonic()
            elif may_restart and st.num_peers == 0 and \
                    time.monotonic() - last_gain > RESTART_AFTER_SECONDS and self._has_bans(key):
                raise _Restart()
            elif time.monotonic() - last_gain > self.settings.stall_timeout:
                raise FetchStalled(f"{ref.torrent_name}: no data arrived for "
                                   f"{self.settings.stall_timeout:.0f} s "
                                   f"({st.num_peers} peers connected)")
            time.sleep(0.1)

    def _flush(self, handle) -> tuple[bytes | None, bool]:
        """Write the torrent's data to disk and return (its resume data, whether complete)."""
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
            return self._expect(
                lambda ses: handle.save_resume_data(lt.save_resume_flags_t.flush_disk_cache
                                                    | lt.save_resume_flags_t.save_info_dict),
                saved, 30.0)
        except FutureTimeout:
            return None, False

    def _move_to_seed(self, key: str, handle, dest: Path, ref: ContentRef) -> None:
        """Move a verified download to its final place without leaving the swarm: libtorrent
        moves the files and the torrent goes on, now as a seed."""
        def moved(a):
            if isinstance(a, lt.storage_moved_failed_alert) and a.handle == handle:
                raise ContentError(f"{dest / ref.torrent_name}: cannot move the verified download "
                                   f"there ({a.message()})")
            if isinstance(a, lt.storage_moved_alert) and a.handle == handle:
                return True
            return None
        self._expect(lambda ses: handle.move_storage(str(dest), lt.move_flags_t.fail_if_exist),
                     moved, 60.0)

        def promote(ses):
            t = self._torrents[key]
            t.role, t.name = "seed", ref.torrent_name
            t.resume_path = self.state_dir / "resume" / f"{ref.torrent_name}.resume"
            handle.set_max_uploads(SEED_UPLOAD_SLOTS)
            handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
        self._call(promote)

    def _has_bans(self, key: str) -> bool:
        return bool(self._call(lambda ses: key in self._torrents and self._torrents[key].banned))

    def _forget(self, key: str, handle, keep_resume: bool) -> tuple[int, list[str]]:
        """Flush the torrent's data to disk, save its resume data (``.resume`` while partial,
        ``.done`` when complete; kept only if asked, or when complete) and remove it from the
        session, waiting until libtorrent has closed its files."""
        buf, complete = self._flush(handle)
        stats: list = [0, []]

        def remove(ses):
            t = self._torrents.pop(key, None)
            if t is None:
                return
            stats[:] = [t.hash_failures, list(t.banned)]
            if buf is not None:
                if complete:
                    _write_atomic(t.resume_path.with_suffix(".done"), buf)
                    t.resume_path.unlink(missing_ok=True)
                elif keep_resume:
                    _write_atomic(t.resume_path, buf)
            if not keep_resume:
                t.resume_path.unlink(missing_ok=True)
            ses.remove_torrent(handle)

        def removed(a):
            if isinstance(a, lt.torrent_removed_alert) and info_key(a.info_hashes) == key:
                return True
            return None
        try:
            self._expect(remove, removed, 10.0)
        except FutureTimeout:
            pass
        return stats[0], stats[1]

    # ---- BEP44 items --------------------------------------------------------------------------

    def put_item(self, seed: bytes, value: bytes, salt: bytes = INDEX_SALT,
                 timeout: float = DHT_ITEM_TIMEOUT) -> tuple[int, int]:
        """Sign ``value`` with the ed25519 key whose 32-byte seed is ``seed`` and store it in the
        DHT under that key and ``salt``. Returns (sequence number, nodes that stored it)."""
        from nacl.signing import SigningKey
        pk = SigningKey(seed).verify_key.encode()
        sk = expanded_secret(seed)

        def match(a):
            if isinstance(a, lt.dht_put_alert) and bytes(a.public_key) == pk \
                    and bytes(a.salt) == salt:
                return (a.seq, a.num_success)
            return None
        try:
            seq, stored = self._expect(lambda ses: ses.dht_put_mutable_item(sk, pk, value, salt),
                                       match, timeout)
        except FutureTimeout:
            raise SwarmError(f"the DHT did not confirm the put within {timeout:.0f} s") from None
        if stored == 0:
            raise SwarmError("no DHT node stored the item (is the DHT bootstrapped?)")
        return seq, stored

    def get_item(self, public_key: bytes, salt: bytes = INDEX_SALT,
                 timeout: float = DHT_ITEM_TIMEOUT, settle: float = 3.0) -> SignedItem | None:
        """The newest item the DHT holds under ``public_key`` and ``salt`` (None if none). The
        lookup ends when it is complete, or ``settle`` seconds after the first copy arrived with
        no newer one (a lookup that meets departed nodes waits out their timeouts; the reader
        checks the signature either way, so an early copy can be stale but never forged)."""
        seen: list[SignedItem] = []

        def match(a):
            if not isinstance(a, lt.dht_mutable_item_alert) or bytes(a.key) != public_key \
                    or bytes(a.salt) != salt:
                return None
            item = a.item
            if isinstance(item, (bytes, str)) and a.seq > 0:
                value = item.encode("latin-1") if isinstance(item, str) else item
                if not seen or a.seq > max(i.seq for i in seen):
                    last_news[0] = time.monotonic()
                seen.append(SignedItem(public_key, salt, a.seq, value, bytes(a.signature)))
            return True if a.authoritative else None
        last_news = [0.0]
        fut = self._register(lambda ses: ses.dht_get_mutable_item(public_key, salt), match)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fut.result(0.1)
                    break
                except FutureTimeout:
                    pass
                now = time.monotonic()
                if seen and now - last_news[0] > settle:
                    break
                if now > deadline:
                    if not seen:
                        raise SwarmError(f"the DHT lookup did not finish within {timeout:.0f} s")
                    break
        finally:
            self._unregister(fut)
        return max(seen, key=lambda i: i.seq) if seen else None
