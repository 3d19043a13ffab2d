"""Train, convert and sign the demo skins listed in assets/skins/demo_skins.toml.

Each skin is trained on its chit-chat (``<dir>.jsonl``, written by hand) and its action examples
(``<dir>.actions.jsonl``, the game's own prompts, written by tools/make_skin_actions.py) with
``npc.skins.train.train_lora`` on the default base model (the base is
loaded once for all of them), converted to a GGUF LoRA, and bundled with ``create_bundle`` into
``assets/skins/bundles/<dir>/``, signed by the public demo creator key in
``assets/skins/demo-creator.key`` and bound to the default base model's BLAKE3. A skin with a
``parent`` is made after its parent, starts training from the parent's weights (as
``hearth skin train --parent`` does) and names the parent's skin id (a remix, with its royalty).

    python tools/make_demo_skins.py                 # every demo skin
    python tools/make_demo_skins.py pirate grump    # just these (a remix needs its parent's bundle)

Rebuilding replaces a bundle only after its new adapter is trained. Skin ids change on every
rebuild (the manifest records when it was made).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402

from npc.skins.bundle import create_bundle, verify_bundle  # noqa: E402
from common.identity import Identity  # noqa: E402
from npc.skins.train import DEFAULT_RANK, train_lora  # noqa: E402
from npc.store import ModelStore  # noqa: E402

SKINS_DIR = ROOT / "assets" / "skins"
BUNDLES_DIR = SKINS_DIR / "bundles"
KEY_FILE = SKINS_DIR / "demo-creator.key"
#: About three passes over a skin's examples: enough for the catchphrase and the actions to carry
#: over to held-out lines (measured by tests/test_skin_training.py); more only costs CPU time.
STEPS = 60


def demo_skins() -> list[dict]:
    return tomllib.loads((SKINS_DIR / "demo_skins.toml").read_text(encoding="utf-8"))["skin"]


def training_files(skin: dict) -> list[Path]:
    """A demo skin's training data: its chit-chat, then its action examples."""
    return [SKINS_DIR / skin["data"], SKINS_DIR / f"{skin['dir']}.actions.jsonl"]


def demo_identity(path: Path = KEY_FILE) -> Identity:
    """The public demo creator: a hex seed after ``#`` comment lines."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    seed = bytes.fromhex(next(ln for ln in lines if ln and not ln.startswith("#")))
    key = SigningKey(seed)
    return Identity(signing_key=key, public_hex=key.verify_key.encode().hex(), path=path)


def main(argv: list[str] | None = None) -> int:
    skins = demo_skins()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", metavar="DIR", help="skins to make (default: all)")
    ap.add_argument("--steps", type=int, default=STEPS,
                    help="training steps of skins that set no `steps` of their own")
    ap.add_argument("--rank", type=int, default=DEFAULT_RANK,
                    help="rank of skins without a parent (a remix keeps its parent's)")
    args = ap.parse_args(argv)
    unknown = set(args.only) - {s["dir"] for s in skins}
    if unknown:
        ap.error(f"unknown demo skins: {', '.join(sorted(unknown))}")

    models = ModelStore()
    base = models.ensure_default()
    base_path = models.path(base.blake3)
    identity = demo_identity()
    print(f"base {base.name} {base.blake3}\ncreator {identity.public_hex} (public demo key)")
    BUNDLES_DIR.mkdir(parents=True, exist_ok=True)
    # Parents first, so a remix can name its parent's (new) id.
    todo = sorted((s for s in skins if not args.only or s["dir"] in args.only),
                  key=lambda s: "parent" in s)
    for skin in todo:
        parent_id = parent_dir = None
        if "parent" in skin:
            parent_dir = BUNDLES_DIR / skin["parent"]
            parent_id = verify_bundle(parent_dir, base_model=base.blake3,
                                      base_gguf=base_path).skin_id
        out = BUNDLES_DIR / skin["dir"]
        with tempfile.TemporaryDirectory(prefix=f"demo-skin-{skin['dir']}-") as work:
            data = Path(work) / "data.jsonl"
            data.write_text("".join(f.read_text(encoding="utf-8").rstrip("\n") + "\n"
                                    for f in training_files(skin)), encoding="utf-8")
            result = train_lora(base_path, data, Path(work),
                                steps=skin.get("steps", args.steps),
                                rank=None if parent_dir else args.rank,
                                progress=True, init_from=parent_dir)
            if out.exists():
                shutil.rmtree(out)
            skin_id = create_bundle(
                out, name=skin["name"], description=skin["description"],
                adapter_gguf=result.adapter_gguf, peft_dir=result.peft_dir,
                base_model=base.blake3, identity=identity, parent=parent_id,
                royalty=float(skin.get("royalty", 0.0)), training=result.summary,
                base_gguf=base_path)
        sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        detail = ", ".join(f"{name} {size / 2**20:.2f} MiB" for name, size in sizes.items()
                           if size > 2**16)
        print(f"{skin['dir']}: {skin_id}  {sum(sizes.values()) / 2**20:.2f} MiB ({detail})"
              + (f"  remix of {parent_id[:16]}…, royalty {skin['royalty']}" if parent_id else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
