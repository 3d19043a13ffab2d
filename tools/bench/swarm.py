"""Seeder egress and completion time: one seeder and N downloaders of one file, through the swarm
and from a plain HTTP server, every uploader capped at the same rate (a home uplink).

Both runs are on 127.0.0.1. In the swarm run every node is a real Hearth ``SwarmNode`` (loopback
mode, so the rate caps apply to local peers): the seeder and each downloader upload at most
``--rate``, and each downloader is told the seeder's and the other downloaders' addresses (as
the DHT would tell it), and goes on seeding once it has the file, as a Hearth node does. In the
HTTP run one ``http.server`` serves the file to the same number of
clients through one token bucket of the same rate. Each client, in both runs, checks the BLAKE3
of what it got. Prints a table, then the last line
``peers=<N> seeder_egress_ratio=<r> http_egress_ratio=<h> time_ratio_swarm_over_http=<t>``
(egress: bytes the seeder or server sent divided by the file size; time: until the last
downloader finished). Targets: seeder_egress_ratio <= 1.5, time_ratio_swarm_over_http <= 0.5.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.files import blake3_file  # noqa: E402
from swarm.content import Content, ContentRef  # noqa: E402
from swarm.settings import SwarmSettings, parse_rate  # noqa: E402
from swarm.torrent import SwarmNode  # noqa: E402

CHUNK = 64 * 1024


class TokenBucket:
    """``rate`` bytes per second shared by every caller, with one chunk of burst."""

    def __init__(self, rate: int, burst: int = CHUNK):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(wait)


def run_http(path: Path, peers: int, rate: int, work: Path) -> tuple[float, list[float]]:
    bucket = TokenBucket(rate)
    sent = [0]
    sent_lock = threading.Lock()
    data = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), CHUNK):
                block = data[i:i + CHUNK]
                bucket.take(len(block))
                self.wfile.write(block)
                with sent_lock:
                    sent[0] += len(block)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    times: list[float] = [0.0] * peers
    errors: list[str] = []
    start = time.monotonic()

    def client(i: int) -> None:
        out = work / f"http-{i}.gguf"
        try:
            with urllib.request.urlopen(url, timeout=120) as r, out.open("wb") as f:
                shutil.copyfileobj(r, f, CHUNK)
            if blake3_file(out) != path.stem:
                errors.append(f"client {i}: BLAKE3 mismatch")
        except OSError as e:
            errors.append(f"client {i}: {e}")
        times[i] = time.monotonic() - start
    threads = [threading.Thread(target=client, args=(i,)) for i in range(peers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    server.shutdown()
    server.server_close()
    if errors:
        raise SystemExit("HTTP run failed: " + "; ".join(errors))
    return sent[0] / len(data), times


def run_swarm(path: Path, peers: int, rate: int, work: Path) -> tuple[float, list[float]]:
    def node(name: str) -> SwarmNode:
        return SwarmNode(SwarmSettings(listen="127.0.0.1:0", loopback=True, upload_limit=rate),
                         work / f"node-{name}").start()
    seeder = node("seeder")
    downloaders = [node(f"d{i}") for i in range(peers)]
    try:
        ref = ContentRef("model", path.stem)
        magnet = seeder.seed(Content(ref, path)).magnet
        endpoints = [seeder.endpoint] + [d.endpoint for d in downloaders]
        times: list[float] = [0.0] * peers
        errors: list[str] = []
        start = time.monotonic()

        def fetch(i: int) -> None:
            me = downloaders[i]
            try:
                # As in the game, a node goes on seeding what it fetched.
                me.fetch(magnet, work / f"swarm-{i}", timeout=300, keep_seeding=True,
                         peers=[e for e in endpoints if e != me.endpoint])
            except Exception as e:  # reported below
                errors.append(f"downloader {i}: {e}")
            times[i] = time.monotonic() - start
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(peers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        if errors:
            raise SystemExit("swarm run failed: " + "; ".join(errors))
        uploaded = seeder.torrent_stats(ref).uploaded
        return uploaded / path.stat().st_size, times
    finally:
        for n in [seeder, *downloaders]:
            n.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=8, help="downloaders (default 8)")
    ap.add_argument("--size", default="32M", help="file size (default 32M)")
    ap.add_argument("--rate", default="8M", help="every uploader's cap per second (default 8M)")
    args = ap.parse_args()
    size, rate = parse_rate(args.size), parse_rate(args.rate)

    work = Path(tempfile.mkdtemp(prefix="hearth-bench-swarm-"))
    try:
        incoming = work / "incoming"
        incoming.write_bytes(os.urandom(size))
        path = work / "store" / f"{blake3_file(incoming)}.gguf"
        path.parent.mkdir()
        incoming.rename(path)
        print(f"file: {size / 2**20:.0f} MiB, {args.peers} downloaders, every uploader capped at "
              f"{rate / 2**20:.1f} MiB/s")
        s_egress, s_times = run_swarm(path, args.peers, rate, work)
        h_egress, h_times = run_http(path, args.peers, rate, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':<6} {'egress':>7} {'first':>7} {'median':>7} {'last':>7}")
    for name, egress, times in (("swarm", s_egress, s_times), ("http", h_egress, h_times)):
        t = sorted(times)
        print(f"{name:<6} {egress:7.2f} {t[0]:6.1f}s {t[len(t) // 2]:6.1f}s {t[-1]:6.1f}s")
    ratio = max(s_times) / max(h_times)
    print(f"peers={args.peers} seeder_egress_ratio={s_egress:.2f} http_egress_ratio={h_egress:.2f} "
          f"time_ratio_swarm_over_http={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
