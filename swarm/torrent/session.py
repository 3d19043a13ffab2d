"""The libtorrent session on its own thread, and the plumbing that reaches it.

The thread owns the session and the table of torrents. It pumps alerts (resume data, hash
failures, bans, DHT replies, session counters), runs the calls other threads queue, and once a
second runs the node's tick (status and seeding policy). Callers block, never the thread, and
every wait has a deadline.

Resume data is written whenever a torrent finishes, every few minutes, and on close, so a
restart neither re-hashes what is seeded nor re-downloads what a fetch already has.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import libtorrent as lt

from swarm.settings import SwarmSettings, parse_endpoint
from swarm.torrent.errors import FetchInterrupted, SwarmError
from swarm.torrent.seeding import SEED_UPLOAD_SLOTS
from swarm.torrent.torrents import Torrents

#: How often the thread runs the tick, and how long it sleeps per alert wait.
TICK_SECONDS = 1.0
ALERT_WAIT_MS = 50
RESUME_EVERY_SECONDS = 300.0
CALL_TIMEOUT = 30.0
#: The session counter the DHT's routing table size is read from.
DHT_NODES_METRIC = "dht.dht_nodes"

ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
              | lt.alert_category.peer | lt.alert_category.ip_block | lt.alert_category.dht
              | lt.alert_category.dht_operation)

#: A function run on the session thread.
OnThread = Callable[[lt.session], Any]
#: Maps an alert to a waiter's result, or to None when the alert is not the one awaited.
AlertMatch = Callable[[Any], Any]


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


class Session:
    """One libtorrent session on its own thread. ``on_tick`` runs on that thread about once a
    second, with the session's counters refreshed shortly before."""

    def __init__(self, settings: SwarmSettings, on_tick: OnThread):
        self.settings = settings
        #: Only the session thread touches the table and the waiters.
        self.torrents = Torrents()
        #: Nodes in the DHT routing table at the last counter refresh.
        self.dht_nodes = 0
        self._on_tick = on_tick
        self._waiters: list[tuple[AlertMatch, Future]] = []
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._port = 0

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
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

    def close(self, timeout: float = 20.0) -> None:
        """Save every torrent's resume data and shut the session down."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)
        self._thread = None
        atexit.unregister(self.close)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping.is_set() \
            and not self._stopped.is_set()

    @property
    def port(self) -> int:
        return self._port

    # ---- calls onto the thread ----------------------------------------------------------------

    def call(self, fn: OnThread, timeout: float = CALL_TIMEOUT) -> Any:
        """Run ``fn`` on the session thread and return its result (or raise its exception)."""
        if not self.running:
            raise SwarmError("the swarm node is not running")
        fut: Future = Future()
        self._calls.put((fn, fut))
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise SwarmError("the swarm node did not answer in time") from None

    def register(self, start: OnThread, match: AlertMatch) -> Future:
        """Run ``start`` on the thread with a waiter for the first alert ``match`` maps to a
        value (registered first, so the alert cannot slip past); the future gets that value."""
        fut: Future = Future()

        def run(ses):
            self._waiters.append((match, fut))
            start(ses)
        self.call(run)
        return fut

    def unregister(self, fut: Future) -> None:
        def drop(ses):
            self._waiters[:] = [w for w in self._waiters if w[1] is not fut]
        if not fut.done() and self.running:
            self.call(drop)

    def expect(self, start: OnThread, match: AlertMatch, timeout: float) -> Any:
        """:meth:`register`, then wait for the value; raises FutureTimeout past ``timeout``."""
        fut = self.register(start, match)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            self.unregister(fut)
            raise

    # ---- the thread ---------------------------------------------------------------------------

    def _open(self) -> lt.session:
        ses = lt.session(session_settings(self.settings))
        if self.settings.loopback:
            # Local peers are exempt from rate limits by default; on loopback every peer is.
            f = lt.ip_filter()
            f.add_rule("0.0.0.0", "255.255.255.255", 1 << ses.global_peer_class_id)
            ses.set_peer_class_filter(f)
        for node in self.settings.bootstrap:
            ses.add_dht_node(parse_endpoint(node))
        self._port = ses.listen_port()
        if not self._port:
            raise RuntimeError("not listening (is the port in use?)")
        return ses

    def _run(self, ready: Future) -> None:
        try:
            ses = self._open()
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
                    self._on_tick(ses)
                    ses.post_session_stats()
                if now - last_resume >= RESUME_EVERY_SECONDS:
                    last_resume = now
                    for t in self.torrents.values():
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

    def _on_alert(self, a) -> None:
        self.torrents.record(a)
        if isinstance(a, lt.session_stats_alert):
            self.dht_nodes = int(a.values[DHT_NODES_METRIC])
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

    def _shutdown(self, ses: lt.session) -> None:
        pending = 0
        for t in self.torrents.values():
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
