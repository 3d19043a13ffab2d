"""Pre-emption through a real window: from a key press or mouse move at the game window to the
last llama.cpp decode call of the window's worker returning.

``hearth play`` runs under a private Xvfb server with ``serve = true`` in worker.toml (away after
``--idle`` seconds, no CPU cap), so the window's own worker (game/window_worker.py) loads the
real default model and serves. A requester process (``hearth jobs submit --peer``, over
127.0.0.1) keeps it busy with a batch of long story requests, submitted again whenever one
finishes. The window's engine writes the start, end and result of every decode call and every
pause it sees to a file (``HEARTH_DECODE_LOG``, npc/serving/engine.py); both processes stamp
with ``time.monotonic()``, the machine-wide CLOCK_MONOTONIC.

Each event: wait until the worker is decoding again, wait a random 0.2-1.2 s more, stamp ``t0``
and send the event through the X server (XTEST, as a keyboard or mouse would): ``key shift`` and
``mousemove_relative`` alternately, written as one line to a running ``xdotool -`` (xdotool reads
its commands from stdin and runs each line as it arrives, so no process start is timed). The
delay is from ``t0`` to the end of the last decode call before the engine's loop parks on the
closed gate; it includes xdotool, the X server, SDL's event queue and the window's frame loop
(the window reads input once a frame). ``t0`` is taken right before the command is written, not
from the X event's own timestamp (pygame does not expose it), so the numbers are an upper bound.
The delay is split at the moment the engine's abort watcher first sees the gate closed: the
window's part (X, SDL, the frame loop) and the engine's part (llama.cpp's abort, or the step
finishing).
Every event that reaches a running generation loop is timed; most land while a decode call is in
flight, the rest between two calls (the loop may then start one more call before the window has
read the event, and that call is aborted); the in-flight ones are also reported alone. An event
sent just as a job ended (no generation loop running, nothing to pre-empt) is counted and left
out. A decode call that starts after the pause and before the player
could be away again is a failure and counted (``late_decodes``).

Last line: ``window_preempt_p99_ms=<N> window_preempt_p50_ms=<N> events=<N> ...``. Timings are
wall time on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Where the window's worker listens (game.window_worker.WINDOW_LISTEN's port).
WORKER_PORT = 7880
TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool"}
TOPICS = ["a lighthouse keeper", "a lost key", "the first snow", "a market day", "a clockmaker",
          "a river crossing", "an old map", "a stubborn goat", "a night train", "a letter home"]


def missing_tools() -> list[str]:
    return [f"{tool} (package {package})" for tool, package in TOOLS.items()
            if shutil.which(tool) is None]


def sealed_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a ``hearth`` child: everything it reads or writes under ``home``."""
    user = home / ".user"
    (user / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin",
                                     "/usr/bin", "/bin"]),
            "PYTHONPATH": str(ROOT), "PYTHONUTF8": "1", "PYTHONUNBUFFERED": "1",
            "HEARTH_HOME": str(home), "HEARTH_CONFIG_DIR": str(home / "config"),
            "HOME": str(user), "XDG_DATA_HOME": str(user / "data"),
            "XDG_CONFIG_HOME": str(user / "config"), "XDG_CACHE_HOME": str(user / "cache"),
            "XDG_STATE_HOME": str(user / "state"), "XDG_RUNTIME_DIR": str(user / "runtime"),
            "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy",
            "PYGAME_HIDE_SUPPORT_PROMPT": "1", **extra}


