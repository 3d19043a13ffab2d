"""The load behind the frame benchmark's seeding arm (tools/bench/swarm_load.py): the window's
swarm node, on 127.0.0.1 and joined to no DHT, keeps uploading the model to a local downloader
that starts over after every copy."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _swarm_load():
    """tools/bench/swarm_load.py as a module (tools/ is not a package)."""
    name = "hearth_bench_swarm_load"
    if name not in sys.modules:
        path = ROOT / "tools" / "bench" / "swarm_load.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.slow
def test_the_seed_keeps_uploading_to_a_downloader_that_starts_over(hearth_home):
    from npc.store import ModelStore
    store = ModelStore()
    path = store.path(store.ensure_default().blake3)
    size = path.stat().st_size
    load = _swarm_load().SeedingLoad(path).start()
    try:
        settings = load.swarm.settings
        assert settings.listen.startswith("127.0.0.1:") and settings.bootstrap == []
        assert not settings.public_dht
        deadline = time.monotonic() + 90
        while load.sent() < 2.5 * size and time.monotonic() < deadline:
            time.sleep(0.5)
        assert load.poll_status().node.dht_nodes == 0
    finally:
        upload = load.stop()
    # More than two copies sent: each completed download was started over from nothing.
    assert upload.payload_bytes >= 2.5 * size
    assert upload.copies >= 2
    assert upload.peak_rate > 0
    assert not load.swarm.node  # closed
