"""Skin training and conversion, on the real default base model and the shipped demo skins.

- training data: the format's checks, and the demo data fits what the game can say;
- the trainer tokenizes exactly as the game does, and is deterministic for a seed;
- the converter: names, shapes and the llama q/k permutation against a direct re-implementation;
- agreement: llama.cpp (Q4_1 base + the bundle's GGUF adapter) and PyTorch (transformers on the
  same GGUF + the bundle's PEFT adapter) give the same next-token logits, and an adapter converted
  without the q/k permutation measurably does not;
- effect: each demo skin's catchphrase shows up on player lines it never saw, through the game's
  own voice (ModelVoice + AdapterPool + Runtime + reply grammar), and not without the skin;
- `hearth skin train` end to end, its bundle accepted by `hearth skin verify`.
"""

import copy
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

# The train extra, looked up without importing it: torch and transformers are only imported by
# the tests that use them, so collecting this module stays fast.
for _extra in ("torch", "transformers", "peft", "safetensors"):
    if importlib.util.find_spec(_extra) is None:
        pytest.skip(f"needs the train extra ({_extra})", allow_module_level=True)
gguf = pytest.importorskip("gguf")

from npc.skins.convert import convert_peft_to_gguf, gguf_tensor_name, llama_permute  # noqa: E402
from npc.skins.manifest import SkinError  # noqa: E402
from npc.skins.train import (  # noqa: E402
    DEFAULT_RANK, TrainingDataError, encode_example, load_base, load_examples, train_lora,
)
from tests.conftest import hearth, hearth_here  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SKINS = ROOT / "assets" / "skins"
BUNDLES = SKINS / "bundles"
VILLAGE_BUNDLE = ROOT / "assets" / "village" / "bundle"
DEMO = tomllib.loads((SKINS / "demo_skins.toml").read_text(encoding="utf-8"))["skin"]
#: Player lines in none of the training files, one villager each (round-robin).
HELD_OUT = ["Hi there, friend.", "What is good here?", "Tell me about the mill pond.",
            "I need a sword.", "Is it going to rain?", "Who is the best fighter here?",
            "Purple elephants dance at midnight.", "What do you think of the inn?",
            "Farewell, friend.", "How are you today?", "Where can I find Maren?",
            "Can you keep a secret?"]
VILLAGERS = ["tobin", "bram", "maren", "hilda"]
#: Requests the action examples never use: (villager, quest step, words, the action kind wanted).
#: A validation set: Old Grump's training steps were chosen by how many of these it took.
VALIDATION_ACTIONS = [
    ("tobin", -1, "I'd like to buy a coil of rope.", "sell"),
    ("tobin", -1, "Sell me a lantern.", "sell"),
    ("maren", -1, "I'd like to buy a bowl of stew.", "sell"),
    ("maren", -1, "Sell me a loaf of bread.", "sell"),
    ("bram", -1, "I'd like to buy a horseshoe.", "sell"),
    ("bram", -1, "Sell me a dagger.", "sell"),
    ("bram", 2, "Can I have the new bell clapper?", "give"),
    ("bram", 2, "Have you finished the clapper?", "give"),
    ("maren", -1, "You seem troubled. Can I lend a hand?", "start_quest"),
    ("maren", -1, "Do you need a hand?", "start_quest"),
]
#: Held out from the skins: no skin was trained or tuned on these words, and the goods asked for
#: are the ones the validation set does not name. "none": small talk asks for nothing. (Not held
#: out from the engine's request reader: four of these first showed it phrasings it missed.)
FRESH_ACTIONS = [
    ("tobin", -1, "Got any apples? I'll take one.", "sell"),
    ("tobin", -1, "I'm after an iron ingot, if you have one spare.", "sell"),
    ("maren", -1, "Pour me a mug of ale, would you?", "sell"),
    ("bram", -1, "Let me have a bag of nails.", "sell"),
    ("bram", 2, "Is my clapper ready to take to the bell?", "give"),
    ("bram", 2, "The ingot is yours now. Can I collect the clapper?", "give"),
    ("maren", -1, "Why is the bell so quiet? I'd gladly help.", "start_quest"),
    ("maren", -1, "Is something the matter? Let me lend a hand.", "start_quest"),
    ("tobin", -1, "Busy day at the market?", "none"),
    ("maren", -1, "This inn feels cosy tonight.", "none"),
]
PEARSON_MIN = 0.995


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def chat(user: str, say: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": f"Traveller says: {json.dumps(user)}"},
             {"role": "assistant", "content": json.dumps({"action": "none", "say": say})}]
    return {"messages": msgs}


@pytest.fixture(scope="module")
def base(hearth_home):
    from npc.store import ModelStore
    store = ModelStore()
    rec = store.ensure_default()
    return rec, store.path(rec.blake3)


@pytest.fixture(scope="module")
def hf(base):
    """The base model and tokenizer loaded by transformers from the GGUF (once per module):
    converted from the GGUF itself, which leaves the converted copy in the data directory."""
    import shutil

    from npc.skins import train
    shutil.rmtree(train.converted_root(), ignore_errors=True)
    train._BASE_CACHE.clear()
    return load_base(base[1])