def requests_file(path: Path, round_: int, n: int, max_tokens: int) -> None:
    """A Batch-format file of long story requests (``round_`` makes each file a new job)."""
    lines = []
    for i in range(n):
        body = {"model": "default", "max_tokens": max_tokens, "messages": [
            {"role": "user", "content": f"Tell a long story about {TOPICS[i % len(TOPICS)]}. "
                                        f"(round {round_}, part {i})"}]}
        lines.append(json.dumps({"custom_id": f"r{round_}-{i}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}))
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Decode:
    start: float
    end: float
    rc: int


class DecodeLog:
    """The window engine's timing log, read as it grows."""

    def __init__(self, path: Path):
        self.path = path
        self.decodes: list[Decode] = []
        self.pauses: list[float] = []
        self.gates: list[float] = []
        #: (index into decodes, pause time): how many decodes came before each pause, in order.
        self.pause_marks: list[tuple[int, float]] = []
        self._offset = 0

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            f.seek(self._offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break
                self._offset += len(line.encode())
                kind, *v = line.split()
                if kind == "decode":
                    self.decodes.append(Decode(float(v[0]), float(v[1]), int(v[2])))
                elif kind == "gate":
                    self.gates.append(float(v[0]))
                elif kind == "paused":
                    self.pauses.append(float(v[0]))
                    self.pause_marks.append((len(self.decodes), float(v[0])))

    def decoding_since(self, t: float) -> bool:
        self.read()
        return any(d.start > t for d in self.decodes[-4:])


@dataclass
class Outcome:
    kind: str
    paused: bool  # a generation loop was running and paused
    in_flight: bool  # a decode call was in flight at t0
    delay_ms: float  # t0 to the end of the last decode call before the pause
    window_ms: float  # t0 to the engine's watcher seeing the gate closed
    aborted: bool  # the last decode call was aborted (llama.cpp's abort flag), not finished
    late_decodes: int  # decode calls started after the pause, before the player could be away


class WindowUnderLoad:
    """Xvfb + ``hearth play`` serving jobs + a requester keeping it busy."""

    def __init__(self, work: Path, idle: float, requests: int, max_tokens: int,
                 log=lambda *_: None):
        self.work, self.idle, self.requests, self.max_tokens = work, idle, requests, max_tokens
        self.log = log
        self.decode_log = DecodeLog(work / "decode.log")
        self.procs: list[subprocess.Popen] = []
        self.stop = threading.Event()
        self.display = ""
        self.window = 0
        self.jobs_done = 0
        self.jobs_from = 0.0
        self.requester_errors: list[str] = []

    def __enter__(self) -> WindowUnderLoad:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def x(self, *args: str, timeout: float = 30) -> str:
        r = subprocess.run(list(args), env={**os.environ, "DISPLAY": self.display},
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def _start(self) -> None:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", WORKER_PORT))
            except OSError as e:
                raise RuntimeError(f"port {WORKER_PORT} (the window's worker) is taken: {e}")
        read, write = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1400x900x24",
                                 "-nolisten", "tcp"], pass_fds=(write,),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        self.procs.append(xvfb)
        with os.fdopen(read) as r:
            number = r.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        self.display = f":{number}"

        home = self.work / "window"
        config = home / "config"
        config.mkdir(parents=True)
        # Answered before: no first-run question; away after `idle` s, whatever else runs.
        (config / "swarm.toml").write_text("public_dht = false\n")
        (config / "worker.toml").write_text(
            f"serve = true\nidle_seconds = {self.idle}\ncpu_cap_percent = 100\n"
            f"release_after = 120\nrun_on_battery = true\n")
        env = sealed_env(home, {"SDL_VIDEODRIVER": "x11", "DISPLAY": self.display,
                                "HEARTH_DECODE_LOG": str(self.decode_log.path)})
        self.game = subprocess.Popen(
            [sys.executable, "-m", "game.cli", "play", "--voice", "scripted", "--no-seed"],
            cwd=ROOT, env=env, stdout=(self.work / "play.out").open("w"),
            stderr=(self.work / "play.err").open("w"))
        self.procs.append(self.game)
        self.window = int(self.x("xdotool", "search", "--sync", "--pid", str(self.game.pid),
                                 timeout=120).split()[0])
        self.x("xdotool", "windowfocus", "--sync", str(self.window))
        self.x("xdotool", "mousemove", "--window", str(self.window), "200", "200")
        self.xdo = subprocess.Popen(["xdotool", "-"], stdin=subprocess.PIPE, text=True,
                                    env={**os.environ, "DISPLAY": self.display})
        self.procs.append(self.xdo)
        self.log(f"window {self.window} on {self.display}; waiting for its worker to serve")
        self._wait_listening(600)
        self.jobs_from = time.monotonic()  # the engine's self-check is over by now
        threading.Thread(target=self._requester, name="requester", daemon=True).start()
        deadline = time.monotonic() + 600
        while not self.decode_log.decoding_since(time.monotonic() - 1.0):
            if time.monotonic() > deadline or self.game.poll() is not None:
                raise RuntimeError("the window's worker never started decoding the job: "
                                   + (self.work / "play.err").read_text()[-2000:]
                                   + "\n".join(self.requester_errors))
            time.sleep(0.2)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.game.poll() is not None:
                raise RuntimeError("hearth play exited: "
                                   + (self.work / "play.err").read_text()[-2000:])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", WORKER_PORT)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError("the window's worker did not start listening")

    def _requester(self) -> None:
        """Submit the job again and again until stopped."""
        home = self.work / "requester"
        round_ = 0
        while not self.stop.is_set():
            req, out = self.work / f"requests{round_}.jsonl", self.work / f"results{round_}.jsonl"
            requests_file(req, round_, self.requests, self.max_tokens)
            p = subprocess.Popen(
                [sys.executable, "-m", "game.cli", "jobs", "submit", str(req), "--model",
                 "default", "--out", str(out), "--peer", f"127.0.0.1:{WORKER_PORT}",
                 "--loopback", "--no-escrow", "--verify-fraction", "0"],
                cwd=ROOT, env=sealed_env(home, {}), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
            self.procs.append(p)
            _, err = p.communicate()
            if p.returncode == 0:
                self.jobs_done += 1
            elif not self.stop.is_set():
                self.requester_errors.append(err[-1000:])
                self.stop.wait(2.0)
            round_ += 1

    def send(self, kind: str, rng: random.Random) -> float:
        """One input event through the X server; the time right before it was handed over."""
        line = ("key shift\n" if kind == "key" else
                f"mousemove_relative -- {rng.choice([4, -4])} 0\n")
        t0 = time.monotonic()
        self.xdo.stdin.write(line)
        self.xdo.stdin.flush()
        return t0

    def event(self, kind: str, rng: random.Random) -> Outcome:
        """Wait for serving, then a random moment, then send ``kind`` and time the pause."""
        log = self.decode_log
        since = time.monotonic()
        deadline = since + 300
        while not log.decoding_since(since):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not resume decoding: "
                                   + "\n".join(self.requester_errors[-2:]))
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.2))
        t0 = self.send(kind, rng)
        deadline = t0 + self.idle + 5
        while True:
            log.read()
            mark = next(((i, t) for i, t in log.pause_marks if t > t0), None)
            if mark is not None:
                break
            if time.monotonic() > deadline:
                # No generation loop was running (a job had just ended): nothing to pre-empt.
                if any(d.start <= t0 <= d.end for d in log.decodes[-64:]):
                    raise RuntimeError(f"a decode call was in flight at the {kind} event, "
                                       f"and the engine never paused")
                return Outcome(kind, False, False, float("nan"), float("nan"), False, 0)
            time.sleep(0.01)
        before, paused_at = mark
        last = log.decodes[before - 1]
        in_flight = any(d.start <= t0 <= d.end for d in log.decodes[max(0, before - 8):before])
        # The player is away again no sooner than `idle` s after the event: any decode call that
        # starts after the pause and before that ignored the gate.
        time.sleep(max(0.0, t0 + self.idle - time.monotonic()))
        log.read()
        late = sum(1 for d in log.decodes[before:] if paused_at < d.start < t0 + self.idle)
        seen = next((g for g in log.gates if g > t0), paused_at)
        return Outcome(kind, True, in_flight, (last.end - t0) * 1000, (seen - t0) * 1000,
                       last.rc == 2, late)

    def close(self) -> None:
        self.stop.set()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile, nearest rank (the value at or above a fraction q of the sample)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 1)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40, help="input events to time (>= 30)")
    ap.add_argument("--idle", type=float, default=1.0,
                    help="worker.toml idle_seconds: away again this long after each event")
    ap.add_argument("--requests", type=int, default=48, help="requests per submitted job")
    ap.add_argument("--max-tokens", type=int, default=256, help="max_tokens of each request")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    missing = missing_tools()
    if missing:
        print("cannot run: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    rng = random.Random(args.seed)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="hearth-preempt-") as tmp, \
            WindowUnderLoad(Path(tmp), args.idle, args.requests, args.max_tokens, log) as w:
        log("serving; sending events")
        for i in range(args.events):
            o = w.event("key" if i % 2 == 0 else "mouse", rng)
            outcomes.append(o)
            log(f"event {i + 1}/{args.events}: {o.kind} "
                f"{'in flight' if o.in_flight else 'between decode calls' if o.paused else 'no job running'} "
                f"{o.delay_ms:.1f} ms (window {o.window_ms:.1f} ms, then engine "
                f"{o.delay_ms - o.window_ms:.1f} ms, {'aborted' if o.aborted else 'finished'})"
                f"{f', {o.late_decodes} late decode call(s)' if o.late_decodes else ''}")
        jobs_done = w.jobs_done
        serving = [d for d in w.decode_log.decodes if d.start > w.jobs_from]
        steps = [(d.end - d.start) * 1000 for d in serving if d.rc == 0]
        aborted = sum(1 for d in serving if d.rc == 2)

    timed = [o for o in outcomes if o.paused]
    delays = [o.delay_ms for o in timed]
    flight = [o.delay_ms for o in timed if o.in_flight]
    window = [o.window_ms for o in timed]
    engine = [o.delay_ms - o.window_ms for o in timed]
    late = sum(o.late_decodes for o in outcomes)
    print(f"events sent: {len(outcomes)} ({sum(o.kind == 'key' for o in outcomes)} key, "
          f"{sum(o.kind == 'mouse' for o in outcomes)} mouse); reached a running generation "
          f"loop: {len(timed)}, of which with a decode call in flight: {len(flight)}; jobs completed by the requester meanwhile: {jobs_done}")
    print(f"decode calls serving the job: {len(steps)} completed, median {statistics.median(steps):.1f} ms, "
          f"p99 {percentile(steps, 0.99):.1f} ms; {aborted} aborted by the gate")
    if not delays:
        print("no event reached a running generation loop", file=sys.stderr)
        return 1
    for kind in ("key", "mouse"):
        k = [o.delay_ms for o in timed if o.kind == kind]
        if k:
            print(f"{kind}: n={len(k)} p50 {statistics.median(k):.1f} ms, max {max(k):.1f} ms")
    print(f"input event -> last decode call returned: p50 {statistics.median(delays):.1f} ms, "
          f"p99 {percentile(delays, 0.99):.1f} ms, max {max(delays):.1f} ms")
    if flight:
        print(f"only the events with a decode call in flight: p50 {statistics.median(flight):.1f} "
              f"ms, p99 {percentile(flight, 0.99):.1f} ms")
    print(f"  the window's part (X, SDL, frame loop -> the engine's watcher sees the gate): "
          f"p50 {statistics.median(window):.1f} ms, p99 {percentile(window, 0.99):.1f} ms")
    print(f"  the engine's part (gate seen -> the decode call returns): "
          f"p50 {statistics.median(engine):.1f} ms, p99 {percentile(engine, 0.99):.1f} ms; "
          f"last call aborted in {sum(o.aborted for o in timed)} of {len(timed)}")
    print(f"decode calls started after the pause while the player was present: {late}")
    print(f"window_preempt_p99_ms={percentile(delays, 0.99):.1f} "
          f"window_preempt_p50_ms={statistics.median(delays):.1f} events={len(delays)} "
          f"late_decodes={late} decode_step_p50_ms={statistics.median(steps):.1f}")
    return 0 if late == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
