"""What the settings screen and ``hearth settings`` show: a list of entries, each one key in one of
the config files the command line reads, and for each file the check its own loader makes.

To show another setting, add its file to ``SETTINGS_FILES`` (once per file, with the function
that reads a whole file the way its loader does and raises on a bad value) and an ``Entry`` to
``ENTRIES``. Both the window and ``hearth settings`` pick it up; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import msgspec

from swarm.jobs.settings import WorkerSettings
from swarm.settings import PUBLIC_DHT_ROUTERS, SettingsError, SwarmSettings

#: toggle: a bool; rate: bytes per second (0 = unlimited) chosen from ``RATE_STEPS``;
#: number: from ``low`` to ``high`` in steps of ``step`` (an int, or a float if ``step`` is one),
#: shown with ``unit``.
Kind = Literal["toggle", "rate", "number"]

#: Upload/download limits the screen steps through (bytes per second; 0 = unlimited).
RATE_STEPS = (0, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20,
              16 << 20)


@dataclass(frozen=True)
class SettingsFile:
    name: str
    #: Reads the file's whole contents as its loader does; raises ``errors`` on a bad value.
    check: Callable[[dict[str, Any]], object]
    errors: tuple[type[Exception], ...]


@dataclass(frozen=True)
class Entry:
    file: str
    key: str
    label: str
    kind: Kind
    default: Any
    #: One or two sentences under the entry: what it does, and what it costs or risks.
    help: str
    low: int | float = 0
    high: int | float = 0
    step: int | float = 1
    unit: str = ""
    #: Asked on the first run (until the key is in its file), with the value off by default.
    first_run: bool = False


def _check_swarm(raw: dict[str, Any]) -> SwarmSettings:
    return msgspec.convert(raw, SwarmSettings)


def _check_worker(raw: dict[str, Any]) -> WorkerSettings:
    return msgspec.convert(raw, WorkerSettings)


SETTINGS_FILES: dict[str, SettingsFile] = {
    "swarm.toml": SettingsFile("swarm.toml", _check_swarm,
                               (msgspec.ValidationError, SettingsError)),
    "worker.toml": SettingsFile("worker.toml", _check_worker,
                                (msgspec.ValidationError, SettingsError)),
}

ENTRIES: list[Entry] = [
    Entry("swarm.toml", "public_dht", "Find other players (public BitTorrent DHT)", "toggle", False,
          "Join the public DHT through the routers BitTorrent clients use ("
          + ", ".join(r.split(":")[0] for r in PUBLIC_DHT_ROUTERS)
          + ") to find players who share models and skins. Off: only nodes listed in swarm.toml.",
          first_run=True),
    Entry("swarm.toml", "seeding", "Share my models and skins", "toggle", True,
          "While the game is open, serve the models and skins you have to players who ask."),
    Entry("swarm.toml", "upload_limit", "Upload limit", "rate", 0,
          "The most the game sends per second to other players."),
    Entry("swarm.toml", "download_limit", "Download limit", "rate", 0,
          "The most the game fetches per second from other players."),
    Entry("worker.toml", "serve", "Serve others' jobs while I'm away", "toggle", False,
          "While you are away from the window, run other players' batch requests on this "
          "machine's model for gold credits. It stops the moment you touch a key.",
          first_run=True),
    Entry("worker.toml", "idle_seconds", "Away after", "number", 180,
          "How long without a key press or mouse move counts as away.",
          low=60, high=1800, step=60, unit="s"),
    Entry("worker.toml", "cpu_cap_percent", "Pause above other programs' CPU", "number", 25,
          "Serving pauses while other programs use more of the machine than this.",
          low=5, high=100, step=5, unit="%"),
    Entry("worker.toml", "run_on_battery", "Serve on battery", "toggle", False,
          "Off: serving pauses while the machine runs on battery."),
]


def entry(key: str) -> Entry:
    for e in ENTRIES:
        if e.key == key:
            return e
    raise KeyError(key)


def value_text(e: Entry, value: Any) -> str:
    if e.kind == "toggle":
        return "on" if value else "off"
    if e.kind == "rate":
        if not value:
            return "unlimited"
        for unit, size in (("MiB/s", 1 << 20), ("KiB/s", 1 << 10)):
            if value >= size:
                return f"{value / size:g} {unit}"
        return f"{value} B/s"
    return f"{value:g} {e.unit}".rstrip()


def stepped(e: Entry, value: Any, direction: int) -> Any:
    """The value one step up (``direction`` 1) or down (-1) from ``value``."""
    if e.kind == "toggle":
        return not value
    if e.kind == "rate":
        steps = list(RATE_STEPS)
        if value not in steps:  # a hand-written limit: step from the nearest preset
            steps = sorted(set(steps) | {value})
        i = steps.index(value) + direction
        return steps[max(0, min(len(steps) - 1, i))]
    # Rounded so float steps (0.1, 0.25) land on the values a person would type.
    return max(e.low, min(e.high, round(value + direction * e.step, 6)))
