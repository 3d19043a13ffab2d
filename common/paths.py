"""Where Hearth keeps its files: one data directory and one config directory per user.

``HEARTH_HOME`` moves the data directory (models, skins, identity, swarm state, saves) and
``HEARTH_CONFIG_DIR`` the config directory (``swarm.toml`` and friends); tests set both so a run
never reads or writes the user's own.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "hearth"


def data_dir() -> Path:
    """The user data directory (override with ``HEARTH_HOME``)."""
    env = os.environ.get("HEARTH_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir(APP, appauthor=False))


def config_dir() -> Path:
    """The user config directory (override with ``HEARTH_CONFIG_DIR``)."""
    env = os.environ.get("HEARTH_CONFIG_DIR")
    return Path(env) if env else Path(platformdirs.user_config_dir(APP, appauthor=False))
