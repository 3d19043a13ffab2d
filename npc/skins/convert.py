"""PEFT LoRA adapter -> GGUF LoRA adapter, the file llama.cpp loads.

The output is what llama.cpp's own ``convert_lora_to_gguf.py`` writes for a llama model:
``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, the base model's
``general.architecture``, and for each adapted projection a pair of tensors
``blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a|lora_b``.
In numpy (and PEFT) terms A is (r, in) and B is (out, r); the GGUF writer stores each shape
reversed, as ggml counts dimensions fastest-first.

The llama q/k row permutation: llama.cpp's converter reorders the rows of ``q_proj`` and
``k_proj`` so that each head's rotary pairs are interleaved (ggml's rope) rather than split into
halves (Hugging Face's). Transformers undoes that permutation when it loads a GGUF, so a LoRA
trained on a GGUF base in PyTorch lives in Hugging Face order and its B matrices for q and k must
get the same row permutation as the base weights did (A is untouched: it acts on the input side).
``permute_qk=False`` skips it, which only exists so a test can show that the skip is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from common.files import fsync_dir
from npc.gguf_info import GGUFError, read_gguf
from npc.skins.manifest import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, SkinError

#: Hugging Face llama module name -> GGUF tensor name inside ``blk.N``.
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
#: Architectures whose GGUF q/k rows are permuted relative to Hugging Face's.
PERMUTED_ARCHS = {"llama"}

_PEFT_NAME = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
    r"\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` on the output rows of ``w`` (a weight, or a LoRA B)."""
    if w.shape[0] % (2 * n_head):
        raise SkinError(f"cannot permute {w.shape[0]} rows over {n_head} heads")
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensor_name(peft_name: str) -> tuple[str, str]:
    """(GGUF base tensor name, "a" or "b") for a PEFT LoRA tensor name; SkinError otherwise."""
    m = _PEFT_NAME.match(peft_name)
    if m is None:
        raise SkinError(f"{peft_name}: not a LoRA tensor of a llama projection (Hearth converts "
                        f"LoRA on q/k/v/o and gate/up/down only)")
    layer, module, half = m.groups()
    return f"blk.{layer}.{HF_TO_GGUF[module]}.weight", half.lower()


def read_peft(peft_dir: Path | str) -> tuple[dict, dict[str, np.ndarray]]:
    """The adapter config and the LoRA tensors (numpy, as stored) of a PEFT adapter directory."""
    from safetensors.numpy import load_file

    peft_dir = Path(peft_dir)
    cfg_path, w_path = peft_dir / PEFT_CONFIG_FILE, peft_dir / PEFT_WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SkinError(f"{p}: no such file")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SkinError(f"{cfg_path}: not a PEFT adapter config ({e})") from None
    try:
        tensors = load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise SkinError(f"{w_path}: not a safetensors file ({e})") from None
    return config, tensors


def _alpha(config: dict, where: Path) -> float:
    if config.get("peft_type", "LORA") != "LORA":
        raise SkinError(f"{where}: peft_type {config.get('peft_type')!r}, expected 'LORA'")
    if config.get("use_dora"):
        raise SkinError(f"{where}: DoRA adapters cannot be converted (llama.cpp applies plain "
                        f"LoRA)")
    if config.get("alpha_pattern"):
        raise SkinError(f"{where}: per-module alpha (alpha_pattern) cannot be converted: a GGUF "
                        f"adapter has one alpha")
    if config.get("bias", "none") != "none":
        raise SkinError(f"{where}: trained biases cannot be converted (bias must be 'none')")
    try:
        alpha, rank = float(config["lora_alpha"]), int(config["r"])
    except (KeyError, TypeError, ValueError):
        raise SkinError(f"{where}: needs numeric 'lora_alpha' and 'r'") from None
    if config.get("use_rslora"):
        # PEFT scales by alpha / sqrt(r), llama.cpp by alpha / r: fold the difference into alpha.
        # (Exact for every tensor of rank r; a rank_pattern would need an alpha per tensor.)
        if config.get("rank_pattern"):
            raise SkinError(f"{where}: rsLoRA with a rank_pattern cannot be converted")
        alpha *= math.sqrt(rank)
    return alpha