@pytest.mark.model
@pytest.mark.slow
def test_the_kept_conversion_is_the_ggufs_bit_for_bit(hf, base):
    """The converted copy a later training run loads instead of the GGUF: the same weights
    (bit for bit, the output layer still tied to the embeddings), the same tokens, template and
    logits; a damaged copy or one made by another transformers is not used."""
    import torch

    from npc.skins.train import _source_id, converted_root, read_converted

    model, tok = hf
    source = _source_id(base[1])
    kept = read_converted(source)
    assert kept is not None
    model2, tok2 = kept
    sd, sd2 = model.state_dict(), model2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()
    assert getattr(model2.config, "quantization_config", None) is None
    texts = ["<|im_start|>system\nYou are Tobin.<|im_end|>\n<|im_start|>user\nHéllo — "
             "\"iron\" for 12 ☃?<|im_end|>\n<|im_start|>assistant\n", *HELD_OUT]
    assert [tok(t)["input_ids"] for t in texts] == [tok2(t)["input_ids"] for t in texts]
    assert tok.chat_template == tok2.chat_template and len(tok) == len(tok2)
    assert tok.special_tokens_map == tok2.special_tokens_map
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)

    assert read_converted({**source, "transformers": "0.0"}) is None
    weights = converted_root() / source["gguf_blake3"] / "model.safetensors"

    def flip_a_bit():
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size // 2)
            byte = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([byte ^ 1]))
    flip_a_bit()
    try:
        assert read_converted(source) is None
    finally:
        flip_a_bit()
    assert read_converted(source) is not None


