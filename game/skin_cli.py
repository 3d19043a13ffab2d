"""``hearth id`` and ``hearth skin ...``: the creator's key, and making, installing, checking and
wearing skins."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from game.cli_error import CliError
from game.notices import note
from game.play_cli import load_or_new
from game.swarm_cli import add_network_args, cmd_skin_install_magnet
from game.swarm_cli import add_skin_commands as add_swarm_skin_commands
from npc.skins.train import DEFAULT_RANK, load_examples

#: A skin's id is shown this long where a table has no room for all 64 digits.
SHORT = 16


def _short(digest: str | None) -> str:
    return digest[:SHORT] if digest else "-"


def _default_base():
    """(model store, record of the default base model), importing the model on first run."""
    from npc.store import ModelStore
    store = ModelStore()
    return store, store.ensure_default()


# ---- hearth id ---------------------------------------------------------------------------------

def cmd_id(args: argparse.Namespace) -> int:
    from common.identity import identity_path, load_or_create_identity
    existed = identity_path().exists()
    ident = load_or_create_identity()
    if args.json:
        print(json.dumps({"public_key": ident.public_hex, "key_file": str(ident.path),
                          "created": not existed}))
        return 0
    if not existed:
        print("Made a new creator identity.")
    print(f"creator public key: {ident.public_hex}")
    print(f"private key file:   {ident.path}")
    print("Back up the key file and keep it private. A lost key cannot be recovered: skins you "
          "make afterwards would carry a new creator key, and anyone holding the file can sign "
          "skins as you.")
    return 0


# ---- hearth skin install / list / verify ---------------------------------------------------------

def cmd_install(args: argparse.Namespace) -> int:
    from npc.skins.bundle import read_signed
    from npc.skins.store import SkinStore

    if args.path.startswith("magnet:"):
        args.magnet = args.path
        return cmd_skin_install_magnet(args)
    path = Path(args.path)
    signed = read_signed(path)
    models, default = _default_base()
    base_file = models.path(signed.manifest.base_model)
    skins = SkinStore()
    already = skins.is_installed(signed.skin_id)
    skin_id = skins.install(path, base_gguf=base_file if base_file.is_file() else None)
    name = signed.manifest.name
    print(f"{'already installed' if already else 'installed'}: {name} {skin_id}")
    if signed.manifest.base_model != default.blake3:
        note(f"note: this skin was made for base model {_short(signed.manifest.base_model)}…, "
             f"not the default model {_short(default.blake3)}…; villagers cannot wear it "
             f"with the default model")
    if not base_file.is_file():
        note("note: its base model is not in your model store, so its tensor shapes were "
             "not checked")
    return 0


def _skin_json(skin) -> dict:
    m = skin.manifest
    return {"id": skin.skin_id, "name": m.name, "description": m.description,
            "creator": m.creator, "base_model": m.base_model, "parent": m.parent,
            "royalty": m.royalty, "license": m.license, "created": m.created,
            "size": skin.size, "path": str(skin.path)}


def cmd_list(args: argparse.Namespace) -> int:
    from npc.skins.store import SkinStore
    skins = SkinStore().list()
    if args.json:
        print(json.dumps([_skin_json(s) for s in skins], ensure_ascii=False))
        return 0
    if not skins:
        print("No skins installed (`hearth skin install DIR` adds one).")
        return 0
    print(f"{'ID':<{SHORT}}  {'NAME':<24}  {'CREATOR':<{SHORT}}  {'PARENT':<{SHORT}}  "
          f"ROYALTY     SIZE")
    for s in skins:
        m = s.manifest
        print(f"{_short(s.skin_id):<{SHORT}}  {m.name[:24]:<24}  {_short(m.creator):<{SHORT}}  "
              f"{_short(m.parent):<{SHORT}}  {m.royalty * 100:6.1f}%  {s.size / 2**20:5.1f}M")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from npc.skins.bundle import verify_bundle
    from npc.skins.store import SkinStore

    models, base = _default_base()
    base_gguf = models.path(base.blake3)
    target = Path(args.target)
    if target.exists():
        verified = verify_bundle(target, base_model=base.blake3, base_gguf=base_gguf)
    elif os.sep in args.target or "/" in args.target:
        raise CliError(f"{target}: no such bundle directory")
    else:
        verified = SkinStore().verify(args.target, base_model=base.blake3, base_gguf=base_gguf)
    print(verified.skin_id)
    return 0


# ---- hearth skin wear --------------------------------------------------------------------------

def cmd_wear(args: argparse.Namespace) -> int:
    from engine.commands import Rejected, WearSkin
    from engine.saves import save_game
    from engine.sim import step
    from npc.skins.store import SkinStore

    state = load_or_new(args.save, args.seed)
    npc = state.npc(args.npc)
    if npc is None:
        raise CliError(f"unknown npc {args.npc!r} "
                       f"(villagers: {', '.join(n.id for n in state.npcs)})")
    if args.skin.lower() == "none":
        skin_id, label = None, "its own voice"
    else:
        models, base = _default_base()
        verified = SkinStore().verify(args.skin, base_model=base.blake3,
                                      base_gguf=models.path(base.blake3))
        skin_id, label = verified.skin_id, f"skin {verified.manifest.name} ({verified.skin_id})"
    state, events = step(state, [WearSkin(npc=args.npc, skin=skin_id)])
    refused = [e for e in events if isinstance(e, Rejected)]
    if refused:
        raise CliError(f"the world refused: {refused[0].reason.value}")
    save_game(args.save, state)
    print(f"{npc.name} now speaks with {label}")
    print(f"saved: {args.save}")
    return 0


# ---- hearth skin lineage -----------------------------------------------------------------------

def _percent(share) -> str:
    return f"{float(share) * 100:.2f}%"


def cmd_lineage(args: argparse.Namespace) -> int:
    from game.wallet_cli import gold, skin_earnings
    from npc.skins.store import SkinStore

    store = SkinStore()
    chain, missing = store.chain(args.skin)
    split = store.royalty_split(chain[0].skin_id) if missing is None else []
    if args.json:
        if missing is not None:
            store.lineage(chain[0].skin_id)  # raises, naming the missing parent
        print(json.dumps({
            "chain": [{"id": s.skin_id, "name": s.manifest.name, "creator": s.manifest.creator,
                       "royalty": s.manifest.royalty, "parent": s.manifest.parent}
                      for s in chain],
            "split": [{"creator": c, "skin": sid, "share": float(share),
                       "fraction": str(share)} for c, sid, share in split],
            "earned": {c: {"settled": a, "pending": b}
                       for c, (a, b) in skin_earnings(chain[0].skin_id).items()},
        }, ensure_ascii=False))
        return 0
    for depth, s in enumerate(chain):
        m = s.manifest
        role = ("original" if m.parent is None
                else f"remix; passes {m.royalty * 100:g}% of its payments to its parent")
        print(f"{'  ' * depth}{m.name}  {s.skin_id}")
        print(f"{'  ' * depth}  by {m.creator}  ({role})")
    if missing is not None:
        print(f"{'  ' * len(chain)}{missing}  (not installed)")
        store.lineage(chain[0].skin_id)  # raises, naming the missing parent
    names = {s.skin_id: s.manifest.name for s in chain}
    by_creator: dict[str, list] = {}
    for creator, sid, share in split:
        by_creator.setdefault(creator, []).append((sid, share))
    print()
    print(f"Of each payment for {chain[0].manifest.name}, per creator:")
    for creator, entries in by_creator.items():
        total = sum(share for _, share in entries)
        detail = ", ".join(f"{names[sid]} {_percent(share)}" if len(entries) > 1 else names[sid]
                           for sid, share in entries)
        print(f"  {_percent(total):>8}  to {creator}  ({detail})")
    earned = skin_earnings(chain[0].skin_id)
    if earned:
        print()
        print(f"Royalties from jobs wearing {chain[0].manifest.name}, in your ledger:")
        for creator, (settled, pending) in earned.items():
            print(f"  {gold(settled + pending):>12} gold to {creator}  "
                  f"({gold(pending)} not yet settled)")
    return 0


# ---- hearth skin train -------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from npc.skins.bundle import check_new_bundle, create_bundle
    from common.identity import load_or_create_identity
    from npc.skins.store import SkinStore
    from npc.store import ModelStore

    # Everything that can be checked is checked before the slow part (training).
    if args.from_scratch and args.parent is None:
        raise CliError("--from-scratch only means something for a remix: give --parent too")
    parent = SkinStore().get(args.parent) if args.parent is not None else None
    check_new_bundle(args.out, name=args.name, royalty=args.royalty,
                     parent=parent.skin_id if parent else None)
    load_examples(args.data)

    models = ModelStore()
    base = models.get(args.base) if args.base else models.ensure_default()
    if base.derived_from:  # a requantization: train on, and bind the skin to, the original
        base = models.get(base.derived_from)
    base_path = models.path(base.blake3)
    if parent is not None:
        if parent.manifest.base_model != base.blake3:
            raise CliError(f"parent skin {parent.manifest.name} was made for base model "
                           f"{_short(parent.manifest.base_model)}…, not {_short(base.blake3)}…")
        if not args.from_scratch:  # its weights are the starting point: check them first
            from npc.skins.bundle import verify_bundle
            verify_bundle(parent.path, base_model=base.blake3, base_gguf=base_path)
    init_from = parent.path if parent is not None and not args.from_scratch else None
    rank = args.rank if args.rank is not None or init_from is not None else DEFAULT_RANK
    from npc.skins.train import train_lora
    identity = load_or_create_identity()
    start = (f"starting from {parent.manifest.name}'s weights" if init_from is not None
             else f"rank {rank}, from scratch")
    note(f"training {args.name!r} on {base.name} ({_short(base.blake3)}…): {args.steps} steps, "
         f"{start}")
    with tempfile.TemporaryDirectory(prefix="hearth-train-") as work:
        try:
            result = train_lora(base_path, args.data, Path(work), steps=args.steps,
                                rank=rank, progress=True, init_from=init_from)
        except ImportError as e:  # torch and peft are imported when training starts
            raise CliError(f"training needs the creator tools (pip install 'hearth[train]'): "
                           f"{e}") from None
        except (ValueError, OSError) as e:
            raise CliError(f"training failed: {e}") from None
        skin_id = create_bundle(
            args.out, name=args.name, description=args.description,
            adapter_gguf=result.adapter_gguf, peft_dir=result.peft_dir, base_model=base.blake3,
            identity=identity, parent=parent.skin_id if parent else None, royalty=args.royalty,
            license=args.license, training=result.summary, base_gguf=base_path)
    note(f"wrote {args.out}, signed by {_short(identity.public_hex)}… "
         f"(`hearth skin install {args.out}` to use it)")
    print(skin_id)
    return 0


# ---- parser ------------------------------------------------------------------------------------

def add_commands(sub) -> None:
    """Register ``id`` and ``skin`` on the main parser's subcommands."""
    p = sub.add_parser("id", help="show your creator identity (the key that signs your skins)",
                       description="Print your creator public key and where its private key "
                                   "file is, making the key on first use. Every skin you make "
                                   "is signed with it, and players see it as the skin's "
                                   "creator. A lost key cannot be recovered.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_id)

    sp = sub.add_parser("skin", help="make, install, check and wear skins (NPC personalities)",
                        description="A skin is a signed bundle holding a LoRA adapter that gives "
                                    "a villager a personality. It is bound to one base model and "
                                    "named by its id (the BLAKE3 hash of its signed manifest).")
    ssub = sp.add_subparsers(dest="skin_command", metavar="SUBCOMMAND")
    sp.set_defaults(func=lambda args: (sp.print_help(), 0)[1])

    p = ssub.add_parser("install", help="verify a skin bundle and add it to your skins",
                        description="Check the bundle completely (signature, every file's "
                                    "hash and size, the adapter against its base model) and "
                                    "copy it into your skin store. Installing a skin twice "
                                    "changes nothing. Given a magnet link, the bundle is "
                                    "fetched from peers through the swarm first, and installed "
                                    "only if it verifies.")
    p.add_argument("path", metavar="PATH_OR_MAGNET",
                   help="a skin bundle directory, or a skin's magnet link (quote it)")
    p.add_argument("--peer", action="append", default=None, metavar="HOST:PORT",
                   help="magnet: also connect to this peer (repeatable)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="magnet: give up after this long")
    add_network_args(p)
    p.set_defaults(func=cmd_install)

    p = ssub.add_parser("list", help="list installed skins",
                        description="List the skins in your skin store: id (shortened; any "
                                    "unique prefix of 4 or more digits works in the other "
                                    "commands), name, creator key, parent skin, royalty and "
                                    "size. --json prints every field in full.")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("verify", help="check a skin bundle or an installed skin",
                        description="Check every file hash, the signature, and that the skin "
                                    "fits the default base model. Prints only the skin id and "
                                    "exits 0 when everything matches; otherwise exits 2 and "
                                    "says what is wrong.")
    p.add_argument("target", metavar="PATH_OR_ID",
                   help="a bundle directory, or an installed skin's id (or unique prefix)")
    p.set_defaults(func=cmd_verify)

    p = ssub.add_parser("wear", help="put a skin on a villager in a save",
                        description="Load the save (or start a new game there), put the "
                                    "installed skin on the villager through the game's rules, "
                                    "and write the save. The skin must verify against the "
                                    "default base model. SKIN_ID `none` takes the skin off.")
    p.add_argument("npc", metavar="NPC_ID", help="villager id (bram, hilda, maren, tobin)")
    p.add_argument("skin", metavar="SKIN_ID", help="an installed skin's id or unique prefix, "
                                                   "or `none`")
    p.add_argument("--save", type=Path, required=True, metavar="FILE")
    p.add_argument("--seed", type=int, default=1, help="seed if a new game is created (default 1)")
    p.set_defaults(func=cmd_wear)

    p = ssub.add_parser("lineage", help="show who a skin remixes and how its payments split",
                        description="Follow a skin's parents back to the original, and show "
                                    "what share of a payment for using the skin goes to each "
                                    "creator: each remix keeps (1 - royalty) of what reaches "
                                    "it and passes the rest to its parent.")
    p.add_argument("skin", metavar="ID", help="an installed skin's id or unique prefix")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_lineage)

    p = ssub.add_parser("train", help="train a skin from example dialogue and sign it",
                        description="Train a LoRA adapter on the base model from a JSONL file "
                                    "of example dialogue (on the CPU; needs the creator tools, "
                                    "pip install 'hearth[train]'), convert it for llama.cpp, "
                                    "and write a bundle signed with your creator key (see "
                                    "`hearth id`). Prints the new skin id.")
    p.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl",
                   help="training examples, one JSON object per line")
    p.add_argument("--name", required=True, help="the skin's name")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where to write the bundle (a new directory)")
    p.add_argument("--base", default=None, metavar="ID",
                   help="base model hash or prefix in the model store (default: the default "
                        "model)")
    p.add_argument("--parent", default=None, metavar="SKIN_ID",
                   help="the installed skin this one remixes: training starts from its "
                        "weights (and keeps its rank), and the new skin names it as parent")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --parent: train fresh weights, naming the parent only as lineage")
    p.add_argument("--royalty", type=float, default=0.0, metavar="R",
                   help="share (0 to 1) of each payment for this skin passed to the parent "
                        "(default 0)")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--rank", type=int, default=None,
                   help=f"LoRA rank (default {DEFAULT_RANK}; a remix keeps its parent's)")
    p.add_argument("--description", default="", metavar="TEXT", help="what the skin is like")
    p.add_argument("--license", default="CC-BY-4.0", help="license of the skin (default "
                                                          "CC-BY-4.0)")
    p.set_defaults(func=cmd_train)

    add_swarm_skin_commands(ssub)
