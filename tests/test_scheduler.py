"""The serving scheduler with the real default model: requests joining a running batch at any
time get exactly what ``Engine.generate`` gives for the same item; stop strings, logprobs, token
masks, cancel, skins, the pre-emption gate and close behave as documented."""

import asyncio
import threading
import time

import numpy as np
import pytest

from tests.test_serving import close_engine
from tests.test_serving import items as serving_items

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "assets" / "skins" / "bundles"
WIDTH = 4

pytestmark = [pytest.mark.model, pytest.mark.slow]


def items(n=8, max_tokens=24):
    return serving_items(n, max_tokens)


def request(it, **kw):
    from npc.serving import GenRequest
    return GenRequest(messages=tuple((m.role, m.content) for m in it.messages),
                      max_tokens=it.max_tokens, temperature=it.temperature, top_p=it.top_p,
                      seed=it.seed, **kw)


class Collector:
    """Reads one handle's events on its own thread, noting when the first and last came."""

    def __init__(self, handle):
        self.handle = handle
        self.events = []
        self.submitted = time.monotonic()
        self.first = self.finished = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for ev in self.handle.events():
            if self.first is None:
                self.first = time.monotonic()
                self.started.set()
            self.events.append(ev)
        self.finished = time.monotonic()
        self.started.set()

    def result(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        return self.events[-1]

    def tokens(self):
        return [ev.token for ev in self.events[:-1]]


def check_stream(col):
    """Every generated token streamed once, in order; the streamed text adds up to the result."""
    from npc.serving import Finished, TokenEvent
    fin = col.result()
    assert isinstance(fin, Finished)
    body = col.events[:-1]
    assert all(isinstance(ev, TokenEvent) for ev in body)
    assert "".join(ev.text for ev in body) == fin.text
    assert list(fin.tokens) == [ev.token for ev in body][:len(fin.tokens)]
    assert fin.completion_tokens == len(fin.tokens)
    return fin


def same_as(fin, completion):
    assert list(fin.tokens) == completion.tokens
    assert fin.text == completion.text
    assert fin.finish_reason == completion.finish_reason
    assert fin.prompt_tokens == completion.prompt_tokens


@pytest.fixture(scope="module")
def model_file(hearth_home):
    from npc.store import ModelStore
    store = ModelStore()
    rec = store.ensure_default()
    return store.path(rec.blake3), rec.blake3


@pytest.fixture(scope="module")
def eng(model_file):
    from npc.llama import Adapter
    from npc.serving import Engine, EngineOptions
    path, digest = model_file
    e = Engine(path, EngineOptions(width=WIDTH, ctx_per_seq=256, n_threads=1), model_id=digest)
    loaded = {}

    def skin(sid):
        if sid not in loaded:
            path = BUNDLES / sid / "adapter.gguf"
            if not path.is_file():
                raise ValueError(f"no such skin: {sid}")
            loaded[sid] = Adapter(e.model, path, key=sid)
        return loaded[sid]

    e.skins = skin
    yield e
    close_engine(e, loaded)


@pytest.fixture(scope="module")
def honest(eng):
    work = items()
    return work, eng.generate(work)


@pytest.fixture
def sched(eng):
    from npc.serving import Scheduler
    s = Scheduler(eng)
    yield s
    s.close()


class PauseGate:
    """A gate the test pauses and resumes by hand."""

    def __init__(self):
        self._running = threading.Event()
        self._running.set()
        self.waits = 0

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    def paused(self):
        return not self._running.is_set()

    def wait_resumed(self, timeout):
        self.waits += 1
        return self._running.wait(timeout)


class DigitsOnly:
    """A constraint whose matcher allows only tokens made of ASCII digits, ``n`` of them."""

    def __init__(self, n):
        self.n = n

    def matcher(self, model):
        return DigitMatcher(model, self.n)


class DigitMatcher:
    def __init__(self, model, n):
        self.digits = np.array([bool(p) and p.isdigit() for p in model.pieces])
        self.n, self.seen = n, []

    def allowed(self):
        return self.digits

    def advance(self, token):
        assert self.digits[token], "the scheduler picked a token the mask forbids"
        self.seen.append(token)

    def finished(self):
        return len(self.seen) >= self.n


# -- exactness ---------------------------------------------------------------------------------

def test_requests_joining_a_running_batch_get_what_engine_generate_gives(sched, honest):
    work, expected = honest
    cols = []
    for i, it in enumerate(work):
        cols.append(Collector(sched.submit(request(it))))
        if i == 1:
            cols[0].started.wait(60)  # the rest arrive while the first ones are generating
        time.sleep(0.03)
    fins = [check_stream(c) for c in cols]
    for fin, c in zip(fins, expected):
        same_as(fin, c)
    # At least one request was submitted while another was already streaming, and with 8
    # requests over 4 slots some waited for a slot: joining mid-batch really happened.
    assert any(a.first is not None and a.first < b.submitted < a.finished
               for a in cols for b in cols if a is not b)


def test_a_raw_prompt_is_served_like_the_same_rendered_chat(sched, eng, honest):
    from npc.serving import GenRequest
    work, expected = honest
    it = work[3]
    text = eng.model.apply_chat_template([(m.role, m.content) for m in it.messages])
    fin = check_stream(Collector(sched.submit(GenRequest(
        prompt=text, max_tokens=it.max_tokens, temperature=it.temperature, top_p=it.top_p,
        seed=it.seed))))
    same_as(fin, expected[3])


def test_engine_generate_from_another_thread_waits_for_the_scheduler(sched, eng, honest):
    work, expected = honest
    cols = [Collector(sched.submit(request(it))) for it in work[:4]]
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("c", eng.generate(work[4:])))
    t.start()
    fins = [check_stream(c) for c in cols]
    t.join(120)
    for fin, c in zip(fins, expected[:4]):
        same_as(fin, c)
    assert got["c"] == expected[4:]
    # And the scheduler still serves afterwards.
    same_as(check_stream(Collector(sched.submit(request(work[5])))), expected[5])


