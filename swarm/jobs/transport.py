"""ZeroMQ sockets for jobs: the worker's ROUTERs, the requester's DEALERs.

The jobs socket is CURVE-encrypted with keys derived from the user's ed25519 identity, so a
requester that checked a worker's signed offer talks to that worker and nobody else. ROUTER sockets
set ROUTER_MANDATORY: a reply to a peer that has gone raises instead of vanishing, and the worker
forgets that peer. Every socket caps incoming messages (libzmq drops the connection of a peer that
sends more) and uses ZMTP heartbeats so a dead TCP peer is noticed without traffic. The offer socket
is plain: it answers a hello with a signed offer, which needs no secrecy.
"""

from __future__ import annotations

import zmq
from zmq.utils import z85

from common.identity import Identity
from swarm.jobs import protocol

#: ZMTP-level keepalive: a connection silent this long is dropped by libzmq.
ZMTP_HEARTBEAT_MS = 1000
ZMTP_TIMEOUT_MS = 5000
SEND_HWM = 1000


def z85_key(raw: bytes) -> bytes:
    return z85.encode(raw)


def tcp(endpoint: str) -> str:
    return endpoint if endpoint.startswith("tcp://") else f"tcp://{endpoint}"


def bound_endpoint(sock: zmq.Socket) -> str:
    """``HOST:PORT`` the socket is bound to (after binding port 0)."""
    last = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    return last.removeprefix("tcp://")


def _common(sock: zmq.Socket, max_bytes: int) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_TIMEOUT_MS)
    return sock


def jobs_server(ctx: zmq.Context, identity: Identity, endpoint: str) -> zmq.Socket:
    """The worker's CURVE ROUTER, bound to ``endpoint`` (port 0 picks one)."""
    public, secret = identity.curve_keypair()
    sock = _common(ctx.socket(zmq.ROUTER), protocol.MAX_FRAME_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, z85_key(public))
    sock.setsockopt(zmq.CURVE_SECRETKEY, z85_key(secret))
    sock.bind(tcp(endpoint))
    return sock


def offer_server(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """The worker's plain ROUTER that answers hellos with its signed offer."""
    sock = _common(ctx.socket(zmq.ROUTER), protocol.MAX_HELLO_BYTES)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(tcp(endpoint))
    return sock


def jobs_client(ctx: zmq.Context, identity: Identity, server_curve_key: bytes,
                endpoint: str) -> zmq.Socket:
    """A requester's CURVE DEALER to one worker whose transport key is ``server_curve_key``."""
    public, secret = identity.curve_keypair()
    sock = _common(ctx.socket(zmq.DEALER), protocol.MAX_FRAME_BYTES)
    sock.setsockopt(zmq.CURVE_SERVERKEY, z85_key(server_curve_key))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, z85_key(public))
    sock.setsockopt(zmq.CURVE_SECRETKEY, z85_key(secret))
    sock.connect(tcp(endpoint))
    return sock


def offer_client(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER), protocol.MAX_FRAME_BYTES)
    sock.connect(tcp(endpoint))
    return sock


def reply(sock: zmq.Socket, peer: bytes, msg: protocol.Msg) -> bool:
    """Send ``msg`` to ``peer`` on a ROUTER; False when the peer is gone or its queue is full."""
    try:
        sock.send_multipart([peer, protocol.encode(msg)], flags=zmq.NOBLOCK)
    except (zmq.Again, zmq.ZMQError):
        return False
    return True


def send(sock: zmq.Socket, msg: protocol.Msg) -> bool:
    """Send ``msg`` on a DEALER without blocking; False when it cannot be queued."""
    try:
        sock.send(protocol.encode(msg), flags=zmq.NOBLOCK)
    except (zmq.Again, zmq.ZMQError):
        return False
    return True


def fetch_offer(ctx: zmq.Context, endpoint: str, requester: str, timeout: float):
    """Ask the offer socket at ``endpoint`` for its signed offer; None when no valid answer
    comes within ``timeout`` seconds (the caller checks the signature)."""
    sock = offer_client(ctx, endpoint)
    try:
        send(sock, protocol.Hello(requester=requester))
        if not sock.poll(int(timeout * 1000)):
            return None
        try:
            msg = protocol.decode_to_requester(sock.recv(zmq.NOBLOCK))
        except (protocol.ProtocolError, zmq.Again):
            return None
        return msg.signed if isinstance(msg, protocol.OfferReply) else None
    finally:
        sock.close(0)
