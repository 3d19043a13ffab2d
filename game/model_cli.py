"""``hearth model ...``: the local model store (list, add a GGUF, re-measure, fetch from peers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from game.notices import note
from game.swarm_cli import add_fetch_args, fetch_into_store


def cmd_list(args: argparse.Namespace) -> int:
    from npc.store import ModelStore
    store = ModelStore()
    store.ensure_default()
    recs = store.records()
    if args.json:
        import msgspec
        print(msgspec.json.encode(recs).decode())
        return 0
    for r in recs:
        origin = f"derived from {r.derived_from[:12]}" if r.derived_from else r.source
        print(f"{r.blake3[:16]}  {r.quantization:6s} {r.parameters / 1e6:5.0f}M  "
              f"{r.size / 1e6:6.1f} MB  {r.name}  ({origin})")
    print(f"store: {store.root}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from npc.store import ModelStore
    shown = [0]

    def progress(n: int, total: int) -> None:
        pct = 100 * n // max(1, total)
        if pct >= shown[0] + 10 or n == total:
            shown[0] = pct
            note(f"  hashing {pct}%")
    rec = ModelStore().import_file(args.path, progress=progress)
    print(f"{rec.blake3}  {rec.name} ({rec.architecture}, {rec.parameters / 1e6:.0f}M "
          f"parameters, {rec.quantization})")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from npc.store import ModelStore
    from npc.tuning import choose
    store = ModelStore()
    c = choose(store, store.ensure_default(), force=True, say=print)
    print(f"chosen: {c.quantization} extra_bufts={int(c.use_extra_bufts)} "
          f"threads={c.n_threads} (decode) / {c.n_threads_batch or c.n_threads} (prefill): "
          f"prefill {c.prefill_tps} tok/s, decode {c.decode_tps} tok/s")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    result, ident = fetch_into_store(args, "model")
    print(f"{ident}  fetched and verified ({result.size / 1e6:.1f} MB); added to the model store")
    return 0


def add_commands(sub) -> None:
    """Register ``model`` on the main parser's subcommands."""
    p = sub.add_parser("model", help="the local model store: add a GGUF, list, re-measure, fetch",
                       description="Models live in a content-addressed store in your data "
                                   "directory, each file named by its BLAKE3 hash. The default "
                                   "model is imported from its package on first use.")
    msub = p.add_subparsers(dest="model_cmd", metavar="ACTION", required=True)
    q = msub.add_parser("add", help="import a GGUF model file into the store",
                        description="Check that PATH is a GGUF base model, hash it and copy it "
                                    "into the store; prints its id.")
    q.add_argument("path", type=Path)
    q.set_defaults(func=cmd_add)
    q = msub.add_parser("list", help="list stored models",
                        description="List stored models: id, quantization, size, origin.")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)
    q = msub.add_parser("tune", help="re-measure llama.cpp configurations for this machine",
                        description="Benchmark the shipped and requantized model files with and "
                                    "without llama.cpp's extra buffer types, each in its own "
                                    "process, and record the fastest stable one (done "
                                    "automatically once).")
    q.set_defaults(func=cmd_tune)
    q = msub.add_parser("fetch", help="fetch a base model from peers by magnet link",
                        description="Download a model by magnet link from peers that seed it, "
                                    "check its BLAKE3 against its name and add it to the store.")
    add_fetch_args(q)
    q.set_defaults(func=cmd_fetch)
