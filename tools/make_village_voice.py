"""Train, convert and sign the world-tuned village voice from assets/village/village.jsonl.

The village voice is a LoRA adapter on the default base model, trained on the engine's own
examples (tools/make_village_data.py writes them): every villager, every intent, every quest step,
answered in the game's reply format with the fact the engine states. It is bundled and signed like
the demo skins (public demo creator key, bound to the base model's BLAKE3) into
assets/village/bundle/, and the model voice wears it for every villager who wears no skin.

    python tools/make_village_data.py && python tools/make_village_voice.py

Progress goes to the terminal; the bundle is replaced only once the new adapter is trained.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from make_demo_skins import demo_identity  # noqa: E402

from npc.skins.bundle import create_bundle  # noqa: E402
from npc.skins.train import train_lora  # noqa: E402
from npc.store import ModelStore  # noqa: E402

VILLAGE_DIR = ROOT / "assets" / "village"
DATA = VILLAGE_DIR / "village.jsonl"
BUNDLE = VILLAGE_DIR / "bundle"
NAME = "Emberbrook"
DESCRIPTION = ("The village voice: Emberbrook's villagers answering in the game's reply format "
               "with the facts the engine states, trained on the engine's own examples.")
#: About two thirds of a pass over the examples at batch 4 (as long as a demo skin takes).
STEPS = 60
RANK = 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps (default %(default)s)")
    ap.add_argument("--rank", type=int, default=RANK, help="LoRA rank (default %(default)s)")
    args = ap.parse_args(argv)
    models = ModelStore()
    base = models.ensure_default()
    base_path = models.path(base.blake3)
    identity = demo_identity()
    print(f"base {base.name} {base.blake3}\ncreator {identity.public_hex} (public demo key)")
    with tempfile.TemporaryDirectory(prefix="village-voice-") as work:
        result = train_lora(base_path, DATA, Path(work), steps=args.steps, rank=args.rank,
                            progress=True)
        staged = Path(work) / "bundle"
        skin_id = create_bundle(staged, name=NAME, description=DESCRIPTION,
                                adapter_gguf=result.adapter_gguf, peft_dir=result.peft_dir,
                                base_model=base.blake3, identity=identity, training=result.summary,
                                base_gguf=base_path)
        if BUNDLE.exists():
            shutil.rmtree(BUNDLE)
        shutil.copytree(staged, BUNDLE)
    print(f"village voice: {skin_id} ({result.summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
