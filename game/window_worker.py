"""Serving other people's jobs from the game window while the player is away.

The window feeds what it sees (keyboard and mouse input, minimised or not) to ``WindowWorker``;
once a second ``poll`` asks swarm's ``AwayPolicy`` whether to serve (worker.toml: idle time, CPU
used by other programs, battery) and opens or closes the ``SwitchGate`` the model engine reads
between decode steps and from llama.cpp's abort flag. Input closes the gate at once, not at the
next poll, so a returning player gets the CPU back within one decode step.

The window serves only when the player has said yes (``serve = true`` written in worker.toml, by
the first-run question or the settings screen); a machine that was never asked serves nothing.
Loading the model engine (and its exactness self-check) happens on a background thread the first
time serving is allowed, so a player who never leaves never pays for it.
"""

from __future__ import annotations

import threading
import time
import tomllib
from dataclasses import dataclass

from game.window_presence import mark
from swarm.jobs.away import (OFF, PLAYER_PRESENT, SERVING, AwayPolicy, Observation, SwitchGate,
                             on_battery, other_cpu_percent)
from swarm.jobs.settings import CONFIG_FILE, WorkerSettings, load_worker_settings

POLL_SECONDS = 1.0
BATTERY_POLL_SECONDS = 30.0
#: Where the window's worker listens (the offer socket; the encrypted jobs socket is the next port).
WINDOW_LISTEN = "0.0.0.0:7880"
#: Not serving because the engine is loading or could not start.
LOADING = "loading"
FAILED = "failed"


@dataclass(frozen=True)
class JobsStatus:
    """What the side panel shows about serving, as plain values."""

    state: str  # SERVING, LOADING, FAILED or one of swarm.jobs.away's paused reasons / OFF
    shards: int = 0
    tokens: int = 0
    receipts: int = 0
    earned: int = 0  # micro-gold in receipts earned since the window opened (not yet settled)
    note: str | None = None


def player_agreed(config=None) -> bool:
    """True when worker.toml says ``serve = true`` in so many words."""
    from common.paths import config_dir
    path = (config or config_dir()) / CONFIG_FILE
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get("serve") is True
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


