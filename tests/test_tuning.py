import subprocess
import sys

import pytest

from npc.tuning import Speed, pick_threads, thread_counts


def test_thread_counts_measured():
    assert thread_counts(1) == [1]
    assert thread_counts(2) == [1, 2]
    assert thread_counts(4) == [1, 3, 4]
    assert thread_counts(64) == [1, 7, 8]


def test_decoding_leaves_the_game_thread_a_core_and_prefill_takes_the_fastest():
    by = {1: Speed(prefill_tps=150, decode_tps=90), 2: Speed(prefill_tps=330, decode_tps=110)}
    assert pick_threads(by, cores=2) == (1, 2)
    by = {1: Speed(100, 50), 3: Speed(250, 120), 4: Speed(240, 130)}
    assert pick_threads(by, cores=4) == (3, 3)
    # One core: everything runs on it.
    assert pick_threads({1: Speed(100, 50)}, cores=1) == (1, 1)
    # Equal speeds: fewer threads.
    assert pick_threads({1: Speed(200, 80), 2: Speed(200, 80)}, cores=4) == (1, 1)


def test_unmeasured_thread_counts_are_not_chosen():
    by = {1: Speed(0, 0), 2: Speed(300, 100)}
    assert pick_threads(by, cores=2) == (2, 2)  # the only working count, even beside the game
    with pytest.raises(ValueError):
        pick_threads({1: Speed(0, 0)}, cores=2)


@pytest.mark.parametrize("threads", ["0", "two", "1,,2", ""])
def test_probe_names_bad_thread_counts(threads):
    r = subprocess.run([sys.executable, "-m", "npc.probe", "model.gguf", "--threads", threads],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--threads takes positive thread counts" in r.stderr


def test_choices_are_recorded_whole(tmp_path):
    from npc.store import ModelStore
    from npc.tuning import RuntimeChoice, _load_choices, _save_choices
    store = ModelStore(tmp_path)
    choice = RuntimeChoice(key="k", base="b", model="m", quantization="Q4_0", use_extra_bufts=False,
                           n_threads=1, prefill_tps=1.0, decode_tps=1.0, measured_at=0.0)
    _save_choices(store, {"k": choice})
    assert _load_choices(store) == {"k": choice}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "runtime-choice.json"]