# ---- training data ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows,message", [
    ([], "empty: no training examples"),
    (["", "   "], "empty: no training examples"),
    ([chat("hi", "Arr."), chat("hi", "Arr."), '{"messages": [}'], "line 3: bad JSON"),
    (["[1, 2]"], "expected a JSON object"),
    ([{"turns": []}], 'line 1: missing field "messages"'),
    ([{"messages": []}], "non-empty list"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}],
     'line 1, message 2: missing field "content"'),
    ([{"messages": [{"content": "hi"}]}], 'message 1: missing field "role"'),
    ([{"messages": [{"role": "npc", "content": "hi"}]}], "role 'npc' is not one of"),
    ([{"messages": [{"role": "user", "content": 3}]}], '"content" must be a string'),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant turn"),
])
def test_bad_training_data_is_named(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(TrainingDataError, match=re.escape(message)) as e:
        load_examples(path)
    assert str(path) in str(e.value)


@pytest.mark.slow  # imports torch: ~5-8 s
def test_missing_data_file_fails_before_the_model_loads(tmp_path, base, monkeypatch):
    import npc.skins.train as train

    def no_load(path):
        raise AssertionError("the base model was loaded before the data was checked")

    monkeypatch.setattr(train, "load_base", no_load)
    with pytest.raises(TrainingDataError, match="no such file"):
        train_lora(base[1], tmp_path / "nope.jsonl", tmp_path / "w", steps=1, rank=1,
                   progress=False)
    with pytest.raises(ValueError, match="line 1: bad JSON"):
        train_lora(base[1], write_jsonl(tmp_path / "d.jsonl", ["{"]), tmp_path / "w", steps=1,
                   rank=1, progress=False)
    assert not (tmp_path / "w").exists()


def test_blank_lines_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", chat("hi", "Arr."), "", chat("bye", "Arr!")])
    assert len(load_examples(path)) == 2


def _parse_action(label: str):
    from engine.commands import GiveItem, SellItem, StartQuest
    kind, *rest = label.split()
    return {"sell": lambda item, price: SellItem(item=item, price=int(price)),
            "give": lambda item: GiveItem(item=item),
            "start_quest": lambda quest: StartQuest(quest=quest)}[kind](*rest)


def _check_demo_lines(skin, examples, path) -> set[str]:
    """Every NPC line is the game's reply JSON, fits the reply grammar (no quotes, two sentences,
    160 bytes, an action the prompt offers) and carries the skin's catchphrase; returns the
    player lines."""
    from npc.grammar import PREFIX, ReplyGrammar

    users = set()
    for messages in examples:
        offered = {"none"}
        for m in messages:
            if m["role"] == "system":
                for line in m["content"].splitlines():
                    if line.startswith("Possible actions: "):
                        listed = line.removeprefix("Possible actions: ").rstrip(".")
                        offered = set(json.loads(f"[{listed}]"))
            if m["role"] == "user":
                users.add(m["content"])
            if m["role"] != "assistant":
                continue
            reply = json.loads(m["content"])
            assert list(reply) == ["action", "say"]
            assert reply["action"] in offered, (reply["action"], offered)
            actions = [] if reply["action"] == "none" else [_parse_action(reply["action"])]
            # An action example's line opens with the engine's fact (up to two sentences) before
            # the skin's one; tools/make_skin_actions.py checks each against the game's own grammar
            # with that fact as its lead (the test below runs it).
            grammar = ReplyGrammar(actions, 160, max_sentences=3 if "actions" in path.name else 2)
            grammar.push(m["content"][len(PREFIX):].encode())
            assert grammar.done, m["content"]
            assert re.search(skin["catchphrase"], reply["say"], re.I), reply["say"]
    assert not users & {f"Traveller says: {json.dumps(w)}" for w in HELD_OUT}
    assert not users & {f"Traveller says: {json.dumps(w)}"
                        for _, _, w, _ in VALIDATION_ACTIONS + FRESH_ACTIONS}
    return users


@pytest.mark.parametrize("skin", DEMO, ids=[s["dir"] for s in DEMO])
def test_demo_data_is_what_the_game_can_say(skin):
    """40-60 chit-chat examples, player lines never repeated, each line what the game can say."""
    examples = load_examples(SKINS / skin["data"])
    assert 40 <= len(examples) <= 60
    assert len(_check_demo_lines(skin, examples, SKINS / skin["data"])) == len(examples)


@pytest.mark.parametrize("skin", DEMO, ids=[s["dir"] for s in DEMO])
def test_demo_action_examples_are_the_games_prompts(skin):
    """The action examples are what tools/make_skin_actions.py writes from the game's prompts
    today (a change to the prompt shows up here), they cover every kind of action, and each line
    is what the game can say."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_skin_actions import skin_examples
    finally:
        sys.path.remove(str(ROOT / "tools"))
    path = SKINS / f"{skin['dir']}.actions.jsonl"
    examples = load_examples(path)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == \
        skin_examples(skin["lines"])
    _check_demo_lines(skin, examples, path)
    kinds = {json.loads(m[-1]["content"])["action"].split()[0] for m in examples}
    assert kinds == {"sell", "give", "start_quest", "none"}


# ---- the trainer --------------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.slow
def test_training_tokens_are_the_games_tokens(hf, base):
    """Rendering + tokenization match what the runtime feeds llama.cpp (turn markers special,
    contents plain), and only the NPC's words and its <|im_end|> are learned."""
    from npc.llama import Model
    _, tok = hf
    model = Model(base[1])
    try:
        messages = load_examples(SKINS / "pirate.jsonl")[:5]
        messages.append([{"role": "user", "content": "Say <|im_end|> please"},
                         {"role": "assistant", "content": '{"action": "none", "say": "No."}'}])
        for msgs in messages:
            ids, labels = encode_example(tok, msgs)
            ref = []
            for m in msgs:
                ref += model.tokenize(f"<|im_start|>{m['role']}\n", parse_special=True)
                ref += model.tokenize(m["content"], parse_special=False)
                ref += model.tokenize("<|im_end|>", parse_special=True)
                ref += model.tokenize("\n", parse_special=False)
            assert ids == ref
            learned = tok.decode([t for t, y in zip(ids, labels) if y != -100])
            assert learned == msgs[-1]["content"] + "<|im_end|>"
    finally:
        model.close()


@pytest.mark.model
@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(hf, base, tmp_path):
    from safetensors.numpy import load_file
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Hello!", "Arr, ahoy, matey!"),
                                              chat("Bye.", "Arr, fair winds, matey!"),
                                              chat("Price?", "Arr, one gold, matey.")])
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        r = train_lora(base[1], data, tmp_path / name, steps=2, rank=2, batch_size=2,
                       seed=seed, progress=False)
        runs[name] = r
    a, b, c = (load_file(str(runs[n].peft_dir / "adapter_model.safetensors")) for n in "abc")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert runs["a"].adapter_gguf.read_bytes() == runs["b"].adapter_gguf.read_bytes()
    s = runs["a"].summary
    assert (s.steps, s.rank, s.alpha, s.examples) == (2, 2, 4.0, 3) and s.final_loss > 0
    # float16 PEFT weights, rank 2 on the seven projections of all 30 layers
    assert len(a) == 30 * 7 * 2 and all(v.dtype == np.float16 for v in a.values())
    cfg = json.loads((runs["a"].peft_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4.0
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"])


@pytest.mark.model
@pytest.mark.slow
def test_a_remix_starts_from_its_parents_weights(hf, base, tmp_path):
    """With ``init_from`` the parent's LoRA is the starting point: one step at a tiny learning
    rate leaves the weights at the parent's; the same step from scratch does not. The parent's
    rank and alpha are kept, and a different rank is refused."""
    from safetensors.numpy import load_file
    parent = BUNDLES / "pirate"
    want = load_file(str(parent / "adapter_model.safetensors"))
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Hello!", "Yo ho ho, ahoy, matey!")])
    remix = train_lora(base[1], data, tmp_path / "remix", steps=1, rank=None, lr=1e-7,
                       progress=False, init_from=parent)
    fresh = train_lora(base[1], data, tmp_path / "fresh", steps=1, rank=DEFAULT_RANK, lr=1e-7,
                       progress=False)
    got = load_file(str(remix.peft_dir / "adapter_model.safetensors"))
    new = load_file(str(fresh.peft_dir / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k].astype(np.float32), want[k].astype(np.float32),
                                   atol=2e-3)
    b = next(k for k in want if ".lora_B." in k)
    assert np.abs(want[b]).max() > 1e-3 and np.abs(new[b]).max() < 1e-5  # fresh B starts at 0
    cfg = json.loads((parent / "adapter_config.json").read_text())
    assert remix.summary.rank == cfg["r"] and remix.summary.alpha == cfg["lora_alpha"]
    with pytest.raises(ValueError, match="keeps its rank"):
        train_lora(base[1], data, tmp_path / "x", steps=1, rank=cfg["r"] + 1, progress=False,
                   init_from=parent)
    (tmp_path / "broken").mkdir()
    with pytest.raises(ValueError, match="not a usable PEFT LoRA config"):
        train_lora(base[1], data, tmp_path / "y", steps=1, rank=None, progress=False,
                   init_from=tmp_path / "broken")


# ---- the converter ------------------------------------------------------------------------------

N_HEAD, N_HEAD_KV, HEAD_DIM, HIDDEN, FFN, RANK = 4, 2, 4, 16, 24, 3
SHAPES = {"attn_q": (N_HEAD * HEAD_DIM, HIDDEN), "attn_k": (N_HEAD_KV * HEAD_DIM, HIDDEN),
          "attn_v": (N_HEAD_KV * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, N_HEAD * HEAD_DIM),
          "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def tiny_base(path: Path) -> Path:
    """A two-layer llama GGUF header with the real model's tensor names (weights all zero)."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.attention.head_count", N_HEAD)
    w.add_uint32("llama.attention.head_count_kv", N_HEAD_KV)
    for layer in range(2):
        for name, shape in SHAPES.items():
            w.add_tensor(f"blk.{layer}.{name}.weight", np.zeros(shape, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_peft(d: Path, config: dict | None = None, drop: str | None = None) -> dict:
    from safetensors.numpy import save_file
    rng = np.random.default_rng(7)
    tensors = {}
    for layer in range(2):
        for name, (out, inp) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{HF_NAMES[name]}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((RANK, inp)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((out, RANK)).astype(np.float32)
    if drop:
        del tensors[drop]
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": RANK, "lora_alpha": 6, "bias": "none",
           "target_modules": list(HF_NAMES.values())} | (config or {})
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k order, written out row by row: within each head, rows i and d+i of
    Hugging Face's split-halves layout become rows 2i and 2i+1."""
    out = np.empty_like(w)
    per_head = w.shape[0] // n_head
    d = per_head // 2
    for h in range(n_head):
        for i in range(d):
            for j in range(2):
                out[h * per_head + 2 * i + j] = w[h * per_head + j * d + i]
    return out


def read_adapter(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    meta = {}
    for key in ("general.architecture", "general.type", "adapter.type"):
        meta[key] = r.get_field(key).contents()
    meta["adapter.lora.alpha"] = float(r.get_field("adapter.lora.alpha").contents())
    return meta, {t.name: np.array(t.data) for t in r.tensors}


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_converter_names_shapes_and_permutation(tmp_path, dtype):
    base = tiny_base(tmp_path / "base.gguf")
    peft = tiny_peft(tmp_path / "peft")
    out = convert_peft_to_gguf(tmp_path / "peft", base, tmp_path / "a.gguf", dtype=dtype)
    flat = convert_peft_to_gguf(tmp_path / "peft", base, tmp_path / "b.gguf", permute_qk=False,
                                dtype=dtype)
    meta, got = read_adapter(out)
    assert meta == {"general.architecture": "llama", "general.type": "adapter",
                    "adapter.type": "lora", "adapter.lora.alpha": 6.0}
    assert len(got) == 2 * 7 * 2
    _, unpermuted = read_adapter(flat)
    np_dtype = np.float32 if dtype == "f32" else np.float16
    raw = gguf.GGUFReader(str(out))
    for t in raw.tensors:  # GGUF stores shapes fastest-first: A (in, r), B (r, out)
        layer, name = t.name.split(".")[1], t.name.split(".")[2]
        out_dim, in_dim = SHAPES[name]
        assert list(t.shape) == ([in_dim, RANK] if t.name.endswith("lora_a") else [RANK, out_dim])
        assert t.data.dtype == np_dtype
    for layer in range(2):
        for name in SHAPES:
            prefix = f"base_model.model.model.layers.{layer}.{HF_NAMES[name]}"
            a, b = peft[f"{prefix}.lora_A.weight"], peft[f"{prefix}.lora_B.weight"]
            want_b = {"attn_q": interleave_rows(b, N_HEAD),
                      "attn_k": interleave_rows(b, N_HEAD_KV)}.get(name, b)
            key = f"blk.{layer}.{name}.weight"
            assert got[key + ".lora_a"].shape == (RANK, SHAPES[name][1])
            assert got[key + ".lora_b"].shape == (SHAPES[name][0], RANK)
            np.testing.assert_array_equal(got[key + ".lora_a"], a.astype(np_dtype))
            np.testing.assert_array_equal(got[key + ".lora_b"], want_b.astype(np_dtype))
            np.testing.assert_array_equal(unpermuted[key + ".lora_b"], b.astype(np_dtype))
            if name in ("attn_q", "attn_k"):
                assert not np.array_equal(want_b, b)


@pytest.mark.slow  # imports transformers: ~5-8 s
def test_permutation_is_the_inverse_of_transformers_gguf_loading():
    """Transformers un-permutes q/k when it loads a GGUF; our permutation must undo exactly that."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    proc = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    rng = np.random.default_rng(0)
    for name, rows, heads in (("blk.0.attn_q.weight", 576, 9), ("blk.0.attn_k.weight", 192, 3)):
        w = rng.standard_normal((rows, 8)).astype(np.float32)
        assert np.array_equal(proc.process(llama_permute(w, heads), name).weights, w)
        assert np.array_equal(llama_permute(w, heads), interleave_rows(w, heads))


def test_converter_refuses_what_it_cannot_convert(tmp_path):
    base = tiny_base(tmp_path / "base.gguf")
    cases = [({"use_dora": True}, None, "DoRA"),
             ({"alpha_pattern": {"q_proj": 4}}, None, "alpha_pattern"),
             ({"bias": "all"}, None, "biases"),
             ({}, "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight", "lora_B is missing")]
    for i, (cfg, drop, message) in enumerate(cases):
        tiny_peft(tmp_path / f"p{i}", cfg, drop)
        with pytest.raises(SkinError, match=message):
            convert_peft_to_gguf(tmp_path / f"p{i}", base, tmp_path / f"o{i}.gguf")
        assert not (tmp_path / f"o{i}.gguf").exists()
    with pytest.raises(SkinError, match="not a LoRA tensor"):
        gguf_tensor_name("base_model.model.lm_head.lora_A.weight")
    # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r: the written alpha makes them agree.
    tiny_peft(tmp_path / "rs", {"use_rslora": True})
    meta, _ = read_adapter(convert_peft_to_gguf(tmp_path / "rs", base, tmp_path / "rs.gguf"))
    assert meta["adapter.lora.alpha"] / RANK == pytest.approx(6 / RANK ** 0.5)


# ---- the shipped demo bundles -------------------------------------------------------------------

def demo_key() -> str:
    text = (SKINS / "demo-creator.key").read_text()
    return re.search(r"public key: ([0-9a-f]{64})", text).group(1)


def test_demo_bundles_verify_and_are_small(base):
    from npc.skins.bundle import verify_bundle
    ids = {}
    for skin in DEMO:
        v = verify_bundle(BUNDLES / skin["dir"], base_model=base[0].blake3, base_gguf=base[1])
        ids[skin["dir"]] = v
        m = v.manifest
        assert m.name == skin["name"] and m.creator == demo_key()
        assert m.training.rank == DEFAULT_RANK and m.training.examples >= 40
        size = sum(f.size for f in m.files)  # "a few MB": rank 4, float16 tensors
        assert size < 6 * 2**20, f"{skin['dir']}: {size / 2**20:.1f} MiB"
        assert {f.role: f for f in m.files}["peft_weights"].size < 3 * 2**20
    for skin in DEMO:
        m = ids[skin["dir"]].manifest
        if "parent" in skin:
            assert m.parent == ids[skin["parent"]].skin_id and m.royalty == skin["royalty"]
        else:
            assert m.parent is None and m.royalty == 0


def test_the_village_voice_bundle_verifies(base):
    from npc.skins.bundle import verify_bundle
    v = verify_bundle(VILLAGE_BUNDLE, base_model=base[0].blake3, base_gguf=base[1])
    m = v.manifest
    assert m.name == "Emberbrook" and m.creator == demo_key() and m.parent is None
    data = (ROOT / "assets" / "village" / "village.jsonl").read_text().splitlines()
    assert m.training.examples == len(data) >= 300


def test_village_training_data_is_what_the_engine_says():
    """Every example's reply opens with the fact and takes the action the engine decides for
    its player line in its state: the generator's checks, re-read from the committed file."""
    rows = [json.loads(line) for line in
            (ROOT / "assets" / "village" / "village.jsonl").read_text().splitlines()]
    kinds = set()
    for row in rows:
        system, user, reply = (m["content"] for m in row["messages"])
        said = json.loads(reply)
        assert set(said) == {"action", "say"} and said["say"]
        kinds.add(said["action"].split()[0])
        assert user.startswith("Traveller says: ")
    assert {"none", "sell", "give", "start_quest"} <= kinds


# ---- agreement: llama.cpp vs PyTorch ------------------------------------------------------------

def agreement_prompts(model) -> list[list[int]]:
    """Twelve short prompts in the game's chat format (four villagers, held-out player lines),
    cut at three points of the reply: before the action, before the line, inside the line."""
    from engine.world import new_game
    state = new_game(seed=1)
    tails = ["", 'none", "say": "', 'none", "say": "Arr, the ']
    out = []
    for i, words in enumerate(HELD_OUT):
        npc = state.npc(VILLAGERS[i % 4])
        text = (f"<|im_start|>system\nYou are {npc.name}, the {npc.role} of Emberbrook, a small "
                f"village.<|im_end|>\n<|im_start|>user\nTraveller says: {json.dumps(words)}"
                f"<|im_end|>\n<|im_start|>assistant\n")
        out.append(model.tokenize(text, parse_special=True)
                   + model.tokenize('{"action": "' + tails[i % 3], parse_special=False))
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1])


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT on transformers 5.x
def test_llama_cpp_matches_pytorch_and_needs_the_qk_permutation(hf, base, tmp_path):
    import torch
    from peft import PeftModel

    from npc.llama import Adapter, Context, LoadOptions, Model

    bundle = BUNDLES / "pirate"
    unpermuted = convert_peft_to_gguf(bundle, base[1], tmp_path / "unpermuted.gguf",
                                      permute_qk=False)
    model = Model(base[1])  # the Q4_1 file the store holds, as the game runs it
    ctx = Context(model, LoadOptions(n_ctx=1024, n_seq_max=1, n_batch=512, n_threads=2))
    good, bad = Adapter(model, bundle / "adapter.gguf"), Adapter(model, unpermuted)
    torch_model = PeftModel.from_pretrained(copy.deepcopy(hf[0]), str(bundle))
    torch_model.eval()

    def llama_logits(adapter, toks):
        ctx.set_adapter(adapter)
        ctx.seq_rm(0)
        ctx.decode(toks, 0, 0)
        return ctx.logits(-1).copy()

    rows = []
    try:
        for toks in agreement_prompts(model):
            with torch.no_grad():
                ref = torch_model(input_ids=torch.tensor([toks])).logits[0, -1].numpy()
            g, b = llama_logits(good, toks), llama_logits(bad, toks)
            top2 = np.sort(ref)[-2:]
            rows.append((pearson(ref, g), pearson(ref, b), top2[1] - top2[0], int(ref.argmax()),
                         int(g.argmax()), int(b.argmax())))
    finally:
        ctx.set_adapter(None)
        good.close(), bad.close(), ctx.close(), model.close()
    good_r = [r[0] for r in rows]
    bad_r = [r[1] for r in rows]
    clear = [r for r in rows if r[2] > 1.0]
    good_top1 = sum(r[3] == r[4] for r in clear)
    bad_top1 = sum(r[3] == r[5] for r in clear)
    print(f"\npermuted:   pearson min {min(good_r):.5f} mean {np.mean(good_r):.5f}, "
          f"top-1 {good_top1}/{len(clear)} (clear margins)")
    print(f"unpermuted: pearson min {min(bad_r):.5f} mean {np.mean(bad_r):.5f}, "
          f"top-1 {bad_top1}/{len(clear)}")
    assert len(rows) >= 10 and len(clear) >= 5
    assert min(good_r) >= PEARSON_MIN and good_top1 == len(clear)
    # The same comparison fails for the adapter converted without the permutation.
    assert min(bad_r) < PEARSON_MIN or bad_top1 < len(clear)
    assert np.mean(bad_r) < np.mean(good_r) - 0.003


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT on transformers 5.x
# (pirate is checked above, with the permutation)
# "village+<skin>": the skin worn over the village voice, as the game wears it (one adapter
# composed of both, npc/skins/compose.py) against PyTorch with both applied.
@pytest.mark.parametrize("bundle", [*(s["dir"] for s in DEMO if s["dir"] != "pirate"), "village",
                                    *(f"village+{s['dir']}" for s in DEMO)])
def test_every_shipped_adapter_matches_pytorch(hf, base, bundle, tmp_path):
    import torch
    from peft import PeftModel

    from npc.llama import Adapter, Context, LoadOptions, Model
    from npc.skins.compose import compose

    layers = [VILLAGE_BUNDLE if d == "village" else BUNDLES / d for d in bundle.split("+")]
    model = Model(base[1])
    ctx = Context(model, LoadOptions(n_ctx=1024, n_seq_max=1, n_batch=512, n_threads=2))
    if len(layers) == 1:
        adapter = Adapter(model, layers[0] / "adapter.gguf")
        stack = ()
    else:
        adapter = Adapter(model, compose([p / "adapter.gguf" for p in layers],
                                         tmp_path / "composed.gguf"))
        stack = tuple(Adapter(model, p / "adapter.gguf") for p in layers)
    torch_model = copy.deepcopy(hf[0])
    for lower in layers[:-1]:
        torch_model = PeftModel.from_pretrained(torch_model, str(lower)).merge_and_unload()
    torch_model = PeftModel.from_pretrained(torch_model, str(layers[-1]))
    torch_model.eval()

    def llama_logits(worn, toks):
        ctx.set_adapter(worn)
        ctx.seq_rm(0)
        ctx.decode(toks, 0, 0)
        return ctx.logits(-1).copy()

    rows, stacked = [], []
    try:
        for toks in agreement_prompts(model):
            with torch.no_grad():
                ref = torch_model(input_ids=torch.tensor([toks])).logits[0, -1].numpy()
            got = llama_logits(adapter, toks)
            top2 = np.sort(ref)[-2:]
            rows.append((pearson(ref, got), top2[1] - top2[0], int(ref.argmax()), int(got.argmax())))
            if stack:
                s = llama_logits(stack, toks)
                stacked.append((pearson(ref, s), int(s.argmax())))
    finally:
        ctx.set_adapter(None)
        for a in (adapter, *stack):
            a.close()
        ctx.close(), model.close()
    r = [row[0] for row in rows]
    clear = [row for row in rows if row[1] > 1.0]
    top1 = sum(row[2] == row[3] for row in clear)
    print(f"\n{bundle}: pearson min {min(r):.5f} mean {np.mean(r):.5f}, top-1 "
          f"{top1}/{len(clear)} (clear margins)")
    if not stack:
        assert min(r) >= PEARSON_MIN and top1 == len(clear)
        return
    # A skin over the village voice on the quantized base drifts further from PyTorch than either
    # adapter alone (village+shanty: min 0.9946 for llama.cpp's own two-adapter stack too). The
    # composed adapter must agree with PyTorch as well as llama.cpp's stack of the same two does
    # (their deltas are equal: tests/test_skins.py), and stay close to the single-adapter bound.
    s_r = [x[0] for x in stacked]
    s_top1 = sum(row[2] == x[1] for row, x in zip(rows, stacked) if row[1] > 1.0)
    print(f"{bundle} as llama.cpp's stack: pearson min {min(s_r):.5f} mean {np.mean(s_r):.5f}, "
          f"top-1 {s_top1}/{len(clear)}")
    assert min(r) >= min(min(s_r), PEARSON_MIN) - 0.001 and np.mean(r) >= np.mean(s_r) - 0.001
    assert min(r) >= PEARSON_MIN - 0.001 and top1 >= min(s_top1, len(clear)) - 1


# ---- effect: the skin shows through the game's own voice ---------------------------------------

@pytest.fixture(scope="module")
def demo_voice(base, tmp_path_factory):
    """The game's voice (ModelVoice + AdapterPool + Runtime, in the configuration the game runs:
    ``game.voices.load_model_voice``) with every demo skin and the village voice installed:
    (voice, {skin dir: skin id})."""
    from npc.adapters import AdapterPool
    from npc.runtime import Runtime
    from npc.skins.store import SkinStore
    from npc.store import ModelStore
    from npc.tuning import choose
    from npc.voice import ModelVoice

    store = SkinStore(tmp_path_factory.mktemp("skin-home"))
    ids = {s["dir"]: store.install(BUNDLES / s["dir"], base_model=base[0].blake3,
                                   base_gguf=base[1]) for s in DEMO}
    from game.voices import VILLAGE_UNDER_SKINS
    village = store.install(VILLAGE_BUNDLE, base_model=base[0].blake3, base_gguf=base[1])
    models = ModelStore()
    choice = choose(models, base[0])
    runtime = Runtime(models.path(choice.model), use_extra_bufts=choice.use_extra_bufts,
                      n_threads=choice.n_threads, n_threads_batch=choice.n_threads_batch)
    pool = AdapterPool(runtime, store, base_model=base[0].blake3, base_gguf=base[1])
    # As the game speaks: the village voice for villagers without a skin, and under every skin.
    voice = ModelVoice(runtime, pool=pool, base_model=base[0].blake3, village=village,
                       village_under_skins=VILLAGE_UNDER_SKINS)
    yield voice, ids
    pool.close()
    runtime.close()


@pytest.mark.model
@pytest.mark.slow
def test_skins_show_on_held_out_lines_through_the_game_voice(demo_voice):
    """Ten held-out lines to two villagers (each villager's persona prefix is then computed once
    per skin and reused from the runtime's cache), for every demo skin and for the base voice."""
    from engine.dialogue import build_request
    from engine.world import new_game

    voice, ids = demo_voice
    state = new_game(seed=1)
    lines_out = HELD_OUT[:10]

    def lines(skin_id):
        out = []
        for i, words in enumerate(lines_out):
            npc = ("tobin", "maren")[i % 2]
            state.npc(npc).skin = skin_id
            out.append(voice.respond(build_request(state, npc, words)).text)
        return out

    base_lines = lines(None)
    report, failures = [], []
    for skin in DEMO:
        said = lines(ids[skin["dir"]])
        hit = sum(bool(re.search(skin["catchphrase"], t, re.I)) for t in said)
        base_hit = sum(bool(re.search(skin["catchphrase"], t, re.I)) for t in base_lines)
        report.append(f"{skin['dir']}: skin {hit}/{len(said)}, base {base_hit}/{len(said)}"
                      f"  e.g. {said[1]!r}")
        if hit / len(said) < 0.6 or base_hit / len(said) > 0.2:
            failures.append(skin["dir"])
    print("\n" + "\n".join(report))
    assert voice.failed_skins == {}
    assert not failures, report


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(900)  # ten requests, five voices
def test_skins_keep_the_villagers_actions(demo_voice):
    """A skin changes how a villager talks, not what it does: asked in words no skin was trained or
    tuned on, a skinned shopkeeper still sells what was asked for, Bram still hands over the
    clapper at that quest step, Maren still takes the offered help and small talk takes nothing
    (the reply grammar offers the actions; which to take is the model's choice). A 135M model
    misses some: on the fresh requests each skin must take at least 3 of the 10, and the skins
    together at least half, and at least three quarters of the base voice's rate. Skins trained on
    chit-chat alone took 0-1 of the 10 validation requests (which chose Old Grump's training
    steps, so the skins are not held to them here)."""
    from engine.commands import Say
    from engine.dialogue import build_request
    from engine.sim import step
    from engine.world import new_game
    from npc.grammar import action_label

    from tests.conftest import place_player_near

    voice, ids = demo_voice

    def taken(requests, skin_id) -> list[str]:
        out = []
        for npc, quest_step, words, want in requests:
            state = new_game(seed=1)
            state.player.gold, state.quest.step = 500, quest_step
            state = place_player_near(state, npc)
            state, _ = step(state, [Say(npc=npc, text=words)])
            state.npc(npc).skin = skin_id
            req = build_request(state, npc, words)
            offered = {action_label(a).split()[0] for a in req.legal_actions} | {"none"}
            assert want in offered, words
            out.append(action_label(voice.respond(req).action).split()[0])
        return out

    def rates(requests, title):
        wanted = [want for *_, want in requests]
        report, rate = [title], {}
        for name, skin_id in [("base", None)] + [(s["dir"], ids[s["dir"]]) for s in DEMO]:
            got = taken(requests, skin_id)
            hits = sum(g == w for g, w in zip(got, wanted))
            rate[name] = hits / len(wanted)
            report.append(f"  {name}: {hits}/{len(wanted)} ({', '.join(got)})")
        base_rate = rate.pop("base")
        mean = sum(rate.values()) / len(rate)
        report.append(f"  skins together {mean:.2f}, base {base_rate:.2f}")
        return rate, mean, base_rate, report

    fresh, mean, base_rate, report = rates(FRESH_ACTIONS, "fresh held-out requests:")
    print("\n" + "\n".join(report))
    assert voice.failed_skins == {}
    assert min(fresh.values()) >= 0.3 and mean >= 0.5 and mean >= 0.75 * base_rate, report


# ---- hearth skin train --------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.slow
def test_cli_train_makes_a_bundle_that_verifies(base, hf, hearth_home, tmp_path, capsys):
    data = write_jsonl(tmp_path / "tiny.jsonl", [chat("Hello!", "Arr, ahoy, matey!"),
                                                 chat("Bye.", "Arr, fair winds, matey!")])
    out = tmp_path / "bundle"
    r = hearth("skin", "train", "--data", str(data), "--name", "Tiny Pirate", "--out", str(out),
               "--steps", "2", "--rank", "2", home=hearth_home)
    assert r.returncode == 0, r.stderr
    skin_id = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", skin_id), r.stdout
    assert "training" in r.stderr and "2/2" in r.stderr  # the progress bar, on stderr
    v = hearth("skin", "verify", str(out), home=hearth_home)
    assert v.returncode == 0 and v.stdout == skin_id + "\n", v.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["examples"] == 2

    # One training process shows the command standalone; the remix and the refusals run the same
    # command line in this process (hearth_here), where torch and the base model are loaded.
    assert hearth_here(capsys, "skin", "install", out).returncode == 0
    # A remix of an installed skin starts from its weights and names it as parent.
    remix = tmp_path / "remix"
    r = hearth_here(capsys, "skin", "train", "--data", data, "--name", "Tiny Remix", "--out", remix,
                    "--steps", "1", "--parent", skin_id[:12], "--royalty", "0.25")
    assert r.returncode == 0, r.stderr
    assert "starting from Tiny Pirate's weights" in r.stderr
    manifest = json.loads((remix / "manifest.json").read_text())
    assert manifest["parent"] == skin_id and manifest["royalty"] == 0.25
    assert manifest["training"]["rank"] == 2
    r = hearth_here(capsys, "skin", "train", "--data", data, "--name", "x", "--out", tmp_path / "z",
                    "--parent", skin_id, "--rank", "3")
    assert r.returncode == 2 and "keeps its rank (2)" in r.stderr, r.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("Hi", "Arr."), "not json"])
    r = hearth_here(capsys, "skin", "train", "--data", bad, "--name", "x", "--out", tmp_path / "o")
    assert r.returncode == 2 and "line 2: bad JSON" in r.stderr and "Traceback" not in r.stderr
