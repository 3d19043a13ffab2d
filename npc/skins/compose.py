"""One adapter for a stack: a skin worn on top of the village voice costs one LoRA per turn.

A LoRA adds ``s·B·A`` to a weight (``s = alpha / rank``); two stacked add ``s1·B1·A1 + s2·B2·A2``,
which is itself one LoRA of rank ``r1 + r2``: ``A = [A1; A2]`` (rows stacked) and
``B = [f1·B1, f2·B2]`` (columns side by side), where ``f_i = s_i / s`` folds each layer's scale
into its half of ``B`` against the composed adapter's own scale ``s``. llama.cpp then does one pair
of small matrix products per weight instead of one per layer. The sum is the same sum llama.cpp
forms for a stack, only grouped differently; when every folded factor is 1 (the layers share a
scale, as all of Hearth's shipped adapters do) and every tensor is F16, the tensors are copied
unchanged in F16; otherwise they are written in F32 (a folded scale is then rounded at F32 precision only).

Composed files are derived data, made from verified bundles by the adapter pool and kept in its
cache directory under a name made from the layers' ids; a stack whose file is missing or damaged
is simply composed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from npc.skins.convert import write_lora_gguf
from npc.skins.manifest import SkinError

_SUFFIXES = (".lora_a", ".lora_b")


def _read(path: Path) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """(architecture, {weight name: (A as rank x in, B as out x rank)}, alpha)."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise SkinError(f"{path}: cannot read the adapter ({e})") from None

    def field(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    if field("general.type") != "adapter" or field("adapter.type") != "lora":
        raise SkinError(f"{path}: not a LoRA adapter")
    alpha = field("adapter.lora.alpha")
    halves: dict[str, dict[str, np.ndarray]] = {}
    for t in r.tensors:
        base, dot, half = t.name.rpartition(".")
        if not dot or "." + half not in _SUFFIXES:
            raise SkinError(f"{path}: tensor {t.name} is not half of a LoRA pair")
        if t.tensor_type not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            raise SkinError(f"{path}: tensor {t.name} is {t.tensor_type.name}; only F16 and F32 "
                            f"adapters can be composed")
        halves.setdefault(base, {})[half] = np.asarray(t.data)
    pairs = {}
    for base, h in halves.items():
        if set(h) != {"lora_a", "lora_b"}:
            raise SkinError(f"{path}: {base} lacks half of its LoRA pair")
        a, b = h["lora_a"], h["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise SkinError(f"{path}: {base}: lora_a {a.shape} and lora_b {b.shape} do not pair")
        pairs[base] = (a, b)
    return str(field("general.architecture")), pairs, float(alpha or 0.0)


def _scale(alpha: float, rank: int) -> float:
    # llama.cpp's rule: an adapter without alpha is applied at scale 1.
    return alpha / rank if alpha else 1.0


def compose(layers: Sequence[Path | str], out_path: Path | str) -> Path:
    """Write to ``out_path`` the one LoRA adapter equal to ``layers`` (GGUF LoRA files, bottom
    first) worn together. Raises SkinError naming the file when one cannot be read or the layers
    do not fit each other (another architecture, a weight of another shape)."""
    if len(layers) < 2:
        raise ValueError("composing needs at least two adapters")
    read = [(Path(p), *_read(Path(p))) for p in layers]
    arch = read[0][1]
    for path, a, _, _ in read[1:]:
        if a != arch:
            raise SkinError(f"{path}: an adapter for {a}, not {arch} like {read[0][0].name}")
    names = sorted({n for _, _, pairs, _ in read for n in pairs}, key=_order)
    ranks = {n: sum(pairs[n][0].shape[0] for _, _, pairs, _ in read if n in pairs) for n in names}
    # The composed adapter's alpha puts its scale at the first layer's, so equal scales fold to 1.
    _, _, first_pairs, first_alpha = read[0]
    any_pair = next(iter(first_pairs.values()))
    ref = _scale(first_alpha, any_pair[0].shape[0])
    top_rank = max(ranks.values())
    alpha = ref * top_rank
    parts: dict[str, tuple[list, list]] = {n: ([], []) for n in names}
    exact = True
    for path, _, pairs, layer_alpha in read:
        for n, (a, b) in pairs.items():
            shape = _weight_shape(read, n)
            if (b.shape[0], a.shape[1]) != shape:
                raise SkinError(f"{path}: {n} is {b.shape[0]}x{a.shape[1]}, another layer's is "
                                f"{shape[0]}x{shape[1]}")
            fold = _scale(layer_alpha, a.shape[0]) / (alpha / ranks[n])
            exact = exact and fold == 1.0
            parts[n][0].append((a, 1.0))
            parts[n][1].append((b, fold))
    halves_f16 = all(x.dtype == np.float16 for a_parts, b_parts in parts.values()
                     for x, _ in a_parts + b_parts)
    exact = exact and halves_f16
    dtype = np.float16 if exact else np.float32
    tensors = []
    for n in names:
        a_parts, b_parts = parts[n]
        a = np.concatenate([x.astype(dtype) for x, _ in a_parts], axis=0)
        b = np.concatenate([(x.astype(np.float32) * f).astype(dtype) if f != 1.0 else x.astype(dtype)
                            for x, f in b_parts], axis=1)
        tensors += [(n + ".lora_a", np.ascontiguousarray(a)), (n + ".lora_b", np.ascontiguousarray(b))]
    return write_lora_gguf(out_path, arch, alpha, tensors, f16=exact)


def _weight_shape(read, name: str) -> tuple[int, int]:
    for _, _, pairs, _ in read:
        if name in pairs:
            a, b = pairs[name]
            return b.shape[0], a.shape[1]
    raise KeyError(name)


def _order(name: str) -> tuple[int, str]:
    head, _, rest = name.partition(".")
    parts = rest.split(".", 1)
    if head == "blk" and parts[0].isdigit():
        return int(parts[0]), parts[1] if len(parts) > 1 else ""
    return -1, name