# -- stop strings, logprobs, masks -------------------------------------------------------------

def test_stop_strings_end_the_text_and_are_never_streamed(sched, eng, honest):
    work, expected = honest
    it, full = work[2], expected[2]
    ends = np.cumsum([len(eng.model.detokenize([t])) for t in full.tokens])
    # A stop string spanning a token boundary in the middle of the answer.
    mid = len(ends) // 2
    cut = int(ends[mid]) - 1
    stop = full.text[cut:cut + 3]
    assert len(stop) == 3 and full.text.find(stop) == cut
    fin = check_stream(Collector(sched.submit(request(it, stop=("never-there", stop)))))
    assert fin.finish_reason == "stop"
    assert fin.text == full.text[:cut]
    assert list(fin.tokens) == full.tokens[:len(fin.tokens)] and len(fin.tokens) < len(full.tokens)
    # A stop string whose start appears but which never completes: the held-back text is
    # released and the result is the whole answer.
    partial = full.text[cut:cut + 2] + "\x00"
    col = Collector(sched.submit(request(it, stop=(partial,))))
    fin = check_stream(col)
    same_as(fin, full)
    streamed = [ev.text for ev in col.events[:-1]]
    assert "".join(streamed) == full.text
    assert "".join(streamed[:mid + 1]) == full.text[:cut]  # the last character waited


def test_logprobs_are_the_models_distribution(sched, honest):
    from npc.serving import TokenEvent
    work, expected = honest
    col = Collector(sched.submit(request(work[0], logprobs=5)))  # greedy
    fin = check_stream(col)
    same_as(fin, expected[0])  # asking for logprobs changes nothing
    for ev in col.events[:-1]:
        assert isinstance(ev, TokenEvent) and ev.logprob <= 0.0
        assert len(ev.top_logprobs) == 5
        lps = [lp for _, lp in ev.top_logprobs]
        assert lps == sorted(lps, reverse=True) and sum(np.exp(lps)) <= 1.0 + 1e-9
        assert ev.logprob == lps[0]  # greedy: the chosen token is the most likely one
    col = Collector(sched.submit(request(work[1], logprobs=0)))  # sampled, no alternatives
    check_stream(col)
    assert all(ev.logprob <= 0.0 and ev.top_logprobs == () for ev in col.events[:-1])
    assert any(ev.logprob < -1e-6 for ev in col.events[:-1])
    col = Collector(sched.submit(request(work[1])))
    check_stream(col)
    assert all(ev.logprob is None for ev in col.events[:-1])


