import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


_MODULE_MARKS = re.compile(r"^pytestmark\s*=\s*(.*)$", re.M)


def pytest_ignore_collect(collection_path: Path, config):
    """Under ``-m``, a test file whose module-level marks alone leave every test in it
    deselected (``pytestmark = [pytest.mark.model, ...]`` under ``-m "not model"``) is not even
    imported: ``make test-fast`` skips importing the model-only files' heavy imports. Exact:
    the file is skipped only if no combination of the other names the expression mentions
    could select one of its tests."""
    expr = config.option.markexpr
    if not expr or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    found = _MODULE_MARKS.search(collection_path.read_text(encoding="utf-8"))
    if found is None:
        return None
    marks = set(re.findall(r"pytest\.mark\.(\w+)", found.group(1)))
    if not marks:
        return None
    from _pytest.mark.expression import Expression
    compiled = Expression.compile(expr)
    others = sorted(set(re.findall(r"\w+", expr)) - {"and", "or", "not"} - marks)
    for bits in range(1 << len(others)):
        present = marks | {name for i, name in enumerate(others) if bits >> i & 1}
        if compiled.evaluate(lambda name, **_: name in present):
            return None
    return True


def sealed_env(home: Path, config: Path | None = None, env: dict[str, str] | None = None) -> dict:
    """The whole environment of a ``hearth`` child process, built from nothing: Hearth's data and
    config directories, the user's home and XDG directories all under the test's ``home``, SDL's
    dummy drivers, this checkout on the import path. Nothing of the user's own environment is
    inherited, so no real data, config or setting can reach the child; ``env`` adds or overrides
    variables a test needs (``PYTHONHASHSEED``, ``PYTHONUNBUFFERED``)."""
    home = Path(home)
    user = home / ".user"  # HOME and XDG_*: whatever a library writes there stays in the test
    sealed = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin",
                                 "/bin"]),
        "PYTHONPATH": str(ROOT),
        "PYTHONUTF8": "1",  # the same text encoding whatever the machine's locale
        "HEARTH_HOME": str(home),
        "HEARTH_CONFIG_DIR": str(config if config is not None else home / "config"),
        "HOME": str(user),
        "XDG_DATA_HOME": str(user / "data"),
        "XDG_CONFIG_HOME": str(user / "config"),
        "XDG_CACHE_HOME": str(user / "cache"),
        "XDG_STATE_HOME": str(user / "state"),
        "XDG_RUNTIME_DIR": str(user / "runtime"),
        "SDL_VIDEODRIVER": "dummy",
        "SDL_AUDIODRIVER": "dummy",
        "PYGAME_HIDE_SUPPORT_PROMPT": "1",
    }
    (user / "runtime").mkdir(parents=True, exist_ok=True, mode=0o700)
    return {**sealed, **(env or {})}


def hearth(*args, home: Path, config: Path | None = None, timeout: float = 600,
           input: str | None = None, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """Run ``hearth ARGS`` (``python -m game.cli``) in a sealed environment (``sealed_env``) and
    wait for it: stdout and stderr captured as text. The default timeout leaves room for a first
    run that imports and tunes the model."""
    return subprocess.run([sys.executable, "-m", "game.cli", *map(str, args)], cwd=ROOT,
                          env=sealed_env(home, config, env), input=input, capture_output=True,
                          text=True, timeout=timeout)


def hearth_popen(*args, home: Path, config: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``hearth ARGS`` in the background in a sealed environment (``sealed_env``), stdout and
    stderr piped as text; the caller stops and waits for it."""
    return subprocess.Popen([sys.executable, "-m", "game.cli", *map(str, args)], cwd=ROOT,
                            env=sealed_env(home, config, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def hearth_here(capsys, *args) -> subprocess.CompletedProcess:
    """Run ``hearth ARGS`` in the test process (``game.cli.main``) with its output captured by
    ``capsys``, as ``hearth`` would return it. The process's data and config directories are the
    session's (``sealed_dirs``), so this is the same command on the same ``hearth_home``: for the
    further steps of a test whose first step runs ``hearth`` as its own process, where another
    interpreter start (and, for training, another torch import and model load) shows nothing new."""
    from game.cli import main
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for a parser and every subcommand under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def help_names(parser: argparse.ArgumentParser) -> set[str]:
    """What a parser's ``--help`` must name: every option string, every positional's metavar and
    every subcommand."""
    names = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            names |= set(action.choices)
        elif action.option_strings:
            names |= set(action.option_strings)
        else:
            names.add(action.metavar or action.dest)
    return names


@pytest.fixture
def world():
    from engine.world import new_game
    return new_game(seed=1)


def world_totals(state):
    """(goods by item, gold) held by the player and every NPC together: the books rules keep."""
    from engine.books import world_totals as totals
    return totals(state)


def place_player_near(state, npc_id):
    """Put the player on a free walkable tile next to an NPC and open the conversation."""
    from engine.commands import Interact
    from engine.sim import step
    from engine.world import free_tile_beside
    tile = free_tile_beside(state, npc_id)
    if tile is not None:
        state.player.x, state.player.y = tile
        state.player.from_x, state.player.from_y = tile
    state, events = step(state, [Interact(npc=npc_id)])
    assert state.player.talking_to == npc_id, events
    return state


@pytest.fixture(scope="session")
def hearth_home(tmp_path_factory):
    """A user data directory for the whole test session (the model store, tuning records)."""
    return tmp_path_factory.mktemp("hearth-home")


@pytest.fixture(scope="session", autouse=True)
def sealed_dirs(hearth_home):
    """The test process itself reads and writes Hearth's data and config directories under the
    session's temp directory, never the user's own."""
    saved = {k: os.environ.get(k) for k in ("HEARTH_HOME", "HEARTH_CONFIG_DIR")}
    os.environ["HEARTH_HOME"] = str(hearth_home)
    os.environ["HEARTH_CONFIG_DIR"] = str(hearth_home / "config")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def model_voice(hearth_home):
    """The real default model, imported, tuned and loaded exactly as the game does it."""
    from game.voices import load_model_voice
    lines = []
    voice = load_model_voice(say=lines.append)
    voice.tuning_log = lines
    yield voice
    voice.runtime.close()
