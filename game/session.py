"""A running game: the state, the fixed-step tick, and NPC dialogue generated off the game thread.

The game thread owns the state and is the only caller of ``step``. Responders run on a worker
thread and only ever see a ``DialogueRequest`` (an immutable snapshot); their proposals come back
through a queue and are validated and committed on the game thread, so the engine loop never waits
for a model.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field

from engine.commands import Command, Event, NpcReply, Say, TalkStarted
from engine.dialogue import DialogueProposal, DialogueRequest, DialogueTurn, build_request
from engine.replay import Recorder
from engine.sim import step
from engine.state import WorldState
from npc.responder import Responder


@dataclass
class PendingReply:
    turn: DialogueTurn
    cancel: threading.Event = field(default_factory=threading.Event)
    #: The line as it streams in (read by the renderer).
    partial: str = ""


@dataclass
class CompletedTurn:
    npc: str
    words: str
    reply: NpcReply
    attempts: int
    fallback: bool
    rejections: list[str]


class _Worker(threading.Thread):
    def __init__(self, responder: Responder):
        super().__init__(name="hearth-responder", daemon=True)
        self.responder = responder
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()

    def run(self) -> None:
        _lower_priority()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if isinstance(job, DialogueRequest):  # a conversation began: warm its prompt
                prepare = getattr(self.responder, "prepare", None)
                if prepare is not None and self.jobs.empty():
                    try:
                        prepare(job)
                    except Exception as e:  # only a head start: the reply computes it anyway
                        self.results.put((None, e))
                continue
            pending, request, feedback = job
            if pending.cancel.is_set():
                continue

            def sink(text: str, _p=pending) -> None:
                _p.partial = text

            try:
                proposal = self.responder.respond(request, feedback, sink, pending.cancel)
            except Exception as e:  # a broken voice must never take the game down
                proposal = e
            self.results.put((pending, proposal))


def _lower_priority() -> None:
    """Run voices below the game thread: on Linux a thread's nice value is its own and is inherited
    by the compute threads it starts, so llama.cpp uses every idle cycle but yields the CPU to
    the frame loop at once."""
    import os
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class GameSession:
    def __init__(self, state: WorldState, responder: Responder, record: bool = False,
                 max_attempts: int = 3):
        self.state = state
        self.responder = responder
        self.recorder = Recorder(state) if record else None
        self.max_attempts = max_attempts
        self._inputs: list[Command] = []
        self._posted: deque[Command] = deque()  # from other threads
        self.pending: PendingReply | None = None
        self.completed: list[CompletedTurn] = []
        self.responder_errors: list[str] = []
        self._request_after_say = False
        self._worker = _Worker(responder)
        self._worker.start()
        #: Shown in the dialogue panel: what renders the villagers' words right now.
        self.voice_label = _label(responder)

    def set_responder(self, responder: Responder) -> None:
        """Swap the voice (e.g. when the model finishes loading); takes effect from the next reply."""
        self.responder = responder
        self._worker.responder = responder
        self.voice_label = _label(responder)

    def restart(self, state: WorldState) -> None:
        """Play ``state`` from now on (a new game): any reply in progress is dropped, queued input
        is discarded, and a recording starts over from the new state."""
        self.cancel_reply()
        self._inputs.clear()
        self._posted.clear()
        self._request_after_say = False
        self.state = state
        if self.recorder is not None:
            self.recorder = Recorder(state)

    # -- input ---------------------------------------------------------------------------------

    def queue(self, cmd: Command) -> None:
        """Queue a command for the next tick (from the game thread)."""
        self._inputs.append(cmd)

    def post(self, cmd: Command) -> None:
        """Queue a command for the next tick from another thread."""
        self._posted.append(cmd)

    def talk(self, npc_id: str, words: str) -> None:
        """The player says ``words`` to the NPC they are talking to; the reply is generated in the
        background and committed when it arrives (the world keeps ticking meanwhile)."""
        self.cancel_reply()
        self.queue(Say(npc=npc_id, text=words))
        turn = DialogueTurn(npc_id, words, self.max_attempts)
        self.pending = PendingReply(turn=turn)
        self._request_after_say = True

    def cancel_reply(self) -> None:
        if self.pending is not None:
            self.pending.cancel.set()
            self.pending = None

    # -- the tick ------------------------------------------------------------------------------

    def tick(self) -> list[Event]:
        self._collect_replies()
        while self._posted:
            self._inputs.append(self._posted.popleft())
        cmds, self._inputs = self._inputs, []
        if self.recorder is not None:
            self.state, events = self.recorder.step(self.state, cmds)
        else:
            self.state, events = step(self.state, cmds)
        for e in events:
            if isinstance(e, TalkStarted):
                # While the player types, the voice computes the villager's prompt head.
                self._worker.jobs.put(build_request(self.state, e.npc, ""))
        if self._request_after_say and self.pending is not None:
            # The Say is committed now, so the request includes it in the recent turns.
            self._request_after_say = False
            self._submit(self.pending)
        p = self.state.player
        if self.pending is not None and p.talking_to != self.pending.turn.npc_id:
            self.cancel_reply()  # the player walked away
        return events

    def _submit(self, pending: PendingReply) -> None:
        request: DialogueRequest = pending.turn.request(self.state)
        self._worker.jobs.put((pending, request, pending.turn.feedback))

    def _collect_replies(self) -> None:
        while True:
            try:
                pending, proposal = self._worker.results.get_nowait()
            except queue.Empty:
                return
            if pending is None:  # a failed warm-up: noted, the reply will say more if it fails
                self.responder_errors.append(f"prepare: {type(proposal).__name__}: {proposal}")
                continue
            if pending is not self.pending or pending.cancel.is_set():
                continue
            turn = pending.turn
            if isinstance(proposal, Exception):
                self.responder_errors.append(f"{type(proposal).__name__}: {proposal}")
                reply = turn.give_up(self.state)
                turn.attempts += 1
            else:
                reply = turn.offer(self.state, proposal)
            if reply is None:
                pending.partial = ""
                self._submit(pending)
                continue
            self.queue(reply)
            self.completed.append(CompletedTurn(
                npc=turn.npc_id, words=turn.words, reply=reply, attempts=turn.attempts,
                fallback=turn.fallback, rejections=[r.value for r in turn.rejections]))
            self.pending = None

    @property
    def busy(self) -> bool:
        return self.pending is not None or bool(self._inputs)

    def close(self) -> None:
        self.cancel_reply()
        self._worker.jobs.put(None)


def _label(responder: Responder) -> str:
    name = getattr(responder, "name", "")
    return {"model": "local model", "scripted": "scripted lines"}.get(name, name)


def run_turn_sync(state: WorldState, responder: Responder, npc_id: str, words: str,
                  max_attempts: int = 3) -> tuple[WorldState, CompletedTurn, list[Event]]:
    """One dialogue turn without threads (command line, tests): Say, generate, validate, commit."""
    state, events = step(state, [Say(npc=npc_id, text=words)])
    turn = DialogueTurn(npc_id, words, max_attempts)
    reply = None
    while reply is None:
        try:
            proposal: DialogueProposal = responder.respond(turn.request(state), turn.feedback)
        except Exception:
            turn.attempts += 1
            reply = turn.give_up(state)
            break
        reply = turn.offer(state, proposal)
    state, ev2 = step(state, [reply])
    return state, CompletedTurn(npc=npc_id, words=words, reply=reply, attempts=turn.attempts,
                                fallback=turn.fallback,
                                rejections=[r.value for r in turn.rejections]), events + ev2