class WindowWorker:
    def __init__(self, settings: WorkerSettings | None = None, agreed: bool | None = None,
                 announce=None, clock=time.monotonic, node=None):
        """``announce(model_id, port)`` publishes the offer socket in the DHT (the window's swarm
        node), if there is one; ``node()`` returns the window's running swarm node (or None),
        over which a skin a shard names and this machine lacks is fetched."""
        self.settings = settings or load_worker_settings()
        self.agreed = player_agreed() if agreed is None else agreed
        self.policy = AwayPolicy(self.settings)
        self.gate = SwitchGate(self.settings.release_after, open_=False)
        self.clock = clock
        self.last_input = clock()
        self.minimised = False
        self.state = OFF if not (self.agreed and self.settings.serve) else PLAYER_PRESENT
        self._announce = announce
        self._node = node
        self._worker = None
        self._note: str | None = None
        self._loading = False
        self._polled = float("-inf")
        self._presence_marked = float("-inf")
        self._battery = (float("-inf"), False)
        #: Micro-gold the worker's receipts were worth when serving started (earned = since then).
        self._amount_at_start = 0
        self._closed = threading.Event()

    # -- what the window reports ---------------------------------------------------------------

    def input_seen(self) -> None:
        """The player pressed a key or moved the mouse: stop serving now."""
        self.last_input = self.clock()
        if not self.gate.paused():
            self.gate.set_serving(False)

    def set_minimised(self, minimised: bool) -> None:
        self.minimised = minimised
        if not minimised:
            self.input_seen()  # coming back to the window is the player returning

    def poll(self) -> None:
        """Decide, about once a second, whether to serve."""
        now = self.clock()
        self._mark_presence(now)
        if now - self._polled < POLL_SECONDS or self.state in (OFF, FAILED):
            return
        self._polled = now
        decision = self.policy.decide(Observation(
            now=now, last_input=self.last_input, minimised=self.minimised,
            other_cpu_percent=other_cpu_percent(), on_battery=self._on_battery(now)))
        if decision.serve and self._worker is None:
            self._start_engine()
            return
        if self._worker is not None:
            self.gate.set_serving(decision.serve)
            self.state = decision.reason

    def _mark_presence(self, now: float) -> None:
        """Tell ``hearth serve`` (another process) whether the player is at the window, so its
        local generation yields to the game as serving jobs does (game.window_presence)."""
        if now - self._presence_marked < POLL_SECONDS:
            return
        self._presence_marked = now
        mark(not self.minimised and now - self.last_input < self.settings.idle_seconds)

    def _on_battery(self, now: float) -> bool:
        polled, value = self._battery
        if now - polled >= BATTERY_POLL_SECONDS:
            value = on_battery()
            self._battery = (now, value)
        return value

    # -- the engine and the worker ---------------------------------------------------------------

    def _start_engine(self) -> None:
        if self._loading:
            return
        self._loading = True
        self.state = LOADING
        threading.Thread(target=self._load, name="hearth-window-worker", daemon=True).start()

    def _load(self) -> None:
        from common.identity import load_or_create_identity
        from game.jobs_backend import load_backend, skin_fetcher
        from game.jobs_cli import jobs_dir
        from swarm.jobs.worker import Worker
        from swarm.jobs.worker_store import WorkerStore
        try:
            backend = load_backend("default")
            worker = Worker(backend, load_or_create_identity(),
                            WorkerStore(jobs_dir() / "worker.sqlite"), listen=WINDOW_LISTEN,
                            price_per_1k=self.settings.price_per_1k,
                            capacity=self.settings.capacity, gate=self.gate,
                            skins=backend.skins(),
                            skin_fetcher=skin_fetcher(self.settings, backend,
                                                      self._swarm_node)).start()
        except Exception as e:  # the game goes on without serving; the panel says why
            self._note = str(e) or type(e).__name__
            self.state = FAILED
            return
        if self._closed.is_set():
            worker.close()
            backend.close()
            return
        self._worker = worker
        self._amount_at_start = worker.stats.receipts_amount
        if self._announce is not None:
            try:
                self._announce(backend.model_id, int(worker.offer_endpoint.rpartition(":")[2]))
            except Exception as e:  # reachable by --peer still; the panel says why not by DHT
                self._note = f"not announced in the DHT: {e}"
        self._polled = float("-inf")  # decide again at once: the player may be back already

    def _swarm_node(self):
        """The window's swarm node for fetching a skin; ContentError when there is none."""
        from swarm.content import ContentError
        node = self._node() if self._node is not None else None
        if node is None:
            raise ContentError("the game is not connected to the swarm (seeding is off), so "
                               "the skin cannot be fetched")
        return node

    def status(self) -> JobsStatus:
        w = self._worker
        if w is None:
            return JobsStatus(self.state, note=self._note)
        s = w.stats
        return JobsStatus(self.state if self.state != LOADING else SERVING, s.shards_served,
                          s.tokens_generated, s.receipts_held,
                          s.receipts_amount - self._amount_at_start, self._note)

    def reconfigure(self) -> None:
        """worker.toml changed (the settings screen): serve, or stop serving, as it now says."""
        try:
            settings = load_worker_settings()
        except Exception as e:  # keep the last good settings; the panel says why
            self._note = str(e)
            return
        self.settings, self.policy = settings, AwayPolicy(settings)
        self.gate.release_after = settings.release_after
        self.agreed = player_agreed()
        if not (self.agreed and settings.serve):
            self.gate.set_serving(False)
            self.state = OFF
        elif self.state in (OFF, FAILED):
            self.state = PLAYER_PRESENT
        self._polled = float("-inf")

    def close(self) -> None:
        self._closed.set()
        self.gate.set_serving(False)
        mark(False)
        w, self._worker = self._worker, None
        if w is not None:
            w.close()
            w.backend.close()

