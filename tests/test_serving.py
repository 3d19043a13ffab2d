"""The serving engine with the real default model: batched genuine work always re-scores clean,
each kind of cheat is caught, and pre-emption pauses, resumes and releases without changing a
token."""

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from npc.serving import sampler
from npc.serving.types import Item
from npc.serving.types import Message as Msg

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
PIRATE = ROOT / "assets" / "skins" / "bundles" / "pirate" / "adapter.gguf"


QUESTIONS = [
    "What is the capital of France?",
    "Write one line about rain.",
    "List three fruits.",
    "Explain in one sentence why the sky looks blue on a clear afternoon in summer.",
    "Hi",
    "Count from one to ten.",
    "Name a colour.",
    "What does a blacksmith make? Answer briefly and mention the tools of the trade.",
]


def items(n=8, max_tokens=10):
    """Greedy and sampled items (two top_p values) with prompts of different lengths."""
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        msgs = [Msg("user", q)] if i % 3 else [Msg("system", "You are terse."), Msg("user", q)]
        t, p = [(0.0, 1.0), (0.8, 1.0), (0.9, 0.85)][i % 3]
        out.append(Item(f"req-{i}", msgs, max_tokens, t, p, seed=1000 + i))
    return out


# -- the sampler (no model) --------------------------------------------------------------------

def test_sampler_is_a_pure_function_of_logits_seed_and_position():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(5000) * 4).astype(np.float32)
    a = [sampler.pick(logits, 0.7, 0.9, 42, i) for i in range(50)]
    assert a == [sampler.pick(logits.copy(), 0.7, 0.9, 42, i) for i in range(50)]
    assert len(set(a)) > 1  # the position changes the draw
    assert a != [sampler.pick(logits, 0.7, 0.9, 43, i) for i in range(50)]
    assert sampler.pick(logits, 0.0, 1.0, 42, 0) == int(np.argmax(logits))
    # A nucleus so small it holds only the top token.
    assert all(sampler.pick(logits, 1.0, 1e-9, s, 0) == int(np.argmax(logits)) for s in range(20))


def test_sampler_nucleus_matches_sorting_the_whole_vocabulary():
    rng = np.random.default_rng(5)
    for trial in range(40):
        x = (rng.standard_normal(3000) * rng.uniform(1, 8)).astype(np.float32)
        if trial % 4 == 0:
            x[:50] = x.max()  # ties at the top are ranked by token id
        if trial % 3 == 1:  # a grammar's mask: all but a few tokens at -inf
            x[rng.permutation(len(x))[:len(x) - int(rng.integers(1, 300))]] = -np.inf
        t, p = float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.05, 0.99))
        z = x.astype(np.float64) / t
        w = np.exp(z - z.max())
        order, c = sampler._ranked(z, w, np.arange(len(z)))
        n = min(int(np.searchsorted(c, p * float(np.sum(w)), side="left")) + 1, len(c))
        i = int(np.searchsorted(c[:n], sampler.uniform(9, trial) * c[n - 1], side="right"))
        assert sampler.pick(x, t, p, 9, trial) == int(order[min(i, n - 1)])


def _rule_as_written(logits, temperature, top_p, seed, positions):
    """The decoding rule of ``npc.serving.sampler``'s docstring, literally (sorting everything):
    the token it picks at each of ``positions``. The ranking depends on the logits alone, so it
    is sorted once for all the positions."""
    if temperature == 0.0:
        return [int(np.argmax(logits)) for _ in positions]
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    total = float(np.sum(p))
    us = [sampler.uniform(seed, position) for position in positions]
    if top_p >= 1.0:
        c = np.cumsum(p)
        return [int(min(np.searchsorted(c, u * total, side="right"), len(p) - 1)) for u in us]
    ids = np.arange(len(z))
    order = ids[np.lexsort((ids, -z))]
    c = np.cumsum(p[order])
    n = min(int(np.searchsorted(c, top_p * total, side="left")) + 1, len(c))
    return [int(order[min(int(np.searchsorted(c[:n], u * c[n - 1], side="right")), n - 1)])
            for u in us]


def test_sampler_picks_what_the_rule_as_written_picks():
    """The in-place arithmetic and the partial sort give the rule's token, draw for draw, on
    vocabulary-sized logits: plain, tied at the top, masked, extreme temperatures."""
    rng = np.random.default_rng(11)
    for trial in range(120):
        x = (rng.standard_normal(49152) * rng.uniform(0.5, 10)).astype(np.float32)
        if trial % 5 == 0:
            x[rng.integers(0, len(x), 40)] = x.max()
        if trial % 3 == 1:
            x[rng.permutation(len(x))[:len(x) - int(rng.integers(1, 3000))]] = -np.inf
        t = float(rng.choice([0.0, 0.05, 0.7, 1.0, 2.5]))
        p = float(rng.choice([1.0, 0.999, 0.9, 0.5, 0.01]))
        picked = [sampler.pick(x, t, p, trial, pos) for pos in range(3)]
        assert picked == _rule_as_written(x, t, p, trial, range(3)), (trial, t, p)