def test_a_token_mask_constrains_what_is_generated(sched, eng):
    from npc.serving import GenRequest
    req = GenRequest(messages=(("user", "Tell me about the weather."),), max_tokens=20,
                     temperature=0.9, seed=7)
    free = check_stream(Collector(sched.submit(req)))
    assert not free.text.isdigit()
    con = DigitsOnly(5)
    fin = check_stream(Collector(sched.submit(GenRequest(**{**req.__dict__, "constraint": con}))))
    assert fin.finish_reason == "stop" and fin.completion_tokens == 5  # the matcher finished it
    assert fin.text.isdigit()
    pieces = eng.model.pieces
    assert all(pieces[t].isdigit() for t in fin.tokens)


class Forced:
    """A constraint whose matcher allows exactly one token at each step: ``tokens`` in order."""

    def __init__(self, tokens, ends=True):
        self.tokens, self.ends = tokens, ends

    def matcher(self, model):
        return ForcedMatcher(model.n_vocab, self.tokens, self.ends)


class ForcedMatcher:
    def __init__(self, n_vocab, tokens, ends):
        self.n_vocab, self.tokens, self.ends, self.i = n_vocab, tokens, ends, 0

    def allowed(self):
        mask = np.zeros(self.n_vocab, dtype=bool)
        if self.i < len(self.tokens):
            mask[self.tokens[self.i]] = True
        return mask

    def advance(self, token):
        assert token == self.tokens[self.i]
        self.i += 1

    def finished(self):
        return self.i == len(self.tokens) and self.ends


class Nothing:
    """A broken constraint: its matcher allows no token after the first two."""

    def matcher(self, model):
        return Forced(model.tokenize("12"), ends=False).matcher(model)


def test_a_constraint_that_allows_no_token_fails_only_its_own_request(sched, honest):
    from npc.serving import GenRequest, ServingError, TokenEvent
    work, expected = honest
    other = Collector(sched.submit(request(work[0])))
    h = sched.submit(GenRequest(prompt="Count.", max_tokens=5, constraint=Nothing()))
    got = []
    with pytest.raises(ServingError, match="allows no next token"):
        for ev in h.events():
            got.append(ev)
    assert len(got) == len(sched.engine.model.tokenize("12"))
    assert all(isinstance(ev, TokenEvent) for ev in got)
    same_as(check_stream(other), expected[0])


def test_characters_split_across_tokens_are_streamed_whole(sched, eng):
    from npc.serving import GenRequest
    want = "Bread 🍞 and café ☕, naïve 😀!"
    toks = eng.model.tokenize(want)
    pieces = [eng.model.piece(t) for t in toks]
    split = [p for p in pieces if not _utf8(p)]
    assert split, "the tokenizer keeps every character whole: nothing to test"
    col = Collector(sched.submit(GenRequest(prompt="Say it.", max_tokens=len(toks),
                                            temperature=0.0, constraint=Forced(toks))))
    fin = check_stream(col)
    assert fin.text == want and list(fin.tokens) == toks
    texts = [ev.text for ev in col.events[:-1]]
    assert all("\ufffd" not in t for t in texts)
    assert "" in texts  # a token ending inside a character streamed nothing yet


def _utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_leaving_the_stream_early_cancels_the_request(sched, honest):
    from npc.serving import GenRequest
    work, expected = honest
    long = GenRequest(messages=(("user", "Tell a very long story about a mill."),),
                      max_tokens=200, temperature=0.8, seed=1)
    hs = [sched.submit(long) for _ in range(WIDTH)]
    waiting = Collector(sched.submit(request(work[6])))
    for h in hs:
        it = h.events()
        next(it)
        it.close()  # the reader went away
    same_as(check_stream(waiting), expected[6])
    assert all(list(h.events())[-1].finish_reason == "cancelled" for h in hs)

    async def leave_after_one():
        h = sched.submit(long)
        agen = h.aevents()
        await agen.__anext__()
        await agen.aclose()
        return h

    h = asyncio.run(leave_after_one())
    fin = list(h.events())[-1]  # the rest of the stream is still there to read
    assert fin.finish_reason == "cancelled" and fin.completion_tokens < 200


