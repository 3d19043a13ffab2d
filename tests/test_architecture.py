"""The layering rule, made executable: game -> {npc, swarm} -> engine -> common, and a pure engine."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> top-level modules it must never import
FORBIDDEN = {
    "common": {"engine", "game", "npc", "swarm", "pygame", "llama_cpp", "zmq", "libtorrent", "torch"},
    "engine": {"game", "npc", "swarm", "pygame", "llama_cpp", "zmq", "libtorrent", "torch",
               "random", "time", "datetime", "threading", "socket", "os"},
    "npc": {"game", "swarm", "pygame", "zmq", "libtorrent"},
    "swarm": {"game", "npc", "pygame"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    bad = []
    for f in files:
        hit = imports_of(f) & FORBIDDEN[package]
        if hit:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_walker_catches_a_violation(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import pygame\nfrom game.cli import main\n")
    assert {"pygame", "game"} <= imports_of(f)


def test_engine_runs_without_forbidden_modules_loaded():
    import subprocess
    import sys
    # (`random` is not checked here: the standard library's tempfile loads it; the AST check above
    # keeps engine code itself off it.)
    code = ("import sys; import engine, engine.sim, engine.saves, engine.replay, engine.dialogue; "
            "from engine.world import new_game; from engine.sim import step; s = new_game(1); "
            "[step(s, []) for _ in range(100)]; "
            "bad = [m for m in ('pygame', 'llama_cpp', 'zmq', 'libtorrent', 'torch') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
