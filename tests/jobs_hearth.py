"""Run ``hearth`` with the deterministic test backend in place of the model engine:
``python tests/jobs_hearth.py BACKEND ARGS...`` where BACKEND is ``honest``, ``cheat:KIND`` or
``slow:SECONDS`` (seconds per request), with ``+skins`` appended for a worker that fetches skins
(checked against the real default base model, installed in the real skin store). Everything else
is the real command line."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import game.jobs_cli as jobs_cli  # noqa: E402
from game.cli import main  # noqa: E402
from jobs_backend import HashBackend  # noqa: E402


def backend_from(spec: str) -> HashBackend:
    spec, plus, extra = spec.partition("+")
    assert extra == ("skins" if plus else ""), extra
    backend = _backend(spec)
    if extra:
        backend.skin_checks = _skin_checks
    return backend


def _skin_checks():
    from game.jobs_backend import skin_checks
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    return skin_checks(SkinStore(), ModelStore().ensure_default().blake3)


def _backend(spec: str) -> HashBackend:
    kind, _, value = spec.partition(":")
    if kind == "cheat":
        return HashBackend(cheat=value)
    if kind == "slow":
        return HashBackend(step_seconds=float(value))
    assert kind == "honest", spec
    return HashBackend()


if __name__ == "__main__":
    backend = backend_from(sys.argv[1])
    jobs_cli.make_backend = lambda model: backend
    sys.exit(main(sys.argv[2:]))
