"""The batched engine a worker serves with: continuous batching over llama.cpp's low-level API.

Up to ``width`` sequences share each ``llama_decode``: every sequence has its own seq id in a
non-unified KV cache, sequences still reading their prompt and sequences generating are mixed in
one batch, and a finished sequence's slot takes the next item at once. Each item's messages are
rendered with the model's own chat template (llama.cpp's built-in template engine) and generated
under the rule in ``sampler`` (greedy, or seeded temperature + top-p), stopping at
end-of-generation or after ``max_tokens``.

Pre-emption: the gate is asked between decode steps, and llama.cpp's abort flag follows it
(``follow_gate``) so a long prefill stops between graph nodes: a gate that tells of its changes
(``on_change``) sets and clears the flag itself, with no thread and no polling; any other gate is
polled by a watcher thread. An aborted step is rolled
back (its KV entries removed) and redone on resume; the KV cache of the work in flight is kept
while paused. When the gate releases the work, ``Released`` carries what finished and the ids of
what did not.

Timing: with ``HEARTH_DECODE_LOG`` set to a file path, every ``llama_decode`` call of the
generation loop appends ``decode START END RC``, the abort flag's follower appends ``gate T``
when it first sees the gate closed, and every pause the loop sees appends ``paused T``
(``time.monotonic()`` seconds, one clock for every process on the machine), so a
process outside can time pre-emption from an input event to the last decode call returning
(tools/bench/preempt_window.py).

Exactness: only configurations whose batched, mixed-length generation gives logits bit-identical
to a one-pass prefill are served: flash attention off and a non-unified KV cache are fixed here
(nothing else was measured exact), and ``self_check`` measures the rest on this machine.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npc.llama import Adapter, Context, LoadOptions, Model
from npc.serving import rescore as _rescore
from npc.serving import sampler
from npc.serving.types import (FINISH_LENGTH, FINISH_STOP, Completion, Item, Message, Released,
                               ServingError, Verdict)

ROLES = ("system", "user", "assistant")
#: A file to append decode-call timings to (see the module docstring); unset: no timing.
DECODE_LOG_ENV = "HEARTH_DECODE_LOG"


class _DecodeLog:
    """Decode-call timings appended to the file named by ``HEARTH_DECODE_LOG``, one line each,
    flushed at once so a reader sees them as they happen."""

    def __init__(self, path: str):
        self._file = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()  # the loop and the abort watcher both write

    def _line(self, text: str) -> None:
        with self._lock:
            self._file.write(text + "\n")

    def decode(self, start: float, end: float, rc: int) -> None:
        self._line(f"decode {start:.6f} {end:.6f} {rc}")

    def gate(self, t: float) -> None:
        self._line(f"gate {t:.6f}")

    def paused(self, t: float) -> None:
        self._line(f"paused {t:.6f}")

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def from_env() -> _DecodeLog | None:
        path = os.environ.get(DECODE_LOG_ENV)
        return _DecodeLog(path) if path else None


@contextlib.contextmanager
def follow_gate(gate, flag, timing: _DecodeLog | None, poll_s: float):
    """While the block runs, llama.cpp's abort ``flag`` follows ``gate``: set when it closes,
    cleared when it opens (``timing`` notes the first time it is seen closed). A gate with
    ``on_change(callback) -> unsubscribe`` calls back with its state at once and on each change,
    so nothing polls; any other gate is asked by a watcher thread every ``poll_s`` seconds (or
    its own ``poll_s``: a gate that only re-reads its source that often). The flag is clear
    afterwards."""
    if gate is None:
        yield
        return
    was_paused = False

    def follow(paused: bool) -> None:
        nonlocal was_paused
        if paused:
            flag.set()
            if timing is not None and not was_paused:
                timing.gate(time.monotonic())
        else:
            flag.clear()
        was_paused = paused

    subscribe = getattr(gate, "on_change", None)
    try:
        if subscribe is not None:
            unsubscribe = subscribe(follow)
            try:
                yield
            finally:
                unsubscribe()
            return
        stop = threading.Event()
        interval = getattr(gate, "poll_s", poll_s)

        def watch() -> None:
            while not stop.wait(interval):
                follow(gate.paused())
        watcher = threading.Thread(target=watch, name="serving-abort-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
    finally:
        flag.clear()


@dataclass(frozen=True)
class EngineOptions:
    #: Sequences decoded together (slots of the KV cache).
    width: int = 8
    #: KV cells per sequence: prompt + output must fit.
    ctx_per_seq: int = 1024
    #: Tokens per llama_decode at most (re-scoring prefills in chunks of this size).
    n_batch: int = 512
    #: Prompt tokens read per generation step, beside one token per generating sequence. Small
    #: steps keep generating sequences moving while a new prompt is read, and bound what an
    #: aborted step throws away (an abort rolls back the whole step).
    prefill_per_step: int = 64
    n_threads: int = 2
    #: llama.cpp's extra buffer types (the repacked Q4_0 kernels on x86).
    use_extra_bufts: bool = True
    #: How long paused work keeps its KV cache before it is released.
    release_after_s: float = 30.0
    #: How often a watcher thread copies a gate without ``on_change`` (and without a ``poll_s``
    #: of its own) into llama.cpp's abort flag.
    abort_poll_s: float = 0.001

    def load_options(self, width: int, n_ctx: int) -> LoadOptions:
        # flash attention and a unified KV cache are not exact (tools/bench/verify_exact.md):
        # they are not options here at all.
        return LoadOptions(use_extra_bufts=self.use_extra_bufts, n_ctx=n_ctx, n_batch=self.n_batch,
                           n_seq_max=width, n_threads=self.n_threads,
                           n_threads_batch=self.n_threads, flash_attn=False, kv_unified=False)


@dataclass
class _Seq:
    index: int
    item: object
    prompt_len: int
    feed: list[int]
    pos: int = 0
    out: list[int] = field(default_factory=list)


def plan_step(slots: list, prefill_per_step: int) -> tuple[list, list]:
    """One continuous-batching step over ``slots`` (each None or an object with ``feed``, the
    tokens still to decode, and ``pos``, its next position): one token per generating sequence
    first, then prompt chunks in up to ``prefill_per_step`` tokens. Returns the decode entries
    (token, seq, pos, wants logits) and, per slot decoded, (slot, tokens taken, logits row or -1
    while its prompt is still being read)."""
    order = sorted((s for s in range(len(slots)) if slots[s] is not None),
                   key=lambda s: (len(slots[s].feed) > 1, s))
    entries, taken = [], []
    prefill_left = prefill_per_step
    for s in order:
        q = slots[s]
        take = 1 if len(q.feed) == 1 else min(len(q.feed), prefill_left)
        if take <= 0:
            break
        if len(q.feed) > 1:
            prefill_left -= take
        last = take == len(q.feed)
        entries += [(q.feed[j], s, q.pos + j, last and j == take - 1) for j in range(take)]
        taken.append((s, take, len(entries) - 1 if last else -1))
    return entries, taken


def run_step(ctx: Context, slots: list, prefill_per_step: int,
             timing=None) -> list | None:
    """Plan one step (``plan_step``), decode it and move each decoded slot's ``feed`` and ``pos``
    on; the step's (slot, taken, logits row) list, or None when the gate aborted the decode (the
    step's KV entries are removed, so it is redone whole on resume). ``timing`` (a decode log)
    records the call."""
    entries, taken = plan_step(slots, prefill_per_step)
    started = time.monotonic() if timing is not None else 0.0
    rc = ctx.decode_entries(entries)
    if timing is not None:
        timing.decode(started, time.monotonic(), rc)
    if rc == 2:
        for s, _, _ in taken:
            ctx.seq_rm(s, slots[s].pos, -1)
        return None
    for s, take, _ in taken:
        slots[s].feed = slots[s].feed[take:]
        slots[s].pos += take
    return taken


class Engine:
    """One model file, one batched context for generating, one single-sequence context for
    re-scoring. ``skins`` maps a skin id to an ``Adapter`` loaded against ``self.model`` (e.g.
    ``AdapterPool(engine, skin_store).get``; the engine offers the ``model`` and
    ``forget_adapter`` an ``AdapterPool`` needs of its runtime)."""

    def __init__(self, model_path: Path | str, options: EngineOptions = EngineOptions(), *,
                 model_id: str | None = None,
                 skins: Callable[[str], Adapter] | None = None):
        o = options
        if (o.width < 1 or o.ctx_per_seq < 16 or o.n_threads < 1 or o.prefill_per_step < 1
                or o.n_batch < o.width + o.prefill_per_step):
            raise ServingError(f"unusable engine options: {o}")
        self.options = o
        self.model = Model(model_path, use_extra_bufts=o.use_extra_bufts)
        self.ctx = Context(self.model, o.load_options(o.width, o.ctx_per_seq * o.width))
        self.seq_capacity = self.ctx.n_ctx // o.width
        self._check_ctx = Context(self.model, o.load_options(1, self.seq_capacity))
        self.eog = np.array([self.model.is_eog(t) for t in range(self.model.n_vocab)])
        if model_id is None:
            from common.files import blake3_file
            model_id = blake3_file(self.model.path)
        self._model_id = model_id
        self.skins = skins
        # Re-entrant: loading a skin may evict another, which calls forget_adapter.
        self._lock = threading.RLock()
        self._timing = _DecodeLog.from_env()

    @property
    def model_id(self) -> str:
        """The BLAKE3 of the model file served (hex)."""
        return self._model_id

    # -- items ---------------------------------------------------------------------------------

    def prompt_tokens(self, item) -> list[int]:
        """The item's messages rendered with the model's chat template, tokenized; raises
        ServingError naming the item when it cannot be served as asked."""
        cid = getattr(item, "custom_id", "?")
        if not item.messages:
            raise ServingError(f"{cid}: no messages")
        for m in item.messages:
            if m.role not in ROLES:
                raise ServingError(f"{cid}: message role {m.role!r} is not one of {', '.join(ROLES)}")
        if not (isinstance(item.max_tokens, int) and item.max_tokens >= 1):
            raise ServingError(f"{cid}: max_tokens must be a whole number >= 1, not {item.max_tokens!r}")
        try:
            sampler.check_params(item.temperature, item.top_p)
        except ValueError as e:
            raise ServingError(f"{cid}: {e}") from None
        text = self.model.apply_chat_template([(m.role, m.content) for m in item.messages])
        toks = self.model.tokenize(text, add_special=True, parse_special=True)
        if len(toks) + item.max_tokens > self.seq_capacity - 1:
            raise ServingError(f"{cid}: {len(toks)} prompt tokens + max_tokens {item.max_tokens} "
                               f"do not fit the {self.seq_capacity - 1} tokens a sequence holds")
        return toks

    # -- skins ---------------------------------------------------------------------------------

    def _wear(self, ctx: Context, skin: str | None) -> None:
        if skin is None:
            ctx.set_adapter(None)
            return
        if self.skins is None:
            raise ServingError(f"skin {skin}: this engine has no skins to wear")
        ctx.set_adapter(self.skins(skin))

    def forget_adapter(self, skin_id: str) -> None:
        """Stop wearing ``skin_id`` (called before its adapter is freed)."""
        with self._lock:
            for ctx in (self.ctx, self._check_ctx):
                if ctx.adapter is not None and ctx.adapter.key == skin_id:
                    ctx.set_adapter(None)

    # -- generating ----------------------------------------------------------------------------

    def generate(self, items: Sequence, skin: str | None = None, *, gate=None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
        """Complete every item, in input order, wearing ``skin`` for the whole batch. Calls
        ``on_done`` as each item finishes. Raises ``Released`` when the gate releases paused
        work, ServingError (before any decoding) for an item that cannot be served."""
        prompts = [self.prompt_tokens(it) for it in items]
        with self._lock:
            self._wear(self.ctx, skin)
            return self._run(list(items), prompts, gate, on_done)

    def _run(self, items: list, prompts: list[list[int]], gate, on_done,
             logits_sink: Callable[[int, int, np.ndarray], None] | None = None) -> list[Completion]:
        """The continuous-batching loop. ``logits_sink(item index, output position, logits)``
        sees every row the rule reads (for exactness measurements)."""
        ctx, width = self.ctx, self.options.width
        ctx.clear()
        pending = deque(range(len(items)))
        slots: list[_Seq | None] = [None] * width
        done: dict[int, Completion] = {}
        flag = ctx.abort_flag()
        flag.clear()
        timing = self._timing
        with follow_gate(gate, flag, timing, self.options.abort_poll_s):
            while pending or any(slots):
                if gate is not None and gate.paused():
                    if timing is not None:
                        timing.paused(time.monotonic())
                    if not self._wait(gate):
                        ctx.clear()
                        raise Released([done[i] for i in sorted(done)],
                                       [items[i].custom_id for i in range(len(items))
                                        if i not in done])
                for s in range(width):
                    if slots[s] is None and pending:
                        i = pending.popleft()
                        ctx.seq_rm(s)
                        slots[s] = _Seq(i, items[i], len(prompts[i]), list(prompts[i]))
                taken = run_step(ctx, slots, self.options.prefill_per_step, timing)
                if taken is None:  # aborted: ask the gate again
                    continue
                for s, _, row in taken:
                    q = slots[s]
                    if row < 0:
                        continue
                    it = q.item
                    logits = ctx.logits(row)
                    if logits_sink is not None:
                        logits_sink(q.index, len(q.out), logits)
                    tok = sampler.pick(logits, it.temperature, it.top_p, it.seed, len(q.out))
                    finish = None
                    if self.eog[tok]:
                        finish = FINISH_STOP
                    else:
                        q.out.append(tok)
                        if len(q.out) >= it.max_tokens:
                            finish = FINISH_LENGTH
                        else:
                            q.feed = [tok]
                    if finish is not None:
                        c = Completion(it.custom_id, list(q.out), self.model.detokenize(q.out),
                                       q.prompt_len, finish)
                        done[q.index] = c
                        slots[s] = None
                        ctx.seq_rm(s)
                        if on_done is not None:
                            on_done(c)
        return [done[i] for i in range(len(items))]

    def _wait(self, gate) -> bool:
        """Paused: block until the gate lets serving go on (True) or releases the work (False)."""
        while gate.paused():
            if not gate.wait_resumed(self.options.release_after_s):
                return False
        return True

    # -- verifying -----------------------------------------------------------------------------

    def rescore(self, item, claim, skin: str | None = None) -> Verdict:
        """Re-score ``claim`` for ``item`` teacher-forced in one prefill and check every claimed
        token and the claimed finish against the decoding rule."""
        prompt = self.prompt_tokens(item)
        if claim.custom_id != item.custom_id:
            return Verdict(False, 0, None, f"claim is for {claim.custom_id!r}, not {item.custom_id!r}")
        tokens = list(claim.tokens)
        bad = next((i for i, t in enumerate(tokens)
                    if not isinstance(t, int) or not 0 <= t < self.model.n_vocab), None)
        if bad is not None:
            return Verdict(False, 0, bad, f"token {bad}: {tokens[bad]!r} is not a token id")
        problem = _rescore.finish_problem(claim, item.max_tokens)
        if problem:
            return Verdict(False, 0, None, problem)
        if claim.prompt_tokens != len(prompt):
            return Verdict(False, 0, None, f"prompt_tokens {claim.prompt_tokens}, "
                                           f"the prompt has {len(prompt)}")
        if claim.text != self.model.detokenize(tokens):
            return Verdict(False, 0, None, "text is not the text of the claimed tokens")
        with self._lock:
            self._wear(self._check_ctx, skin)
            return _rescore.check_claim(self._check_ctx, self.eog, prompt, item, claim)

    def self_check(self, items: Sequence | None = None) -> list[Verdict]:
        """Generate ``items`` (by default ``check_items``) at this engine's width and re-score
        every result: the configuration is exact on this machine only if none is rejected.
        Raises ServingError if one is; a worker runs this before it serves."""
        items = list(items) if items is not None else check_items(2 * self.options.width)
        verdicts = [self.rescore(it, c) for it, c in zip(items, self.generate(items))]
        bad = [(it.custom_id, v.reason) for it, v in zip(items, verdicts) if not v.ok]
        if bad:
            raise ServingError(f"re-scoring rejects genuine work in this configuration "
                               f"({len(bad)} of {len(items)}; first: {bad[0][0]}: {bad[0][1]}); "
                               f"it cannot be served exactly")
        return verdicts

    def close(self) -> None:
        """Free the contexts and the model (free the skins' adapters first)."""
        self._check_ctx.close()
        self.ctx.close()
        self.model.close()
        if self._timing is not None:
            self._timing.close()


def check_items(n: int, max_tokens: int = 8) -> list[Item]:
    """Items for ``Engine.self_check``: prompts of different lengths (so sequences reading a
    prompt and sequences generating share batches), greedy and sampled."""
    out = []
    for i in range(n):
        ask = "Describe the weather. " * (1 + i % 5) + f"Item {i}."
        t, p = [(0.0, 1.0), (0.8, 1.0), (1.0, 0.9)][i % 3]
        out.append(Item(f"self-check-{i}", [Message("user", ask)], max_tokens, t, p, i))
    return out
