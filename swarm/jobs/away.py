"""When the window may serve: a pure policy fed what the window observes, and the Gate it drives.

``AwayPolicy.decide`` takes the time of the last keyboard or mouse input, whether the window is
minimised, how much CPU other programs use (psutil, measured by the caller) and whether the machine
runs on battery, and answers serving or paused-and-why. It keeps no clock of its own, so it is
tested with plain numbers. ``SwitchGate`` is the ``Gate`` a worker's backend consults between
decode steps: the window flips it, the backend sees it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarm.jobs.settings import WorkerSettings

# Why serving is paused (or off); the game words these for the side panel.
SERVING = "serving"
OFF = "off"
PLAYER_PRESENT = "player_present"
BUSY_CPU = "busy_cpu"
ON_BATTERY = "on_battery"


@dataclass(frozen=True)
class Observation:
    now: float  # seconds, same clock as last_input
    last_input: float  # when the player last pressed a key or moved the mouse
    minimised: bool
    other_cpu_percent: float  # CPU used by every other program, 0-100 of the whole machine
    on_battery: bool


@dataclass(frozen=True)
class Decision:
    serve: bool
    reason: str  # SERVING, OFF, PLAYER_PRESENT, BUSY_CPU or ON_BATTERY


class AwayPolicy:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings

    def decide(self, o: Observation) -> Decision:
        s = self.settings
        if not s.serve:
            return Decision(False, OFF)
        if o.on_battery and not s.run_on_battery:
            return Decision(False, ON_BATTERY)
        if not o.minimised and o.now - o.last_input < s.idle_seconds:
            return Decision(False, PLAYER_PRESENT)
        if o.other_cpu_percent > s.cpu_cap_percent:
            return Decision(False, BUSY_CPU)
        return Decision(True, SERVING)


class SwitchGate:
    """A Gate that is open or closed as told. ``paused()`` is one attribute read; ``on_change``
    callbacks hear of each change as it is made (the engine's abort flag follows the gate that
    way, with nothing polling it). Paused work waits for the gate to reopen until the pause has
    lasted ``release_after`` seconds (counted from when it closed, however often the waiter
    asks), then is released."""

    def __init__(self, release_after: float, open_: bool = True):
        self.release_after = release_after
        self._open = threading.Event()
        self._closed_at = 0.0
        self._lock = threading.Lock()
        self._followers: list[Callable[[bool], None]] = []
        if open_:
            self._open.set()

    def set_serving(self, serve: bool) -> None:
        with self._lock:
            if serve and not self._open.is_set():
                for fn in self._followers:  # before the waiters wake: nothing aborts their work
                    fn(False)
                self._open.set()
            elif not serve and self._open.is_set():
                self._closed_at = time.monotonic()
                self._open.clear()
                for fn in self._followers:
                    fn(True)

    def on_change(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``fn(paused)`` now and whenever the gate opens or closes, until the returned
        function is called."""
        with self._lock:
            fn(not self._open.is_set())
            self._followers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._followers:
                    self._followers.remove(fn)
        return unsubscribe

    def paused(self) -> bool:
        return not self._open.is_set()

    def wait_resumed(self, timeout: float) -> bool:
        left = self._closed_at + self.release_after - time.monotonic()
        return self._open.wait(max(0.0, min(timeout, left)))


class AlwaysOpen:
    """The dedicated worker's gate: never paused."""

    def paused(self) -> bool:
        return False

    def on_change(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        fn(False)  # and it never changes
        return lambda: None

    def wait_resumed(self, timeout: float) -> bool:
        return True


def other_cpu_percent(own_pid: int | None = None, interval: float = 0.0) -> float:
    """CPU used by every program but this one, as a percent of the whole machine (psutil)."""
    import os

    import psutil

    total = psutil.cpu_percent(interval=interval)
    try:
        own = psutil.Process(own_pid or os.getpid()).cpu_percent(interval=None)
    except psutil.Error:
        own = 0.0
    return max(0.0, total - own / (psutil.cpu_count() or 1))


def on_battery() -> bool:
    import psutil

    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    return battery is not None and not battery.power_plugged

