"""The player returning stops the window's serving: ``hearth play`` under a private Xvfb server
serves a requester's long job on the real default model (its own WindowWorker and engine), and
key presses and mouse moves sent through the X server (xdotool) close the gate; after the engine
has seen the pause, no llama.cpp decode call starts until the player could be away again. The
harness is tools/bench/preempt_window.py's; the timing is the benchmark's, not asserted here.

Skipped when Xvfb or xdotool is missing, unless ``HEARTH_REQUIRE_X11=1``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.model]


def _bench():
    """tools/bench/preempt_window.py as a module (tools/ is not a package)."""
    name = "hearth_bench_preempt_window"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "tools" / "bench" / "preempt_window.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_input_at_the_window_stops_the_workers_decoding(tmp_path):
    bench = _bench()
    missing = bench.missing_tools()
    if missing:
        reason = ("cannot run the real-window pre-emption test: missing " + ", ".join(missing)
                  + " (`make x11-tools` installs them when run as root)")
        if os.environ.get("HEARTH_REQUIRE_X11") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    rng = random.Random(3)
    with bench.WindowUnderLoad(tmp_path, idle=2.0, requests=24, max_tokens=160) as window:
        outcomes = [window.event(kind, rng) for kind in ("key", "mouse", "key")]
        log = window.decode_log
        log.read()
        assert any(d.rc == 0 for d in log.decodes if d.start > window.jobs_from)
    # Each event that reached a running generation loop paused it, and no decode call started
    # after the pause while the player was still present.
    assert any(o.paused for o in outcomes), outcomes
    assert [o.late_decodes for o in outcomes] == [0, 0, 0], outcomes
    # Serving resumed between events, so every pause was a new one.
    assert len(log.pauses) >= sum(o.paused for o in outcomes)