def convert_peft_to_gguf(peft_dir: Path | str, base_gguf: Path | str, out_path: Path | str,
                         permute_qk: bool = True, dtype: str = "f16") -> Path:
    """Write the GGUF LoRA for the PEFT adapter in ``peft_dir`` (trained on ``base_gguf``) to
    ``out_path``. ``dtype`` is "f16" (what llama.cpp's converter writes by default) or "f32"."""
    import gguf

    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype {dtype!r}: expected 'f16' or 'f32'")
    peft_dir, base_gguf, out_path = Path(peft_dir), Path(base_gguf), Path(out_path)
    config, tensors = read_peft(peft_dir)
    alpha = _alpha(config, peft_dir / PEFT_CONFIG_FILE)
    try:
        base = read_gguf(base_gguf)
    except (GGUFError, OSError) as e:
        raise SkinError(f"{base_gguf}: cannot read the base model ({e})") from None
    arch = base.architecture
    shapes = {t.name: tuple(reversed(t.shape)) for t in base.tensors}  # numpy (out, in)
    n_head = base.metadata.get(f"{arch}.attention.head_count")
    n_head_kv = base.metadata.get(f"{arch}.attention.head_count_kv", n_head)
    permute = permute_qk and arch in PERMUTED_ARCHS
    if permute and not isinstance(n_head, int):
        raise SkinError(f"{base_gguf}: no {arch}.attention.head_count, so q/k cannot be permuted")

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        base_name, half = gguf_tensor_name(name)
        pairs.setdefault(base_name, {})[half] = t
    if not pairs:
        raise SkinError(f"{peft_dir / PEFT_WEIGHTS_FILE}: holds no LoRA tensors")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    out: list[tuple[str, np.ndarray]] = []
    for base_name in sorted(pairs, key=_tensor_order):
        pair = pairs[base_name]
        if set(pair) != {"a", "b"}:
            missing = "lora_B" if "a" in pair else "lora_A"
            raise SkinError(f"{peft_dir / PEFT_WEIGHTS_FILE}: {base_name}: {missing} is missing")
        a, b = pair["a"].astype(np.float32), pair["b"].astype(np.float32)
        w = shapes.get(base_name)
        if w is None:
            raise SkinError(f"{base_name}: not a tensor of the base model {base_gguf.name}")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or w != (b.shape[0], a.shape[1]):
            raise SkinError(f"{base_name}: lora_A {a.shape} and lora_B {b.shape} do not fit the "
                            f"base weight {w} (out x in)")
        if permute and base_name.endswith(".attn_q.weight"):
            b = llama_permute(b, n_head)
        elif permute and base_name.endswith(".attn_k.weight"):
            b = llama_permute(b, n_head_kv)
        out.append((base_name + ".lora_a", np.ascontiguousarray(a, dtype=np_dtype)))
        out.append((base_name + ".lora_b", np.ascontiguousarray(b, dtype=np_dtype)))

    return write_lora_gguf(out_path, arch, alpha, out, f16=dtype == "f16")


def write_lora_gguf(out_path: Path | str, arch: str, alpha: float,
                    tensors: list[tuple[str, np.ndarray]], *, f16: bool) -> Path:
    """Write a GGUF LoRA adapter as llama.cpp's converter does (``tensors``: (name, numpy array)
    in file order), crash-safely: a partial file is renamed into place once synced."""
    import gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    for name, data in tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(out_path)
    fsync_dir(out_path.parent)
    return out_path


def _tensor_order(name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.(.*)", name)
    return (int(m.group(1)), m.group(2)) if m else (-1, name)
