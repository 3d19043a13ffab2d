"""Input logs: the initial state, every tick's commands and every tick's state hash.

Replaying a log re-runs ``step`` from the recorded initial state with the recorded commands and
checks the hash after every tick, so any divergence is caught at the tick it happens. Model output
enters the log as ``NpcReply`` commands, so replay needs no model.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine.commands import Command
from engine.hashing import state_digest
from common.files import atomic_write
from engine.sim import step
from engine.state import WorldState, clone

LOG_FORMAT = "hearth-log"
LOG_VERSION = 1


class LogError(Exception):
    pass


class LogTick(msgspec.Struct, array_like=True):
    tick: int
    commands: list[Command]


class InputLog(msgspec.Struct):
    format: str
    version: int
    initial: WorldState
    #: Only ticks that had commands.
    inputs: list[LogTick]
    #: 32-byte BLAKE3 digest of the state after each tick, concatenated (tick order).
    hashes: bytes = b""

    @property
    def ticks(self) -> int:
        return len(self.hashes) // 32


class Recorder:
    """Wraps ``step`` to build an ``InputLog`` as the game runs."""

    def __init__(self, state: WorldState):
        self.log = InputLog(format=LOG_FORMAT, version=LOG_VERSION, initial=clone(state), inputs=[])
        self._hashes = bytearray()
        self._start = state.tick

    def step(self, state: WorldState, commands: list[Command]):
        if state.tick != self._start + len(self._hashes) // 32:
            raise LogError("recorder out of step with the state")
        if commands:
            self.log.inputs.append(LogTick(tick=state.tick, commands=list(commands)))
        state, events = step(state, commands)
        self._hashes += state_digest(state)
        return state, events

    def finish(self) -> InputLog:
        self.log.hashes = bytes(self._hashes)
        return self.log

    def save(self, path: Path | str) -> None:
        atomic_write(path, msgspec.msgpack.encode(self.finish()))


_log_dec = msgspec.msgpack.Decoder(InputLog)


def load_log(path: Path | str) -> InputLog:
    try:
        data = Path(path).read_bytes()
        log = _log_dec.decode(data)
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror})") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise LogError(f"{path}: not a Hearth input log or corrupt ({e})") from None
    if log.format != LOG_FORMAT:
        raise LogError(f"{path}: not a Hearth input log (format {log.format!r})")
    if log.version > LOG_VERSION:
        raise LogError(f"{path}: log version {log.version} is newer than this Hearth understands")
    if len(log.hashes) % 32:
        raise LogError(f"{path}: truncated hash table")
    return log


class ReplayResult(msgspec.Struct):
    ticks: int
    ok: bool
    first_mismatch: int | None
    final_hash: str


def replay(log: InputLog) -> ReplayResult:
    state = clone(log.initial)
    start = state.tick
    inputs = {t.tick: t.commands for t in log.inputs}
    hashes = log.hashes
    n = log.ticks
    for i in range(n):
        state, _ = step(state, inputs.get(start + i, ()))
        if state_digest(state) != hashes[32 * i: 32 * i + 32]:
            return ReplayResult(ticks=i + 1, ok=False, first_mismatch=start + i,
                                final_hash=state_digest(state).hex())
    return ReplayResult(ticks=n, ok=True, first_mismatch=None, final_hash=state_digest(state).hex())
