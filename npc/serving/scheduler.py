"""Interactive serving: a long-running continuous-batching loop over an ``Engine``.

``Scheduler.submit`` validates a request and queues it; one background thread owns the engine's
batched context and, between decode steps, admits queued requests into free slots of the running
batch and retires finished or cancelled ones. Each step decodes one token for every generating
sequence and prompt chunks (``prefill_per_step`` tokens) in what is left of the batch, as
``Engine.generate`` does. Each request's tokens, text and finish events are streamed into its
``Handle``.

Exactness: a request is decoded under exactly the rule ``Engine.generate`` follows (the project's
``sampler`` with the request's seed and output positions, the prompt rendered and tokenized the
same way, end-of-generation and ``max_tokens`` the same), and batched decoding is exact for the
engine's configuration, so a request's tokens equal ``Engine.generate``'s for the same item
whatever else shares the batch and whenever it joined. Stop strings and constraints only end a
generation earlier or mask tokens; they never change a kept token's logits.

Skins: llama.cpp applies an adapter to the whole context, so requests wearing different skins
cannot share a decode. The loop wears one skin at a time and admits only requests for it. When
requests for another skin are queued, it stops admitting once the skin worn has nothing queued,
or once the oldest request for another skin has waited ``switch_after_s`` and the skin worn has
been worn that long; the batch drains and the loop wears the skin of that waiting request.

The engine lock: the scheduler holds ``Engine._lock`` for each busy period (from admitting work
until nothing is running or queued) and releases it when idle. ``Engine.generate`` and
``Engine.rescore`` called from other threads wait for an idle moment; they never interleave with
the scheduler's decodes (``generate`` clears the shared batched context). Under steady load that
wait has no bound, so an engine serving interactive requests is best dedicated to it.

Constraints: ``submit`` builds the request's matcher (``constraint.matcher(engine.model)``) on the
caller's thread, so compiling a grammar never stalls the running batch and its errors are raised
by ``submit``. Each step the matcher's mask sets the logits of forbidden tokens to -inf before the
sampler picks; the request stops with "stop" once the matcher is finished.

Pre-emption: the gate is asked between steps and mirrored into llama.cpp's abort flag while the
batch is busy; an aborted step is rolled back and redone on resume, and the KV cache of the work
in flight is kept. Interactive requests are never released: a paused request waits for as long as
the gate stays paused (its client may cancel it).
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np

from npc.serving import sampler
from npc.serving.engine import ROLES, Engine, follow_gate, run_step
from npc.serving.types import FINISH_LENGTH, FINISH_STOP, ServingError

FINISH_CANCELLED = "cancelled"  # the client cancelled, or the scheduler closed
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class GenRequest:
    """One generation request. ``messages``: chat as (role, content) pairs, rendered with the
    model's chat template; ``prompt``: raw text; exactly one of the two. ``temperature`` 0 is
    greedy, otherwise the sampler's seeded rule. ``stop``: the text ends before the first stop
    string, which is never streamed. ``logprobs``: None for none, k in 0..20 for the chosen
    token's logprob and the k most likely alternatives. ``skin``: an adapter id the engine's
    ``skins`` callable resolves. ``constraint``: an ``npc.serving.constrain.Constraint`` (anything
    with ``matcher(model)``), None for free text."""

    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    skin: str | None = None
    constraint: object | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. ``text`` is the new text it makes visible: complete UTF-8 characters
    only, and nothing that may still turn out to start a stop string (held back until it cannot,
    then released with a later token). The concatenation of a stream's ``text`` is its
    ``Finished.text``. ``logprob`` and ``top_logprobs`` are log-probabilities under the model's
    own distribution: the log-softmax of the raw logits at temperature 1, before a constraint's
    mask and whatever the request's temperature and top_p. The end-of-generation token is not
    part of the output and gets an event only when it releases held-back text."""

    text: str
    token: int
    logprob: float | None
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of a stream. ``tokens`` are the generated tokens (end-of-generation excluded, as in
    ``Engine.generate``'s ``Completion.tokens``); ``completion_tokens`` is their number."""

    finish_reason: str   # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    text: str            # the whole generated text, stop string removed
    tokens: tuple[int, ...] = ()


class _Channel:
    """A single-consumer queue fed by the scheduler thread, read blocking or from asyncio."""

    def __init__(self):
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def put(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that event loop is closed: nobody is waiting any more
                pass

    def get(self):
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    async def aget(self):
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                fut = loop.create_future()
                self._waiters.append((loop, fut))
            await fut


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Handle:
    """One submitted request: its event stream and its cancel switch."""

    def __init__(self, scheduler: Scheduler, req: GenRequest, prompt: list[int], matcher):
        self.request = req
        self.prompt_tokens = len(prompt)
        self._scheduler = scheduler
        self._prompt = prompt
        self._matcher = matcher
        self._channel = _Channel()
        self._submitted = time.monotonic()

    def events(self) -> Iterator[TokenEvent | Finished]:
        """The request's events as they come (blocking); ends after ``Finished``. Raises
        ServingError, after any events already streamed, if the request could not be served after
        all (its skin failed to load, its constraint failed or allowed no token). Closing the
        iterator before ``Finished`` cancels the request."""
        done = False
        try:
            while True:
                ev = self._channel.get()
                if isinstance(ev, BaseException):
                    done = True
                    raise ev
                done = isinstance(ev, Finished)
                yield ev
                if done:
                    return
        finally:
            if not done:
                self.cancel()

    async def aevents(self) -> AsyncIterator[TokenEvent | Finished]:
        """``events`` for asyncio code: awaiting never blocks the event loop. Closing the
        iterator or cancelling the task reading it (a client gone) cancels the request."""
        done = False
        try:
            while True:
                ev = await self._channel.aget()
                if isinstance(ev, BaseException):
                    done = True
                    raise ev
                done = isinstance(ev, Finished)
                yield ev
                if done:
                    return
        finally:
            if not done:
                self.cancel()

    def cancel(self) -> None:
        """Stop generating: the slot and its KV cache are freed before the next decode step and
        the stream ends with ``Finished("cancelled")``. No effect once finished."""
        self._scheduler._cancel(self)


@dataclass
class _Active:
    """A request in a slot of the running batch."""

    handle: Handle
    feed: list[int]
    pos: int = 0
    out: list[int] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    text: str = ""   # everything decoded so far
    sent: int = 0    # how much of ``text`` has been streamed


class Scheduler:
    """Continuous batching over ``engine`` for requests that come and go (see the module
    docstring). ``gate``: ``paused()`` / ``wait_resumed(timeout)``, e.g. the game window's
    pre-emption gate. ``switch_after_s``: how long a request for another skin waits (and the skin
    worn has been worn) before the loop stops admitting requests for the skin it wears."""

    def __init__(self, engine: Engine, *, gate=None, switch_after_s: float = 0.5,
                 pause_poll_s: float = 0.1):
        self.engine = engine
        self.gate = gate
        self.switch_after_s = switch_after_s
        self.pause_poll_s = pause_poll_s
        self._cond = threading.Condition()
        self._pending: deque[Handle] = deque()
        self._cancels: list[Handle] = []
        self._closing = False
        self._failed: BaseException | None = None
        self._slots: list[_Active | None] = [None] * engine.options.width
        self._skin: str | None = None
        self._worn_at = 0.0
        self._piece_text: dict[int, bytes] = {}
        self._thread = threading.Thread(target=self._main, name="serving-scheduler", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------

    def submit(self, req: GenRequest) -> Handle:
        """Validate ``req`` and queue it. Raises ServingError naming what cannot be served."""
        prompt = self._prompt_tokens(req)
        matcher = None
        if req.constraint is not None:
            if not callable(getattr(req.constraint, "matcher", None)):
                raise ServingError("constraint must be a Constraint (with a matcher(model) method)")
            matcher = req.constraint.matcher(self.engine.model)
        h = Handle(self, req, prompt, matcher)
        with self._cond:
            if self._closing or self._failed is not None:
                raise ServingError("the scheduler is closed" if self._failed is None else
                                   f"the scheduler stopped: {self._failed}")
            self._pending.append(h)
            self._cond.notify_all()
        return h

    def close(self) -> None:
        """Stop the loop: every request queued or running ends with ``Finished("cancelled")``.
        The engine stays open (its owner closes it)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _cancel(self, h: Handle) -> None:
        with self._cond:
            self._cancels.append(h)
            self._cond.notify_all()

    def _prompt_tokens(self, req: GenRequest) -> list[int]:
        if not isinstance(req, GenRequest):
            raise ServingError(f"expected a GenRequest, not {type(req).__name__}")
        if (req.messages is None) == (req.prompt is None):
            raise ServingError("give exactly one of messages and prompt")
        model = self.engine.model
        if req.messages is not None:
            if not req.messages:
                raise ServingError("messages is empty")
            for i, m in enumerate(req.messages):
                if not (isinstance(m, (tuple, list)) and len(m) == 2
                        and all(isinstance(x, str) for x in m)):
                    raise ServingError(f"messages[{i}] must be a (role, content) pair of strings")
                if m[0] not in ROLES:
                    raise ServingError(f"messages[{i}]: role {m[0]!r} is not one of "
                                       f"{', '.join(ROLES)}")
            toks = model.tokenize(model.apply_chat_template([tuple(m) for m in req.messages]),
                                  add_special=True, parse_special=True)
        else:
            if not isinstance(req.prompt, str) or not req.prompt:
                raise ServingError("prompt must be a non-empty string")
            toks = model.tokenize(req.prompt, add_special=True, parse_special=True)
        if not (isinstance(req.max_tokens, int) and not isinstance(req.max_tokens, bool)
                and req.max_tokens >= 1):
            raise ServingError(f"max_tokens must be a whole number >= 1, not {req.max_tokens!r}")
        try:
            sampler.check_params(req.temperature, req.top_p)
        except (ValueError, TypeError) as e:
            raise ServingError(str(e)) from None
        if not isinstance(req.seed, int) or isinstance(req.seed, bool):
            raise ServingError(f"seed must be a whole number, not {req.seed!r}")
        if not (isinstance(req.stop, (tuple, list))
                and all(isinstance(s, str) and s for s in req.stop)):
            raise ServingError(f"stop must be a tuple of non-empty strings, not {req.stop!r}")
        if req.logprobs is not None and not (isinstance(req.logprobs, int)
                                             and not isinstance(req.logprobs, bool)
                                             and 0 <= req.logprobs <= MAX_LOGPROBS):
            raise ServingError(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, "
                               f"not {req.logprobs!r}")
        if req.skin is not None:
            if not isinstance(req.skin, str) or not req.skin:
                raise ServingError(f"skin must be a non-empty string, not {req.skin!r}")
            if self.engine.skins is None:
                raise ServingError(f"skin {req.skin}: this engine has no skins to wear")
        room = self.engine.seq_capacity - 1
        if len(toks) + req.max_tokens > room:
            raise ServingError(f"{len(toks)} prompt tokens + max_tokens {req.max_tokens} do not "
                               f"fit the {room} tokens a sequence holds")
        return toks

    # -- the loop ------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while self._busy_period():
                pass
        except BaseException as e:  # the context is unusable: every stream learns why
            with self._cond:
                self._failed = e
            for h, _ in self._drop_all():
                h._channel.put(ServingError(f"the scheduler stopped: {e}"))
            return
        for h, a in self._drop_all():
            self._finish_cancelled(h, a)

    def _drop_all(self) -> list[tuple[Handle, _Active | None]]:
        with self._cond:
            waiting, self._pending = list(self._pending), deque()
        running = [(a.handle, a) for a in self._slots if a is not None]
        self._slots = [None] * len(self._slots)
        return running + [(h, None) for h in waiting]

    def _busy_period(self) -> bool:
        """Wait for work, then serve until nothing is running or queued, holding the engine.
        False when the scheduler is closing."""
        with self._cond:
            while not (self._pending or self._closing):
                self._cancels.clear()  # only finished requests can be cancelled while idle
                self._cond.wait()
            if self._closing:
                return False
        eng = self.engine
        with eng._lock:
            ctx = eng.ctx
            ctx.clear()
            self._skin = _UNWORN
            flag = ctx.abort_flag()
            flag.clear()
            try:
                with follow_gate(self.gate, flag, eng._timing, eng.options.abort_poll_s):
                    while True:
                        self._apply_cancels()
                        if self._closing:
                            return False
                        if self.gate is not None and self.gate.paused():
                            self._wait_resumed()
                            continue
                        self._admit()
                        if not any(self._slots):
                            with self._cond:
                                if not self._pending:
                                    return True
                            continue  # the skin switched or a request failed; admit again
                        self._step()
            finally:
                ctx.clear()

    def _wait_resumed(self) -> None:
        """Paused: wait (never release), still answering cancels and close."""
        while self.gate.paused() and not self._closing:
            self.gate.wait_resumed(self.pause_poll_s)
            self._apply_cancels()

    def _apply_cancels(self) -> None:
        with self._cond:
            cancels, self._cancels = self._cancels, []
            for h in cancels:
                if h in self._pending:
                    self._pending.remove(h)
                    h._channel.put(Finished(FINISH_CANCELLED, h.prompt_tokens, 0, "", ()))
        for h in cancels:
            for s, a in enumerate(self._slots):
                if a is not None and a.handle is h:
                    self._slots[s] = None
                    self.engine.ctx.seq_rm(s)
                    self._finish_cancelled(h, a)

    def _finish_cancelled(self, h: Handle, a: _Active | None) -> None:
        text = a.text[:a.sent] if a is not None else ""
        out = tuple(a.out) if a is not None else ()
        h._channel.put(Finished(FINISH_CANCELLED, h.prompt_tokens, len(out), text, out))

    def _admit(self) -> None:
        """Fill free slots with queued requests for the skin worn; switch skins when the batch
        has drained."""
        with self._cond:
            if not self._pending:
                return
            mine = [h for h in self._pending if h.request.skin == self._skin]
            others = [h for h in self._pending if h.request.skin != self._skin]
            # Another skin's request is overdue once it and the skin worn have both waited the
            # limit: each skin keeps the batch for at least that long when it has work.
            overdue = bool(others) and (time.monotonic() - max(others[0]._submitted, self._worn_at)
                                        > self.switch_after_s)
            if not any(self._slots) and others and (overdue or not mine):
                self._cond.release()  # loading an adapter may take a while: submit goes on
                try:
                    self._wear(others[0].request.skin)
                finally:
                    self._cond.acquire()
                return
            if overdue:
                return  # drain, then switch
            for s in range(len(self._slots)):
                if not mine:
                    break
                if self._slots[s] is None:
                    h = mine.pop(0)
                    self._pending.remove(h)
                    self.engine.ctx.seq_rm(s)
                    self._slots[s] = _Active(h, list(h._prompt))

    def _wear(self, skin: str | None) -> None:
        try:
            self.engine._wear(self.engine.ctx, skin)
        except Exception as e:
            self._skin = _UNWORN
            why = str(e) if isinstance(e, ServingError) else f"skin {skin}: {e}"
            with self._cond:
                failed = [h for h in self._pending if h.request.skin == skin]
                for h in failed:
                    self._pending.remove(h)
            for h in failed:  # one exception each: each reader raises its own
                h._channel.put(ServingError(why))
            return
        self._skin = skin
        self._worn_at = time.monotonic()

    def _step(self) -> None:
        """One decode: a token for every generating sequence, prompt chunks in what is left."""
        ctx, slots = self.engine.ctx, self._slots
        taken = run_step(ctx, slots, self.engine.options.prefill_per_step)
        if taken is None:  # aborted by the gate: redone whole on resume
            return
        for s, _, row in taken:
            a = slots[s]
            if row >= 0 and self._next_token(a, ctx.logits(row)):
                slots[s] = None
                ctx.seq_rm(s)

    def _next_token(self, a: _Active, logits: np.ndarray) -> bool:
        """Pick, stream and account for the next token of ``a``; True when it has finished."""
        req, h = a.handle.request, a.handle
        m = h._matcher
        lp, top = None, ()
        if req.logprobs is not None:
            lp_all = _log_softmax(logits)
        if m is not None:
            try:
                mask = m.allowed()
            except Exception as e:  # a broken grammar ends its own request, not the loop
                return self._fail(a, f"the constraint failed: {e}")
            if mask is not None:
                if not mask.any():
                    return self._fail(a, "the constraint allows no next token")
                logits = np.where(mask, logits, -np.inf)
        tok = sampler.pick(logits, req.temperature, req.top_p, req.seed, len(a.out))
        if req.logprobs is not None:
            lp = float(lp_all[tok])
            top = self._top(lp_all, req.logprobs)
        if self.engine.eog[tok]:
            finish = FINISH_STOP
            a.text += a.decoder.decode(b"", final=True)
            if len(a.text) > a.sent:  # text held back for a stop string that never came
                h._channel.put(TokenEvent(a.text[a.sent:], tok, lp, top))
            self._finish(a, finish, len(a.text))
            return True
        a.out.append(tok)
        complete = False
        if m is not None:
            try:
                m.advance(tok)
                complete = m.finished()
            except Exception as e:
                return self._fail(a, f"the constraint failed: {e}")
        finish = None
        if len(a.out) >= req.max_tokens:
            finish = FINISH_LENGTH
        elif complete:
            finish = FINISH_STOP
        a.text += a.decoder.decode(self._piece(tok), final=finish is not None)
        end = _first_stop(a.text, req.stop, a.sent)
        if end is not None:
            finish = FINISH_STOP
        elif finish is not None:
            end = len(a.text)
        else:
            end = len(a.text) - _held(a.text, req.stop, a.sent)
        h._channel.put(TokenEvent(a.text[a.sent:end], tok, lp, top))
        a.sent = max(a.sent, end)
        if finish is None:
            a.feed = [tok]
            return False
        self._finish(a, finish, end)
        return True

    def _fail(self, a: _Active, why: str) -> bool:
        a.handle._channel.put(ServingError(why))
        return True

    def _finish(self, a: _Active, reason: str, end: int) -> None:
        h = a.handle
        h._channel.put(Finished(reason, h.prompt_tokens, len(a.out), a.text[:end], tuple(a.out)))

    def _piece(self, tok: int) -> bytes:
        b = self._piece_text.get(tok)
        if b is None:
            b = self._piece_text[tok] = self.engine.model.piece(tok, special=True)
        return b

    def _top(self, lp_all: np.ndarray, k: int) -> tuple[tuple[str, float], ...]:
        if k == 0:
            return ()
        ids = np.argpartition(-lp_all, k)[:k]
        ids = ids[np.lexsort((ids, -lp_all[ids]))]
        return tuple((self._piece(int(t)).decode("utf-8", "replace"), float(lp_all[t]))
                     for t in ids)


_UNWORN = object()  # no adapter state known yet: the first admission wears what it needs


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    mx = z.max()
    return z - (mx + np.log(np.sum(np.exp(z - mx))))


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the first stop string in ``text`` begins, or None. Text that may begin one is never
    sent, so one can only begin at ``sent`` or later."""
    found = None
    for s in stops:
        i = text.find(s, sent)
        if i >= 0 and (found is None or i < found):
            found = i
    return found


def _held(text: str, stops: tuple[str, ...], sent: int) -> int:
    """How many trailing characters of ``text`` (after ``sent``) may begin a stop string."""
    longest = min(max((len(s) for s in stops), default=0) - 1, len(text) - sent)
    for k in range(longest, 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0
