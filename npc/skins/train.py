"""Training a skin: a PEFT LoRA on the base model, on the CPU, from example dialogue.

Training data is JSON Lines, one example per line::

    {"messages": [{"role": "system", "content": "You are Tobin, the merchant of Emberbrook..."},
                  {"role": "user", "content": "Traveller says: \\"How much for an apple?\\""},
                  {"role": "assistant", "content": "{\\"action\\": \\"none\\", \\"say\\": \\"Arr, one gold, matey.\\"}"}]}

- ``messages`` is a list of chat turns; ``role`` is ``system``, ``user`` or ``assistant`` and
  ``content`` a string. Each example needs at least one assistant turn.
- Assistant turns are the NPC's lines, and only they (with the ``<|im_end|>`` closing each, so
  the NPC learns to stop) are learned: every other token is masked out of the loss. Write them
  in the game's reply format, ``{"action": "none", "say": "..."}``: the game makes the model
  answer in exactly that JSON, so that is where the skin has to show.
  A ``say`` line the game could speak has no double quotes or backslashes, at most two
  sentences and about 160 characters.
- User turns are best written the way the game writes the player's words,
  ``Traveller says: "..."``, and a short system turn naming a villager helps the skin carry
  over to the game's longer prompts.
- Turns are rendered with the game's ChatML template (``<|im_start|>role\\n...<|im_end|>\\n``)
  and tokenized the way the game tokenizes them (turn markers as special tokens, contents as
  plain text), so training sees exactly the token sequences the game feeds the model.
- Blank lines are skipped. A missing file, a line that is not JSON, a missing field or an empty
  file is a ``TrainingDataError`` naming the file and line.

The base model is loaded with transformers straight from its GGUF (dequantized to float32, ~35 s
for the default model on two cores, most of it reading the GGUF's metadata). The converted model
and tokenizer are then kept in Hearth's data directory (``cache/training-base``, one base at a
time, ~520 MB for the default model, checked by hash on every load), so the next training run
loads in about a second; and per process, so training several skins in one run loads it once.
Training is AdamW on the LoRA weights only, deterministic for a given seed, with a rich progress
bar on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from common.files import blake3_file, fsync_dir, fsync_file
from npc.skins.manifest import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, TrainingSummary

#: LoRA rank of a new skin. Rank 4 on all seven projections of SmolLM2-135M is 1.2 M
#: parameters: a bundle of about 5 MB (float16 GGUF + float16 PEFT copy), enough to carry a
#: catchphrase and a style (tests/test_skin_training.py measures it).
DEFAULT_RANK = 4
#: The seven llama projections a skin adapts (Hugging Face module names).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROLES = ("system", "user", "assistant")
#: Longest example accepted, in tokens (the game's prompts are well under this).
MAX_EXAMPLE_TOKENS = 2048
IGNORE = -100


class TrainingDataError(ValueError):
    """The training data cannot be used; the message names the file and line."""


@dataclass
class TrainResult:
    adapter_gguf: Path
    #: Holds ``adapter_model.safetensors`` and ``adapter_config.json``.
    peft_dir: Path
    summary: TrainingSummary


# ---- data ---------------------------------------------------------------------------------------

def load_examples(data: Path | str) -> list[list[dict[str, str]]]:
    """Read and check a JSONL training file; returns each example's messages."""
    data = Path(data)
    if not data.is_file():
        raise TrainingDataError(f"{data}: no such file")
    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrainingDataError(f"{data}: not UTF-8 text ({e})") from None
    examples = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{data}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingDataError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from None
        examples.append(_check_example(obj, where))
    if not examples:
        raise TrainingDataError(f"{data}: empty: no training examples (one JSON object per line, "
                                f'each {{"messages": [...]}})')
    return examples


