"""The worker's settings: ``worker.toml`` beside ``swarm.toml`` in Hearth's config directory.

```toml
serve = true             # the off switch: false and the window never serves
idle_seconds = 180       # no keyboard or mouse input this long = away
cpu_cap_percent = 25     # pause while other programs use more CPU than this
run_on_battery = false
release_after = 30       # paused this long, a shard goes back to its requester
price_per_1k = 100       # micro-gold per 1,000 tokens (prompt and generated)
capacity = 8             # requests decoded at once (the offer says so)
require_escrow = false   # true: work only for gold the requester locked in escrow
fetch_skins = true       # fetch a skin a shard names from the swarm when it is not installed
max_skin_mb = 64         # the largest skin bundle fetched
```

``require_escrow`` is off by default so a worker without a chain to check escrows on can still
serve; an escrow a requester does name is checked whenever the worker can reach the chain.

The defaults follow BOINC's: run only when the user is away for three minutes and the machine is
otherwise quiet.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.paths import config_dir
from swarm.settings import SettingsError, load_toml

CONFIG_FILE = "worker.toml"


class WorkerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    serve: bool = True
    idle_seconds: float = 180.0
    cpu_cap_percent: float = 25.0
    run_on_battery: bool = False
    release_after: float = 30.0
    price_per_1k: int = 100
    capacity: int = 8
    require_escrow: bool = False
    fetch_skins: bool = True
    max_skin_mb: int = 64

    def __post_init__(self) -> None:
        if self.idle_seconds < 0:
            raise SettingsError("idle_seconds cannot be negative")
        if not 0 < self.cpu_cap_percent <= 100:
            raise SettingsError("cpu_cap_percent must be more than 0 and at most 100")
        if self.release_after <= 0:
            raise SettingsError("release_after must be positive")
        if self.price_per_1k < 0:
            raise SettingsError("price_per_1k cannot be negative")
        if not 1 <= self.capacity <= 4096:
            raise SettingsError("capacity must be from 1 to 4096")
        if not 1 <= self.max_skin_mb <= 4096:
            raise SettingsError("max_skin_mb must be from 1 to 4096")


def load_worker_settings(path: Path | None = None, **overrides) -> WorkerSettings:
    """Settings from ``path`` (default: ``worker.toml`` in the config directory, if it exists),
    then ``overrides`` (None means not given)."""
    return load_toml(path or config_dir() / CONFIG_FILE, WorkerSettings, overrides)
