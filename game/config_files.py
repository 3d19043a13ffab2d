"""Reading and rewriting Hearth's flat TOML config files (``swarm.toml``, ``worker.toml``, ...) in
the config directory, for the settings screen and ``hearth settings``.

A file is read whole, the changed keys are replaced, and the file is written back atomically
(``common.files.atomic_write``) with every key it had, so settings the screen does not show are
kept. Only the value types these files use are written: booleans, integers, floats, strings and
lists of strings. Comments in a hand-edited file are not kept.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from common.files import atomic_write
from common.paths import config_dir


class ConfigFileError(Exception):
    """A config file cannot be read or a value cannot be written; the message names the file."""


def config_path(name: str) -> Path:
    return config_dir() / name


def read_config(name: str) -> dict[str, Any]:
    """The file's keys and values ({} if it does not exist)."""
    path = config_path(name)
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(f"{path}: {e}") from None


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (JSON's string escapes are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
    raise ConfigFileError(f"cannot write {value!r} to a config file")


def dump_config(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            raise ConfigFileError(f"cannot rewrite table [{key}]: edit this file by hand")
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_config(name: str, values: dict[str, Any]) -> Path:
    """Replace the file's contents with ``values`` atomically; returns its path."""
    path = config_path(name)
    text = dump_config(values)
    assert tomllib.loads(text) == values, "config writer and reader disagree"
    atomic_write(path, text.encode("utf-8"))
    return path