def test_sampler_refuses_parameters_it_cannot_honour():
    for t, p in [(-0.1, 1.0), (float("nan"), 1.0), (1.0, 0.0), (1.0, 1.5)]:
        with pytest.raises(ValueError):
            sampler.check_params(t, p)


# -- the engine with the real model ------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(hearth_home):
    from npc.store import ModelStore
    store = ModelStore()
    rec = store.ensure_default()
    return store.path(rec.blake3), rec.blake3


def engine(model_file, width, **kw):
    from npc.serving import Engine, EngineOptions
    path, digest = model_file
    kw.setdefault("n_threads", 1)  # fast on a busy machine; thread count does not change logits
    return Engine(path, EngineOptions(width=width, ctx_per_seq=kw.pop("ctx_per_seq", 256), **kw),
                  model_id=digest, skins=kw.pop("skins", None))


@pytest.fixture(scope="module")
def wide(model_file):
    from npc.llama import Adapter
    e = engine(model_file, 8)
    loaded = {}
    e.skins = lambda sid: loaded.setdefault(sid, Adapter(e.model, PIRATE, key=sid))
    yield e
    close_engine(e, loaded)


def close_engine(e, loaded: dict) -> None:
    """Close an engine and the adapters it wore (adapters go before the model they were loaded
    against)."""
    for sid, a in loaded.items():
        e.forget_adapter(sid)
        a.close()
    e.close()


@pytest.fixture(scope="module")
def genuine(wide):
    work = items()
    return work, wide.generate(work)


@pytest.mark.model
@pytest.mark.slow
def test_genuine_work_rescores_clean_at_widths_1_3_8(model_file, wide, genuine):
    work, at8 = genuine
    assert {c.finish_reason for c in at8} <= {"stop", "length"}
    assert all(c.tokens or c.finish_reason == "stop" for c in at8)
    for width, threads in ((1, 1), (3, 2)):
        e = engine(model_file, width, n_threads=threads)
        try:
            seen = []
            got = e.generate(work, on_done=seen.append)
            # Mixed lengths in one batch, any width: the same tokens, and every claim re-scores clean.
            assert got == at8
            assert sorted(c.custom_id for c in seen) == sorted(c.custom_id for c in got)
        finally:
            e.close()
    verdicts = [wide.rescore(it, c) for it, c in zip(work, at8)]
    assert [v.reason for v in verdicts if not v.ok] == []
    assert sum(v.checked_tokens for v in verdicts) == sum(len(c.tokens) for c in at8)


@pytest.mark.model
@pytest.mark.slow
def test_self_check_passes_for_the_served_configuration(wide):
    verdicts = wide.self_check()
    assert len(verdicts) == 16 and all(v.ok for v in verdicts)


@pytest.mark.model
@pytest.mark.slow
def test_skin_batch_rescores_clean_only_with_its_skin(wide):
    work = items(4, max_tokens=8)
    got = wide.generate(work, skin="pirate")
    assert all(wide.rescore(it, c, skin="pirate").ok for it, c in zip(work, got))
    assert not all(wide.rescore(it, c).ok for it, c in zip(work, got))  # the skin is part of it


@pytest.mark.model
@pytest.mark.slow
def test_each_cheat_is_caught(wide, genuine, model_file, tmp_path):
    from npc.llama import C, quantize
    from npc.serving import Completion
    work, honest = genuine
    model = wide.model

    def claim(c, tokens, finish=None):
        return Completion(c.custom_id, tokens, model.detokenize(tokens), c.prompt_tokens,
                          finish or c.finish_reason)

    rng = np.random.default_rng(11)
    for it, c in zip(work, honest):
        if not c.tokens:
            continue
        n = len(c.tokens)
        rand = [int(t) for t in rng.integers(0, model.n_vocab, n)]
        assert not wide.rescore(it, claim(c, rand)).ok
        k = n // 2
        changed = list(c.tokens)
        changed[k] = (changed[k] + 1) % model.n_vocab
        v = wide.rescore(it, claim(c, changed))
        assert not v.ok and v.first_mismatch == k
        v = wide.rescore(it, claim(c, c.tokens[:-1], "stop"))
        assert not v.ok and "cut short" in v.reason
        assert not wide.rescore(it, claim(c, c.tokens[:-1], "length")).ok
        wrong_text = Completion(c.custom_id, c.tokens, c.text + "!", c.prompt_tokens, c.finish_reason)
        assert not wide.rescore(it, wrong_text).ok

    # Another quantisation of the same model: its work is not the served model's.
    q8 = tmp_path / "q8_0.gguf"
    quantize(model_file[0], q8, C.LLAMA_FTYPE_MOSTLY_Q8_0)
    from npc.serving import Engine, EngineOptions
    other = Engine(q8, EngineOptions(width=8, ctx_per_seq=256, n_threads=1),
                   model_id="q8")
    try:
        longer = items(8, max_tokens=24)
        swapped = other.generate(longer)
    finally:
        other.close()
    caught = [not wide.rescore(it, c).ok for it, c in zip(longer, swapped)]
    assert any(caught)


