"""The DHT: how many nodes this node knows, and BEP44 mutable items (put and get)."""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout

import libtorrent as lt

from swarm.index import INDEX_SALT, SignedItem, expanded_secret
from swarm.torrent.errors import SwarmError
from swarm.torrent.session import DHT_NODES_METRIC, Session

DHT_ITEM_TIMEOUT = 20.0
STATS_TIMEOUT = 5.0


def node_count(session: Session) -> int:
    """Nodes in the DHT routing table now (asks the session for fresh counters)."""
    def match(a):
        if isinstance(a, lt.session_stats_alert):
            return int(a.values[DHT_NODES_METRIC])
        return None
    return session.expect(lambda ses: ses.post_session_stats(), match, STATS_TIMEOUT)


def put_item(session: Session, seed: bytes, value: bytes, salt: bytes = INDEX_SALT,
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
        seq, stored = session.expect(lambda ses: ses.dht_put_mutable_item(sk, pk, value, salt),
                                     match, timeout)
    except FutureTimeout:
        raise SwarmError(f"the DHT did not confirm the put within {timeout:.0f} s") from None
    if stored == 0:
        raise SwarmError("no DHT node stored the item (is the DHT bootstrapped?)")
    return seq, stored


def get_item(session: Session, public_key: bytes, salt: bytes = INDEX_SALT,
             timeout: float = DHT_ITEM_TIMEOUT, settle: float = 3.0) -> SignedItem | None:
    """The newest item the DHT holds under ``public_key`` and ``salt`` (None if none). The
    lookup ends when it is complete, or ``settle`` seconds after the first copy arrived with
    no newer one (a lookup that meets departed nodes waits out their timeouts; the reader
    checks the signature either way, so an early copy can be stale but never forged)."""
    seen: list[SignedItem] = []
    last_news = [0.0]

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
    fut = session.register(lambda ses: ses.dht_get_mutable_item(public_key, salt), match)
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
        session.unregister(fut)
    return max(seen, key=lambda i: i.seq) if seen else None


def announce(session: Session, info_hash: bytes, port: int) -> None:
    """Tell the DHT that this node serves ``info_hash`` on ``port`` (TCP); fire and forget, so
    the caller re-announces now and then (DHT nodes forget announces after a while)."""
    session.call(lambda ses: ses.dht_announce(lt.sha1_hash(info_hash), port, 0))


def get_peers(session: Session, info_hash: bytes,
              timeout: float = DHT_ITEM_TIMEOUT) -> list[tuple[str, int]]:
    """The (host, port) endpoints announced under ``info_hash`` (empty when none answer)."""
    def match(a):
        if isinstance(a, lt.dht_get_peers_reply_alert) and bytes(a.info_hash.to_bytes()) \
                == info_hash:
            return [(str(ip), int(port)) for ip, port in a.peers()]
        return None
    try:
        return session.expect(lambda ses: ses.dht_get_peers(lt.sha1_hash(info_hash)), match,
                              timeout)
    except FutureTimeout:
        return []