def _check_example(obj, where: str) -> list[dict[str, str]]:
    if not isinstance(obj, dict):
        raise TrainingDataError(f'{where}: expected a JSON object {{"messages": [...]}}, '
                                f"got {type(obj).__name__}")
    if "messages" not in obj:
        raise TrainingDataError(f'{where}: missing field "messages"')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f'{where}: "messages" must be a non-empty list of chat turns')
    for i, m in enumerate(messages):
        at = f"{where}, message {i + 1}"
        if not isinstance(m, dict):
            raise TrainingDataError(f'{at}: expected an object {{"role": ..., "content": ...}}')
        for key in ("role", "content"):
            if key not in m:
                raise TrainingDataError(f'{at}: missing field "{key}"')
        if m["role"] not in ROLES:
            raise TrainingDataError(f"{at}: role {m['role']!r} is not one of "
                                    f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TrainingDataError(f'{at}: "content" must be a string')
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainingDataError(f"{where}: no assistant turn, so nothing to learn (assistant "
                                f"turns are the NPC's lines)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_example(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: the ChatML rendering, labels = ids on assistant
    contents and their closing ``<|im_end|>`` (so the NPC learns to stop), IGNORE elsewhere."""
    ids: list[int] = []
    labels: list[int] = []

    def add(text: str, special: bool, learn: bool) -> None:
        # Turn markers are parsed as special tokens; contents are plain text, as in the game.
        toks = tokenizer(text, add_special_tokens=False,
                         split_special_tokens=not special)["input_ids"]
        ids.extend(toks)
        labels.extend(toks if learn else [IGNORE] * len(toks))

    for m in messages:
        learn = m["role"] == "assistant"
        add(f"<|im_start|>{m['role']}\n", True, False)
        add(m["content"], False, learn)
        add("<|im_end|>", True, learn)
        add("\n", False, False)
    return ids, labels


# ---- the base model -----------------------------------------------------------------------------

_BASE_CACHE: dict[tuple[str, int, int], tuple[object, object]] = {}


def _cache_key(base_gguf: Path) -> tuple[str, int, int]:
    st = base_gguf.stat()
    return str(base_gguf.resolve()), st.st_mtime_ns, st.st_size


def is_loaded(base_gguf: Path | str) -> bool:
    return _cache_key(Path(base_gguf)) in _BASE_CACHE


def load_base(base_gguf: Path | str):
    """(model, tokenizer) from a GGUF with transformers: dequantized, float32, CPU. Read from the
    converted copy in the data directory when it holds this GGUF's conversion (made on first
    use), and cached per file for the process; callers get the cached objects and must not
    modify the model."""
    base_gguf = Path(base_gguf)
    key = _cache_key(base_gguf)
    if key not in _BASE_CACHE:
        source = _source_id(base_gguf)
        loaded = read_converted(source)
        if loaded is None:
            loaded = _convert(base_gguf)
            _save_converted(source, *loaded)
        model, tok = loaded
        model.eval()
        _BASE_CACHE.clear()  # one base at a time: each is hundreds of MB in float32
        _BASE_CACHE[key] = (model, tok)
    return _BASE_CACHE[key]


@contextlib.contextmanager
def _quiet_transformers():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    plain_tqdm = gguf_utils.tqdm  # its dequantizing bar ignores transformers' switch
    gguf_utils.tqdm = functools.partial(plain_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = plain_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _convert(base_gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)
        model = AutoModelForCausalLM.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name,
                                                     dtype=torch.float32)
    return model, tok


# ---- the converted base, kept on disk ------------------------------------------------------------
# A directory per conversion: config.json, model.safetensors, the tokenizer's files, and last
# source.json (what was converted, by which transformers, and each file's blake3). The directory
# is written under a temporary name and renamed into place, so it is whole or absent; a copy whose
# files do not match their hashes is ignored (and replaced by the next conversion).

CONVERTED_DIR = "training-base"
SOURCE_FILE = "source.json"


def converted_root() -> Path:
    from common.paths import data_dir
    return data_dir() / "cache" / CONVERTED_DIR


def _source_id(base_gguf: Path) -> dict:
    import transformers
    return {"gguf_blake3": blake3_file(base_gguf), "transformers": transformers.__version__}


def read_converted(source: dict):
    """(model, tokenizer) from the converted copy of ``source`` (``_source_id``), or None when
    there is none or it does not check out."""
    d = converted_root() / source["gguf_blake3"]
    try:
        meta = json.loads((d / SOURCE_FILE).read_text())
        if meta.get("source") != source or not meta.get("files"):
            return None
        for name, digest in meta["files"].items():
            if blake3_file(d / name) != digest:
                return None
    except (OSError, ValueError):
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    return model, tok


def _save_converted(source: dict, model, tok) -> None:
    """Keep ``model`` and ``tok`` as ``source``'s converted copy, in place of any other. A copy
    that cannot be written (a full disk) is skipped: training goes on without it."""
    import shutil
    import tempfile

    from safetensors.torch import save_model

    root = converted_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            config = model.config.to_dict()
            config.pop("quantization_config", None)  # the GGUF it came from, not this copy's
            config.pop("_name_or_path", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            save_model(model, str(tmp / "model.safetensors"))
            tok.save_pretrained(tmp)
            files = {p.name: blake3_file(p) for p in sorted(tmp.iterdir())}
            (tmp / SOURCE_FILE).write_text(json.dumps({"source": source, "files": files}))
            for p in tmp.iterdir():
                fsync_file(p)
            fsync_dir(tmp)
            for old in root.iterdir():  # one base at a time (and leftovers of interrupted runs)
                if old != tmp:
                    shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, root / source["gguf_blake3"])
            fsync_dir(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        return


# ---- training -----------------------------------------------------------------------------------

def _progress(enabled: bool, steps: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
        TimeRemainingColumn,
    )
    return Progress(TextColumn("[bold]training[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def _batches(n_examples: int, batch_size: int, steps: int, seed: int):
    """``steps`` batches of example indices: shuffled epochs, reshuffled each epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < min(batch_size, n_examples):
            if not order:
                order = list(range(n_examples))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


def _loss(causal, ids, mask, labels):
    """Mean next-token cross-entropy over the learned positions. The vocabulary projection (a
    fifth of the model) runs only where a label is learned, not over the whole context."""
    import torch.nn.functional as F

    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    learned = target != IGNORE
    logits = causal.lm_head(hidden[learned])
    return F.cross_entropy(logits.float(), target[learned])


def parent_lora(peft_dir: Path | str) -> tuple[int, float, list[str]]:
    """(rank, alpha, target modules) of a parent skin's PEFT adapter, which a remix starts
    from; ValueError naming the problem when it is not a LoRA this trainer can continue."""
    peft_dir = Path(peft_dir)
    try:
        cfg = json.loads((peft_dir / PEFT_CONFIG_FILE).read_text(encoding="utf-8"))
        rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
        targets = sorted(cfg["target_modules"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{peft_dir / PEFT_CONFIG_FILE}: not a usable PEFT LoRA config "
                         f"({e})") from None
    if not (peft_dir / PEFT_WEIGHTS_FILE).is_file():
        raise ValueError(f"{peft_dir}: no {PEFT_WEIGHTS_FILE}")
    if rank < 1 or not set(targets) <= set(TARGET_MODULES):
        raise ValueError(f"{peft_dir}: rank {rank}, targets {targets}: a remix can only "
                         f"continue a LoRA of rank >= 1 on {', '.join(TARGET_MODULES)}")
    return rank, alpha, targets


def train_lora(base_gguf: Path, data: Path, work_dir: Path, *, steps: int, rank: int | None,
               progress: bool = True, alpha: float | None = None, lr: float = 2e-3,
               batch_size: int = 4, seed: int = 0,
               init_from: Path | str | None = None) -> TrainResult:
    """Train a LoRA skin on ``base_gguf`` from the JSONL file ``data``; write the PEFT adapter
    (float16 safetensors) and its GGUF conversion under ``work_dir``.

    ``alpha`` defaults to twice the rank (a scale of 2). The learning rate warms up over the
    first tenth of the steps and decays linearly to a tenth of ``lr``. ``final_loss`` in the
    summary is the mean loss over the last ten steps.

    ``init_from`` is a parent skin's PEFT directory (a remix): training starts from the parent's
    LoRA weights instead of from scratch, with the parent's rank, alpha and target modules
    (``rank``/``alpha`` may be None or must match them)."""
    import torch
    from peft import (LoraConfig, get_peft_model, get_peft_model_state_dict,
                      set_peft_model_state_dict)
    from safetensors.torch import load_file, save_file

    from npc.skins.convert import convert_peft_to_gguf

    targets = list(TARGET_MODULES)
    if init_from is not None:
        p_rank, p_alpha, targets = parent_lora(init_from)
        if rank is not None and rank != p_rank:
            raise ValueError(f"a remix starts from its parent's weights and keeps its rank "
                             f"({p_rank}), not {rank}")
        if alpha is not None and float(alpha) != p_alpha:
            raise ValueError(f"a remix keeps its parent's alpha ({p_alpha}), not {alpha}")
        rank, alpha = p_rank, p_alpha
    if rank is None:
        raise ValueError("rank is needed when not starting from a parent")
    if steps < 1 or rank < 1 or batch_size < 1:
        raise ValueError("steps, rank and batch_size must be at least 1")
    base_gguf, data, work_dir = Path(base_gguf), Path(data), Path(work_dir)
    examples = load_examples(data)  # before the slow model load: bad data fails at once
    alpha = float(2 * rank if alpha is None else alpha)
    t0 = time.perf_counter()
    bar = _progress(progress, steps)
    if progress and not is_loaded(base_gguf):
        bar.console.print(f"loading {base_gguf.name} (converted with transformers the first "
                          f"time: about half a minute)…")
    base, tok = load_base(base_gguf)

    encoded = []
    for i, messages in enumerate(examples):
        ids, labels = encode_example(tok, messages)
        if len(ids) > MAX_EXAMPLE_TOKENS:
            raise TrainingDataError(f"{data}: example {i + 1} is {len(ids)} tokens, longer "
                                    f"than {MAX_EXAMPLE_TOKENS}")
        encoded.append((ids, labels))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                        target_modules=targets, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(copy.deepcopy(base), config)
    if init_from is not None:
        start = {k: v.to(torch.float32)
                 for k, v in load_file(str(Path(init_from) / PEFT_WEIGHTS_FILE)).items()}
        expected = get_peft_model_state_dict(model, save_embedding_layers=False)
        if set(start) != set(expected) or any(start[k].shape != expected[k].shape
                                               for k in expected):
            raise ValueError(f"{init_from}: the parent's LoRA tensors do not fit this base "
                             f"model ({len(start)} tensors, {len(expected)} expected)")
        result = set_peft_model_state_dict(model, start)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{init_from}: parent tensors not used: "
                             f"{sorted(result.unexpected_keys)[:3]}")
    model.train()
    causal = model.get_base_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm
        else 1.0 - 0.9 * (s - warm) / max(1, steps - warm))

    losses: list[float] = []
    with bar:
        task = bar.add_task("train", total=steps, loss="-", rate="-")
        t_loop = time.perf_counter()
        for step, batch in enumerate(_batches(len(encoded), batch_size, steps, seed)):
            width = max(len(encoded[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                x, y = encoded[i]
                ids[row, :len(x)] = torch.tensor(x)
                labels[row, :len(y)] = torch.tensor(y)
                mask[row, :len(x)] = 1
            loss = _loss(causal, ids, mask, labels)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise ValueError(f"training diverged at step {step + 1} (loss {losses[-1]}); "
                                 f"try a lower learning rate")
            rate = (step + 1) / (time.perf_counter() - t_loop)
            bar.update(task, advance=1, loss=f"{losses[-1]:.3f}", rate=f"{rate:.2f}")

    work_dir.mkdir(parents=True, exist_ok=True)
    peft_dir = work_dir / "peft"
    peft_dir.mkdir(exist_ok=True)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()},
              str(peft_dir / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    cfg = model.peft_config["default"]
    cfg.base_model_name_or_path = None  # the base is a GGUF, bound by hash in the skin manifest
    cfg.inference_mode = True
    cfg.save_pretrained(str(peft_dir))
    assert (peft_dir / PEFT_CONFIG_FILE).is_file()
    adapter_gguf = convert_peft_to_gguf(peft_dir, base_gguf, work_dir / "adapter.gguf")
    tail = losses[-10:]
    summary = TrainingSummary(steps=steps, rank=rank, alpha=alpha,
                              target_modules=list(targets), examples=len(examples),
                              final_loss=round(sum(tail) / len(tail), 4),
                              seconds=round(time.perf_counter() - t0, 1))
    if progress:
        size = sum(p.stat().st_size for p in (adapter_gguf, peft_dir / PEFT_WEIGHTS_FILE))
        bar.console.print(f"trained {len(examples)} examples, {steps} steps, final loss "
                          f"{summary.final_loss}, {summary.seconds:.0f} s; adapter "
                          f"{size / 2**20:.1f} MiB (GGUF + PEFT)")
    return TrainResult(adapter_gguf=adapter_gguf, peft_dir=peft_dir, summary=summary)
