"""Seeding as the window does it, kept busy, for the frame-time benchmark (``npc.py --seeding``).

``SeedingLoad`` starts the game window's own swarm node (``game.window_swarm.GameSwarm``: one
libtorrent session seeding every model and skin in the local stores), restricted to 127.0.0.1
with no bootstrap node and no public DHT router, and a second libtorrent session in a child
process that downloads the model from it over and over (each copy into a fresh directory, deleted
when complete), so the seed uploads for as long as it is measured rather than idling.

The downloader runs at the lowest CPU priority: on a real network it is someone else's machine,
and here it shares this one's cores with the game.

Run as a module from the repository root, it is that downloader
(``python -m tools.bench.swarm_load MAGNET HOST:PORT WORKDIR``); it prints one line per completed
copy and runs until it is terminated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarm.settings import SwarmSettings, parse_endpoint  # noqa: E402

#: How long the seed may take to hash the local stores the first time (later starts use the
#: torrent cache), and the downloader to start receiving.
SEED_READY_SECONDS = 300.0
UPLOAD_START_SECONDS = 60.0


def loopback_settings(**kw) -> SwarmSettings:
    """A node on 127.0.0.1 that joins no DHT: no bootstrap node, no public router."""
    return SwarmSettings(listen="127.0.0.1:0", loopback=True, bootstrap=[], public_dht=False, **kw)


def mirror_home(real: Path, into: Path) -> Path:
    """A data directory that links every entry of ``real`` except its swarm state, so the node
    seeds the player's stores while its resume data and torrent cache stay out of them."""
    into.mkdir(parents=True, exist_ok=True)
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "swarm":
                (into / entry.name).symlink_to(entry)
    return into


@dataclass(frozen=True)
class Upload:
    """What the seed sent during one measured block."""

    payload_bytes: int
    seconds: float
    #: The highest once-a-second upload rate the node reported (bytes per second).
    peak_rate: int
    #: Complete copies the downloader received.
    copies: int

    @property
    def mean_rate(self) -> float:
        return self.payload_bytes / self.seconds if self.seconds > 0 else 0.0


class SeedingLoad:
    """The window's swarm node seeding the stores, with the model being downloaded from it."""

    def __init__(self, model_path: Path, upload_limit: int = 0):
        self.model_path = Path(model_path)
        self.upload_limit = upload_limit
        self.swarm = None
        self._ref = None
        self._leecher: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._t0 = 0.0
        self._uploaded0 = 0
        self._peak = 0

    def start(self) -> SeedingLoad:
        from game.swarm_bridge import model_content
        from game.window_swarm import GameSwarm
        from npc.store import ModelStore

        store = ModelStore()
        digest = next((r.blake3 for r in store.records()
                       if store.path(r.blake3) == self.model_path), None)
        if digest is None:
            raise RuntimeError(f"{self.model_path} is not in the model store")
        self.swarm = GameSwarm(loopback_settings(upload_limit=self.upload_limit)).start()
        if self.swarm.node is None:
            raise RuntimeError(f"the swarm node did not start: {self.swarm.status().note}")
        content = model_content(digest, self.model_path)
        self._ref = content.ref
        _wait(lambda: any(s.ref == content.ref and s.progress == 1.0
                          for s in self.swarm.status().node.seeded),
              SEED_READY_SECONDS, "the window's node to seed the model")
        magnet = self.swarm.node.seed(content).magnet  # already seeded: its magnet
        self._workdir = Path(tempfile.mkdtemp(prefix="hearth-bench-leech-"))
        self._leecher = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.swarm_load", magnet, self.swarm.node.endpoint,
             str(self._workdir)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(19))
        _wait(lambda: self.sent() > 0 or self._leecher.poll() is not None,
              UPLOAD_START_SECONDS, "the downloader to start receiving")
        if self._leecher.poll() is not None:
            raise RuntimeError(f"the downloader exited with {self._leecher.returncode}")
        self._t0, self._uploaded0, self._peak = time.perf_counter(), self.sent(), 0
        return self

    def poll_status(self):
        """What the window's swarm box shows (the window asks once a second); notes the rate."""
        box = self.swarm.status()
        if box.node is not None:
            self._peak = max(self._peak, box.node.upload_rate)
        return box

    def stop(self) -> Upload:
        seconds = time.perf_counter() - self._t0
        sent = self.sent() - self._uploaded0
        self._leecher.terminate()
        out, _ = self._leecher.communicate(timeout=30)
        self.swarm.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        return Upload(sent, seconds, self._peak, out.count("complete"))

    def sent(self) -> int:
        """Payload bytes of the model sent since the node started."""
        stats = self.swarm.node.torrent_stats(self._ref)
        return stats.uploaded if stats is not None else 0


def _wait(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.1)


def leech(magnet: str, peer: str, workdir: Path) -> None:
    """Download ``magnet`` from ``peer`` again and again until terminated."""
    import libtorrent as lt

    from swarm.torrent import session_settings

    ses = lt.session(session_settings(loopback_settings(dht=False)))
    ti = None
    for copy in range(1_000_000):
        atp = lt.parse_magnet_uri(magnet)
        if ti is not None:
            atp.ti = ti
        atp.save_path = str(workdir / f"copy-{copy}")
        atp.peers = [parse_endpoint(peer)]
        h = ses.add_torrent(atp)
        while not h.status().is_seeding:
            time.sleep(0.1)
            ses.pop_alerts()  # nobody reads them; keep the queue from growing
        ti = h.torrent_file()
        ses.remove_torrent(h, lt.session.delete_files)
        print(f"complete {copy}", flush=True)


if __name__ == "__main__":
    leech(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