# -- cancel, skins, gate, close ----------------------------------------------------------------

def test_cancel_frees_the_slot_within_a_step(sched, honest):
    from npc.serving import GenRequest
    work, expected = honest
    long = GenRequest(messages=(("user", "Tell a very long story about a mill."),),
                      max_tokens=200, temperature=0.8, seed=1)
    running = [Collector(sched.submit(long)) for _ in range(WIDTH)]
    queued = Collector(sched.submit(request(work[6])))
    never = sched.submit(request(work[7]))
    never.cancel()  # still queued: ends at once, nothing generated
    evs = list(never.events())
    assert [e.finish_reason for e in evs] == ["cancelled"] and evs[0].completion_tokens == 0
    running[0].started.wait(60)
    t0 = time.monotonic()
    running[0].handle.cancel()
    fin = check_stream(running[0])
    cancelled_after = time.monotonic() - t0
    assert fin.finish_reason == "cancelled" and fin.completion_tokens < 200
    same_as(check_stream(queued), expected[6])  # the freed slot served the queued request
    # The queued request went through while the others were still generating.
    assert any(c.finished is None or c.finished > queued.finished for c in running[1:])
    t1 = time.monotonic()
    for c in running[1:]:
        c.handle.cancel()
    assert all(check_stream(c).finish_reason == "cancelled" for c in running[1:])
    # Measured side by side: a cancel takes far less than serving a short request.
    assert cancelled_after < queued.finished - queued.submitted
    assert time.monotonic() - t1 < queued.finished - queued.submitted


def test_two_skins_interleaved_match_their_own_batches(sched, eng):
    work = items(6, max_tokens=16)
    skins = [None, "pirate", "shanty"]
    groups = {s: [it for i, it in enumerate(work) if skins[i % 3] == s] for s in skins}
    expected = {s: eng.generate(g, skin=s) for s, g in groups.items()}
    cols = [Collector(sched.submit(request(it, skin=skins[i % 3]))) for i, it in enumerate(work)]
    fins = [check_stream(c) for c in cols]
    for s in skins:
        mine = [f for i, f in enumerate(fins) if skins[i % 3] == s]
        for fin, c in zip(mine, expected[s]):
            same_as(fin, c)
    # The skins really change the answers (so wearing the wrong one would be caught).
    plain = eng.generate(groups["pirate"])
    assert [c.tokens for c in plain] != [c.tokens for c in expected["pirate"]]


def test_a_waiting_skin_gets_the_batch_before_the_other_skins_queue_empties(eng):
    from npc.serving import Scheduler
    work = items(12, max_tokens=12)
    pirate = work[1]
    expected = eng.generate([pirate], skin="pirate")[0]
    s = Scheduler(eng, switch_after_s=0.2)
    try:
        plain = [Collector(s.submit(request(it))) for it in work]  # three batches' worth
        plain[0].started.wait(60)
        skinned = Collector(s.submit(request(pirate, skin="pirate")))
        same_as(check_stream(skinned), expected)
        for c in plain:
            check_stream(c)
        # The skinned request did not wait for every plain request to finish.
        assert skinned.finished < max(c.finished for c in plain)
    finally:
        s.close()


def test_an_unknown_skin_ends_its_stream_with_an_error(sched, honest):
    from npc.serving import ServingError
    work, expected = honest
    bad = sched.submit(request(work[0], skin="no-such-skin"))
    good = Collector(sched.submit(request(work[0])))
    with pytest.raises(ServingError, match="no-such-skin"):
        list(bad.events())
    same_as(check_stream(good), expected[0])


