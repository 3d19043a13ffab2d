"""``hearth settings``: the settings screen's entries from the command line (for machines without a
window, or scripts): ``list`` shows them, ``set KEY VALUE`` writes one to its config file."""

from __future__ import annotations

import argparse
from typing import Any

from game.cli_error import CliError
from game.config_files import ConfigFileError, config_path, read_config, write_config
from game.settings_entries import ENTRIES, SETTINGS_FILES, Entry, entry, value_text
from swarm.settings import SettingsError, parse_rate

_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}


def parse_value(e: Entry, text: str) -> Any:
    """The command line's VALUE for entry ``e``: on/off, a rate (0, 512K, 8M) or a whole number."""
    word = text.strip().lower()
    if e.kind == "toggle":
        if word in _ON | _OFF:
            return word in _ON
        raise CliError(f"{e.key} is on or off, not {text!r}")
    if e.kind == "rate":
        if word in ("unlimited", "none"):
            return 0
        try:
            return parse_rate(text)
        except SettingsError as err:
            raise CliError(f"{e.key}: {err}") from None
    kind = type(e.step)  # int, or float for an entry stepped in fractions
    try:
        n = kind(word)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise CliError(f"{e.key} is {what}, not {text!r}") from None
    if not e.low <= n <= e.high:
        raise CliError(f"{e.key} is between {e.low} and {e.high}, not {n}")
    return n


def _read(name: str) -> dict[str, Any]:
    try:
        return read_config(name)
    except ConfigFileError as e:
        raise CliError(str(e)) from None


def cmd_list(args: argparse.Namespace) -> int:
    files = {name: _read(name) for name in SETTINGS_FILES}
    width = max(len(e.key) for e in ENTRIES)
    for e in ENTRIES:
        stored = files[e.file]
        value = stored.get(e.key, e.default)
        origin = e.file if e.key in stored else "default"
        print(f"{e.key:<{width}}  {value_text(e, value):<12}  ({origin})  {e.label}")
    print(f"config directory: {config_path('')}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    try:
        e = entry(args.key)
    except KeyError:
        raise CliError(f"no setting {args.key!r} (settings: {', '.join(x.key for x in ENTRIES)})"
                       ) from None
    contents = _read(e.file)
    contents[e.key] = parse_value(e, args.value)
    spec = SETTINGS_FILES[e.file]
    try:
        spec.check(contents)
        path = write_config(e.file, contents)
    except spec.errors + (ConfigFileError,) as err:
        raise CliError(f"{e.file}: {err}") from None
    print(f"{e.key} = {value_text(e, contents[e.key])}  ({path})")
    return 0


def add_command(sub) -> None:
    """Register ``settings`` on the main parser's subcommands."""
    keys = ", ".join(e.key for e in ENTRIES)
    p = sub.add_parser("settings", help="show or change settings (the window's F2 screen)",
                       description="The settings the window's settings screen (F2) shows, read "
                                   "from and written to the same config files "
                                   f"(settings: {keys}). The public DHT stays off until you set "
                                   "public_dht on.")
    s = p.add_subparsers(dest="settings_command", metavar="ACTION", required=True)
    q = s.add_parser("list", help="every setting, its value and where it comes from",
                     description="Print every setting with its value and the file it is read "
                                 "from (or 'default').")
    q.set_defaults(func=cmd_list)
    q = s.add_parser("set", help="change one setting",
                     description="Write one setting to its config file, checked as the program "
                                 "that reads the file checks it. VALUE is on/off for switches, a "
                                 "rate such as 0 (unlimited), 512K or 8M for limits, or a number "
                                 "within the setting's range.")
    q.add_argument("key", metavar="KEY", help=f"one of: {keys}")
    q.add_argument("value", metavar="VALUE")
    q.set_defaults(func=cmd_set)
