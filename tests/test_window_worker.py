"""Serving jobs from the window: when it may serve, how input stops it, what the panel says."""

from __future__ import annotations

import pytest

from game.hud import gold_text, jobs_lines, swarm_box_text
from game.swarm_box import SwarmBox
from game.window_worker import FAILED, JobsStatus, WindowWorker, player_agreed
from swarm.jobs.settings import WorkerSettings


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def worker(agreed=True, **settings) -> tuple[WindowWorker, Clock, list]:
    clock = Clock()
    w = WindowWorker(WorkerSettings(**settings), agreed=agreed, clock=clock)
    starts = []
    w._start_engine = lambda: starts.append(clock.t)  # loading the model is tested elsewhere
    return w, clock, starts


def test_a_player_who_never_agreed_is_never_served_from():
    w, clock, starts = worker(agreed=False)
    clock.t += 10_000
    w.poll()
    assert starts == [] and w.status().state == "off"


def test_serving_starts_only_after_the_idle_time_and_input_stops_it_at_once():
    w, clock, starts = worker(idle_seconds=180, cpu_cap_percent=100)
    w.poll()
    assert starts == [] and w.status().state == "player_present" and w.gate.paused()
    clock.t += 179
    w.poll()
    assert starts == []
    clock.t += 2
    w.poll()
    assert starts == [clock.t]  # away: the engine is loaded (once)
    w._worker = object()  # as if loaded; the gate now follows the policy
    clock.t += 2
    w.poll()
    assert not w.gate.paused() and w.state == "serving"
    w.input_seen()  # the player is back: closed at once, before any poll
    assert w.gate.paused()
    clock.t += 2
    w.poll()
    assert w.gate.paused() and w.state == "player_present"
    w._worker = None


def test_minimising_the_window_counts_as_away_and_restoring_as_back():
    w, clock, starts = worker(idle_seconds=180, cpu_cap_percent=100)
    w._worker = object()
    w.set_minimised(True)
    clock.t += 2
    w.poll()
    assert not w.gate.paused() and w.state == "serving"
    w.set_minimised(False)
    assert w.gate.paused()
    w._worker = None


def test_agreement_is_serve_true_written_in_worker_toml(tmp_path):
    assert not player_agreed(tmp_path)
    (tmp_path / "worker.toml").write_text("serve = false\n")
    assert not player_agreed(tmp_path)
    (tmp_path / "worker.toml").write_text("serve = true\nidle_seconds = 60\n")
    assert player_agreed(tmp_path)
    (tmp_path / "worker.toml").write_text("serve = [\n")
    assert not player_agreed(tmp_path)


def test_the_side_panel_words_serving():
    assert gold_text(460) == "0.00046" and gold_text(2_000_000) == "2" and gold_text(0) == "0"
    assert jobs_lines(JobsStatus("player_present")) == ["jobs: paused while you play"]
    assert jobs_lines(JobsStatus("off")) == ["jobs: off (F2: serve while away)"]
    assert jobs_lines(JobsStatus(FAILED, note="no model")) == ["jobs: cannot serve (no model)"]
    lines = jobs_lines(JobsStatus("serving", shards=3, tokens=1204, receipts=3, earned=460))
    assert lines == ["jobs: serving", "served 3 shards, 1204 tokens; 3 receipts",
                     "earned while away: 0.00046 gold"]
    text = swarm_box_text(SwarmBox(note="not seeding", jobs=JobsStatus("busy_cpu")))
    assert text.lines[-1] == "jobs: paused: the machine is busy"


def test_the_window_worker_fetches_skins_over_the_games_swarm_node(tmp_path):
    from types import SimpleNamespace

    from game.jobs_backend import skin_checks, skin_fetcher
    from npc.skins.store import SkinStore
    from swarm.content import ContentError
    from swarm.jobs.settings import WorkerSettings
    from swarm.jobs.skin_fetch import SkinFetcher

    node = object()  # what the window's swarm returns while it runs
    running = {"node": node}
    w = WindowWorker(WorkerSettings(serve=True), agreed=True, node=lambda: running["node"])
    assert w._swarm_node() is node
    running["node"] = None  # seeding turned off: a fetch fails, saying why
    with pytest.raises(ContentError, match="seeding is off"):
        w._swarm_node()
    with pytest.raises(ContentError, match="not connected"):
        WindowWorker(WorkerSettings(serve=True), agreed=True)._swarm_node()

    backend = SimpleNamespace(skin_checks=lambda: skin_checks(SkinStore(tmp_path / "skins"),
                                                              "ab" * 32))
    fetcher = skin_fetcher(WorkerSettings(max_skin_mb=3), backend, w._swarm_node)
    assert isinstance(fetcher, SkinFetcher) and fetcher.max_bytes == 3 << 20
    assert fetcher.node == w._swarm_node
    assert skin_fetcher(WorkerSettings(fetch_skins=False), backend, w._swarm_node) is None
    assert skin_fetcher(WorkerSettings(), SimpleNamespace(), w._swarm_node) is None