class StepGate:
    """Pauses when ``pause()`` is called; ``wait_resumed`` resumes after ``hold`` seconds, or
    releases the work when ``release`` is set."""

    def __init__(self, hold=0.05, release=False):
        self.hold, self.release = hold, release
        self._paused = threading.Event()
        self.waits = 0

    def pause(self):
        self._paused.set()

    def paused(self):
        return self._paused.is_set()

    def wait_resumed(self, timeout):
        self.waits += 1
        if self.release:
            return False
        time.sleep(self.hold)
        self._paused.clear()
        return True


@pytest.mark.model
@pytest.mark.slow
def test_pause_and_resume_give_the_same_tokens(wide, genuine):
    work, honest = genuine
    gate = StepGate()
    # Paused as the first item finishes: the other seven are mid-generation, KV cache in place.
    got = wide.generate(work, gate=gate, on_done=lambda c: gate.pause())
    assert gate.waits >= 1
    assert got == honest


@pytest.mark.model
@pytest.mark.slow
def test_release_returns_the_unfinished_ids(wide, genuine):
    from npc.serving import Released
    work, honest = genuine
    gate = StepGate(release=True)
    with pytest.raises(Released) as caught:
        wide.generate(work, gate=gate, on_done=lambda c: gate.pause())
    done, undone = caught.value.done, caught.value.undone
    assert done and undone
    assert sorted([c.custom_id for c in done] + undone) == sorted(it.custom_id for it in work)
    assert all(c in honest for c in done)  # what finished is exactly the uninterrupted result


@pytest.mark.model
@pytest.mark.slow
def test_abort_flag_stops_a_long_prefill(model_file):
    from npc.llama import Context, LoadOptions, Model
    m = Model(model_file[0])
    ctx = Context(m, LoadOptions(n_ctx=1024, n_batch=1024, n_seq_max=1, n_threads=1))
    try:
        toks = (m.tokenize("The old mill by the river ground corn for the village. " * 40))[:400]
        entries = [(t, 0, i, i == len(toks) - 1) for i, t in enumerate(toks)]
        t0 = time.perf_counter()
        assert ctx.decode_entries(entries) == 0
        full = time.perf_counter() - t0
        ctx.clear()
        flag = ctx.abort_flag()
        timer = threading.Timer(full / 20, flag.set)
        timer.start()
        t0 = time.perf_counter()
        rc = ctx.decode_entries(entries)
        stopped = time.perf_counter() - t0
        timer.join()
        assert rc == 2
        assert stopped < full / 2  # measured side by side: stopped well before the end
        assert ctx.seq_pos_max(0) < len(toks) - 1
        flag.clear()
        ctx.clear()
        assert ctx.decode_entries(entries) == 0
    finally:
        ctx.close()
        m.close()


@pytest.mark.model
@pytest.mark.slow
def test_items_that_cannot_be_served_are_refused_by_name(wide):
    from npc.serving import ServingError
    for bad in (Item("too-long", [Msg("user", "word " * 400)], 10),
                Item("bad-role", [Msg("tool", "x")], 10),
                Item("bad-temp", [Msg("user", "x")], 10, temperature=-1.0),
                Item("no-tokens", [Msg("user", "x")], 0)):
        with pytest.raises(ServingError, match=bad.custom_id):
            wide.generate([items(1)[0], bad])


def test_the_abort_flag_follows_a_gate_with_or_without_on_change():
    """``follow_gate`` keeps llama.cpp's abort flag (the real ctypes flag) equal to the gate:
    a SwitchGate sets it from the thread that closes the gate, with no watcher thread; a gate
    with only ``paused()`` is polled by one; either way the flag is clear afterwards."""
    from npc.llama import AbortFlag
    from npc.serving.engine import follow_gate
    from swarm.jobs.away import SwitchGate

    class Polled:
        def __init__(self):
            self.closed = False

        def paused(self) -> bool:
            return self.closed

        def wait_resumed(self, timeout: float) -> bool:
            return not self.closed

    def wait_for(cond) -> bool:
        deadline = time.monotonic() + 5
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.001)
        return cond()

    flag = AbortFlag()
    gate = SwitchGate(release_after=30.0)
    before = threading.active_count()
    with follow_gate(gate, flag, None, poll_s=0.001):
        assert threading.active_count() == before  # nothing polls
        assert not flag.is_set()
        gate.set_serving(False)
        assert flag.is_set()  # at once, from this thread
        gate.set_serving(True)
        assert not flag.is_set()
        gate.set_serving(False)
    assert not flag.is_set()
    gate.set_serving(True)
    assert not flag.is_set()  # unsubscribed: a later change no longer reaches the flag
    polled = Polled()
    with follow_gate(polled, flag, None, poll_s=0.001):
        assert threading.active_count() == before + 1
        polled.closed = True
        assert wait_for(flag.is_set)
        polled.closed = False
        assert wait_for(lambda: not flag.is_set())
        polled.closed = True
        assert wait_for(flag.is_set)
    assert not flag.is_set() and threading.active_count() == before