def test_a_paused_gate_holds_generation_and_resuming_changes_nothing(eng, honest):
    from npc.serving import Scheduler
    work, expected = honest
    gate = PauseGate()
    s = Scheduler(eng, gate=gate)
    try:
        gate.pause()
        held = Collector(s.submit(request(work[0])))
        time.sleep(0.5)
        assert held.events == [] and gate.waits >= 1  # paused before the first token
        gate.resume()
        held.started.wait(60)
        others = [Collector(s.submit(request(it))) for it in work[1:4]]
        others[0].started.wait(60)
        gate.pause()  # mid-generation: KV caches in place
        time.sleep(0.3)  # a step in flight may still finish
        counts = [len(c.events) for c in others]
        time.sleep(0.5)
        assert [len(c.events) for c in others] == counts
        assert any(c.finished is None for c in others)
        gate.resume()
        same_as(check_stream(held), expected[0])
        for c, e in zip(others, expected[1:4]):
            same_as(check_stream(c), e)
    finally:
        gate.resume()
        s.close()


def test_close_ends_every_stream(eng, honest):
    from npc.serving import GenRequest, Scheduler, ServingError
    work, _ = honest
    s = Scheduler(eng)
    long = GenRequest(messages=(("user", "Tell a long story."),), max_tokens=200, seed=3)
    cols = [Collector(s.submit(long)) for _ in range(WIDTH + 2)]
    cols[0].started.wait(60)
    s.close()
    fins = [check_stream(c) for c in cols]
    assert all(f.finish_reason == "cancelled" for f in fins)
    assert fins[0].completion_tokens >= 1 and fins[-1].completion_tokens == 0
    with pytest.raises(ServingError, match="closed"):
        s.submit(request(work[0]))


# -- asyncio -----------------------------------------------------------------------------------

def test_aevents_streams_to_asyncio_without_blocking_the_loop(sched, honest):
    from npc.serving import Finished
    work, expected = honest

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        async def read(h):
            return [ev async for ev in h.aevents()]

        t = asyncio.create_task(ticker())
        hs = [sched.submit(request(it)) for it in work[:3]]
        streams = await asyncio.gather(*(read(h) for h in hs))
        done.set()
        await t
        return streams, ticks

    streams, ticks = asyncio.run(main())
    for evs, c in zip(streams, expected[:3]):
        assert isinstance(evs[-1], Finished)
        same_as(evs[-1], c)
        assert "".join(ev.text for ev in evs[:-1]) == c.text
    assert ticks > 5  # the event loop ran while the requests were generating


# -- bad requests ------------------------------------------------------------------------------

def test_requests_that_cannot_be_served_are_refused_with_the_reason(sched, eng):
    from npc.serving import GenRequest, ServingError
    m = (("user", "hi"),)
    bad = [
        (GenRequest(), "exactly one of messages and prompt"),
        (GenRequest(messages=m, prompt="x"), "exactly one of messages and prompt"),
        (GenRequest(messages=()), "messages is empty"),
        (GenRequest(messages=(("tool", "x"),)), "role 'tool'"),
        (GenRequest(messages=(("user",),)), r"messages\[0\]"),
        (GenRequest(prompt=""), "prompt must be a non-empty string"),
        (GenRequest(messages=m, max_tokens=0), "max_tokens"),
        (GenRequest(messages=m, max_tokens=1000), "do not fit"),
        (GenRequest(messages=(("user", "word " * 400),), max_tokens=1), "prompt tokens"),
        (GenRequest(messages=m, temperature=-1.0), "temperature"),
        (GenRequest(messages=m, top_p=0.0), "top_p"),
        (GenRequest(messages=m, seed="x"), "seed"),
        (GenRequest(messages=m, stop=("",)), "stop"),
        (GenRequest(messages=m, stop="x"), "stop"),
        (GenRequest(messages=m, logprobs=21), "logprobs"),
        (GenRequest(messages=m, logprobs=-1), "logprobs"),
        (GenRequest(messages=m, max_tokens=3, constraint="json"), "constraint"),
    ]
    for req, match in bad:
        with pytest.raises(ServingError, match=match):
            sched.submit(req)
    # Still serving.
    assert check_stream(Collector(sched.submit(GenRequest(messages=m, max_tokens=3)))).text
