"""Skins: the bundle format, signing, verification, the install store, lineage and royalties, the
adapter pool, skins in the model voice, and the `hearth id` / `hearth skin` command line.

Adapters are real LoRA GGUF files written with gguf's writer, shaped for the real default base
model, so llama.cpp loads the good ones and refuses the bad ones for real. Nothing is trained.
"""

import json
import shutil
import struct
import sys
from fractions import Fraction
from pathlib import Path

import blake3
import msgspec
import numpy as np
import pytest

from npc.skins.bundle import (
    MAX_BUNDLE_BYTES, _GGML_SIZES, create_bundle, inspect_adapter, verify_bundle,
)
from common.identity import IdentityError, curve_public_from_ed25519, load_or_create_identity, verify_signature
from npc.skins.manifest import SkinError, TrainingSummary, canonical_bytes, decode_manifest
from npc.skins.store import SkinStore
from tests.conftest import hearth, hearth_here

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# ---- building real bundles ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(hearth_home):
    """(record, path, {tensor name: numpy (out, in) shape}) of the real default base model."""
    from npc.gguf_info import read_gguf
    from npc.store import ModelStore
    store = ModelStore()
    rec = store.ensure_default()
    path = store.path(rec.blake3)
    shapes = {t.name: tuple(reversed(t.shape)) for t in read_gguf(path).tensors}
    return rec, path, shapes


def write_adapter(path, shapes, *, layers=(0, 1), targets=TARGETS, rank=4, seed=0,
                  general_type="adapter", adapter_type="lora", transpose=False, in_dim=None):
    """A LoRA GGUF as llama.cpp's converter writes one: lora_a (r, in), lora_b (out, r) in numpy
    terms (the writer stores GGUF's reversed shapes)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_type(general_type)
    w.add_string("adapter.type", adapter_type)
    w.add_float32("adapter.lora.alpha", float(2 * rank))
    for layer in layers:
        for name in targets:
            out, inp = shapes[f"blk.{layer}.{name}.weight"]
            inp = in_dim or inp
            a = (rng.standard_normal((rank, inp)) * 0.01).astype(np.float32)
            b = (rng.standard_normal((out, rank)) * 0.01).astype(np.float16)
            if transpose:
                a, b = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
            w.add_tensor(f"blk.{layer}.{name}.weight.lora_a", a)
            w.add_tensor(f"blk.{layer}.{name}.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def write_peft(d: Path, rank=4, seed=0) -> Path:
    """A small PEFT adapter directory: safetensors (written by hand: 8-byte header length, JSON
    header, raw data) and adapter_config.json."""
    d.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).standard_normal((rank, 16)).astype(np.float32).tobytes()
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    header = json.dumps({name: {"dtype": "F32", "shape": [rank, 16],
                                "data_offsets": [0, len(data)]}}).encode()
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    return d


def make_bundle(tmp: Path, base, ident, name="Gruff Smith", parent=None, royalty=0.0, seed=0,
                check_shapes=True, **adapter_kw):
    rec, base_path, shapes = base
    work = tmp / f"work-{name}-{seed}".replace(" ", "_")
    work.mkdir(parents=True)
    adapter = write_adapter(work / "a.gguf", shapes, seed=seed, **adapter_kw)
    peft = write_peft(work / "peft", seed=seed)
    out = tmp / f"bundle-{name}-{seed}".replace(" ", "_")
    sid = create_bundle(out, name=name, description="speaks in short, hot sentences",
                        adapter_gguf=adapter, peft_dir=peft, base_model=rec.blake3,
                        identity=ident, parent=parent, royalty=royalty,
                        training=TrainingSummary(steps=10, rank=4, alpha=8.0,
                                                 target_modules=list(TARGETS), examples=3),
                        base_gguf=base_path if check_shapes else None)
    return out, sid


@pytest.fixture(scope="module")
def ident(tmp_path_factory):
    return load_or_create_identity(tmp_path_factory.mktemp("creator"))


@pytest.fixture(scope="module")
def good(tmp_path_factory, base, ident):
    """One good bundle, made once; tests that damage it work on a copy."""
    return make_bundle(tmp_path_factory.mktemp("good"), base, ident)


def copy_bundle(src: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(src, dst)
    return dst


def resign(bundle: Path, ident, refresh=True, **changes) -> None:
    """Rewrite and re-sign a bundle's manifest (with ``changes``), as a creator could."""
    from common.files import blake3_file
    m = decode_manifest((bundle / "manifest.json").read_bytes())
    if refresh:
        m.files = [msgspec.structs.replace(f, blake3=blake3_file(bundle / f.path),
                                           size=(bundle / f.path).stat().st_size)
                   if (bundle / f.path).is_file() else f for f in m.files]
    m = msgspec.structs.replace(m, **changes)
    data = canonical_bytes(m)
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(ident.sign(data))


# ---- identity and manifest ----------------------------------------------------------------------

def test_identity_is_made_once_private_and_stable(tmp_path):
    a = load_or_create_identity(tmp_path)
    b = load_or_create_identity(tmp_path)
    assert a.public_hex == b.public_hex and len(a.public_hex) == 64
    assert a.path == tmp_path / "identity" / "creator.ed25519"
    assert a.path.stat().st_mode & 0o777 == 0o600 and a.path.stat().st_size == 32
    assert [p.name for p in a.path.parent.iterdir()] == ["creator.ed25519"]  # no temp left
    a.path.write_bytes(b"short")
    with pytest.raises(IdentityError, match="not a creator key"):
        load_or_create_identity(tmp_path)


def test_identity_signs_and_derives_its_transport_key(tmp_path):
    me = load_or_create_identity(tmp_path)
    sig = me.sign(b"offer")
    assert verify_signature(me.public_bytes, b"offer", sig)
    assert not verify_signature(me.public_bytes, b"offer!", sig)
    assert not verify_signature(me.public_bytes, b"offer", b"\0" * 64)
    public, secret = me.curve_keypair()
    assert len(public) == len(secret) == 32
    assert curve_public_from_ed25519(me.public_bytes) == public


def test_manifest_is_canonical_and_versioned(good):
    out, sid = good
    data = (out / "manifest.json").read_bytes()
    m = decode_manifest(data)
    assert canonical_bytes(m) == data  # sorted keys, exactly what was signed
    assert list(json.loads(data)) == sorted(json.loads(data))
    assert sid == blake3.blake3(data + (out / "manifest.sig").read_bytes()).hexdigest()
    assert {f.role for f in m.files} == {"adapter_gguf", "peft_weights", "peft_config"}
    assert m.training.steps == 10 and m.training.final_loss is None
    with pytest.raises(SkinError, match="manifest version 2 is newer"):
        decode_manifest(canonical_bytes(msgspec.structs.replace(m, version=2)))
    with pytest.raises(SkinError, match="royalty"):
        decode_manifest(canonical_bytes(msgspec.structs.replace(m, royalty=1.5)))


def test_adapter_size_table_matches_ggml():
    sizes = {int(k): v for k, v in gguf.constants.GGML_QUANT_SIZES.items()}
    assert all(sizes[t] == v for t, v in _GGML_SIZES.items())


# ---- verification -------------------------------------------------------------------------------

def test_good_bundle_verifies_with_a_stable_id(good, base):
    out, sid = good
    rec, base_path, _ = base
    v = verify_bundle(out, base_model=rec.blake3, base_gguf=base_path)
    assert v.skin_id == sid and v.manifest.name == "Gruff Smith"
    assert verify_bundle(out).skin_id == sid  # the id depends only on the signed manifest
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "manifest.sig", "adapter.gguf", "adapter_model.safetensors",
         "adapter_config.json"])
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_cli_verify_prints_only_the_id(good, base, hearth_home):
    out, sid = good
    r = hearth("skin", "verify", str(out), home=hearth_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout == sid + "\n"


def _rm(name):
    return lambda b, ident, other: (b / name).unlink()


def _flip_byte(b, ident, other):
    p = b / "adapter_config.json"
    data = bytearray(p.read_bytes())
    data[3] ^= 0x01
    p.write_bytes(bytes(data))


def _grow(b, ident, other):
    with (b / "adapter_model.safetensors").open("ab") as f:
        f.write(b"\0")


def _tamper_manifest(b, ident, other):
    p = b / "manifest.json"
    p.write_bytes(p.read_bytes().replace(b"Gruff Smith", b"Gruff Smyth"))


def _other_signer(b, ident, other):
    resign(b, other)  # manifest still names ident as creator


def _entry_path(path):
    def mutate(b, ident, other):
        m = decode_manifest((b / "manifest.json").read_bytes())
        files = [msgspec.structs.replace(f, path=path) if f.role == "peft_config" else f
                 for f in m.files]
        resign(b, ident, refresh=False, files=files)
    return mutate


def _symlink(b, ident, other):
    target = b.parent / "elsewhere.json"
    shutil.copyfile(b / "adapter_config.json", target)
    (b / "adapter_config.json").unlink()
    (b / "adapter_config.json").symlink_to(target)


def _version2(b, ident, other):
    resign(b, ident, version=2)


def _oversized(b, ident, other):
    m = decode_manifest((b / "manifest.json").read_bytes())
    files = [msgspec.structs.replace(f, size=MAX_BUNDLE_BYTES) if f.role == "adapter_gguf" else f
             for f in m.files]
    resign(b, ident, refresh=False, files=files)


def _replace_adapter(**kw):
    def mutate(b, ident, other, base=None):
        write_adapter(b / "adapter.gguf", base[2], **kw)
        resign(b, ident)
    mutate.needs_base = True
    return mutate


def _truncate_adapter(keep):
    def mutate(b, ident, other):
        p = b / "adapter.gguf"
        data = p.read_bytes()
        p.write_bytes(data[:keep])
        resign(b, ident)
    return mutate


BAD = [
    ("missing manifest", _rm("manifest.json"), "manifest.json: missing"),
    ("missing signature", _rm("manifest.sig"), "manifest.sig: missing"),
    ("missing listed file", _rm("adapter_model.safetensors"),
     "adapter_model.safetensors: missing"),
    ("hash mismatch", _flip_byte, "adapter_config.json: hash mismatch"),
    ("size mismatch", _grow, "adapter_model.safetensors: size mismatch"),
    ("tampered manifest", _tamper_manifest, "manifest.sig: bad signature"),
    ("signed by another key", _other_signer, "signed by a different key"),
    ("path traversal", _entry_path("../adapter_config.json"), "path traversal"),
    ("absolute path", _entry_path("/etc/passwd"), "absolute path"),
    ("nested path", _entry_path("sub/adapter_config.json"), "not a plain file name"),
    ("symlink", _symlink, "adapter_config.json: is a symlink"),
    ("unknown version", _version2, "manifest version 2 is newer"),
    ("oversized", _oversized, "oversized bundle"),
    ("base model GGUF as adapter", _replace_adapter(general_type="model"),
     "adapter.gguf: not an adapter"),
    ("not a LoRA", _replace_adapter(adapter_type="control_vector"), "not a LoRA adapter"),
    ("truncated tensor data", _truncate_adapter(-100), "adapter.gguf: truncated GGUF"),
    ("truncated header", _truncate_adapter(60), "truncated"),
    ("shapes for another model", _replace_adapter(in_dim=512),
     "tensor shapes inconsistent with the base model"),
    ("transposed LoRA", _replace_adapter(transpose=True, targets=("attn_q", "attn_output")),
     "tensor shapes inconsistent with the base model"),
]


@pytest.mark.parametrize("mutate,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_bundles_are_refused_by_name(mutate, expected, good, base, ident, tmp_path):
    b = copy_bundle(good[0], tmp_path)
    other = load_or_create_identity(tmp_path / "other")
    if getattr(mutate, "needs_base", False):
        mutate(b, ident, other, base=base)
    else:
        mutate(b, ident, other)
    rec, base_path, _ = base
    with pytest.raises(SkinError) as err:
        verify_bundle(b, base_model=rec.blake3, base_gguf=base_path)
    assert expected in str(err.value)


def test_wrong_base_model_is_refused(good):
    with pytest.raises(SkinError, match="wrong base model"):
        verify_bundle(good[0], base_model="0" * 64)


@pytest.mark.slow
def test_bad_bundle_on_the_command_line(good, tmp_path, hearth_home):
    b = copy_bundle(good[0], tmp_path)
    _flip_byte(b, None, None)
    r = hearth("skin", "verify", str(b), home=hearth_home)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("hearth: error: ") and "hash mismatch" in r.stderr
    assert "Traceback" not in r.stderr
    r = hearth("skin", "verify", str(tmp_path / "nowhere"), home=hearth_home)
    assert r.returncode == 2 and "no such bundle directory" in r.stderr


def test_misshaped_adapter_caught_by_the_shape_check_and_by_llama_cpp(base, ident, tmp_path):
    from npc.adapters import load_adapter
    from npc.llama import Adapter, LlamaError, Model
    rec, base_path, shapes = base
    bad = write_adapter(tmp_path / "bad.gguf", shapes, targets=("attn_q",), in_dim=512)
    inspect_adapter(bad)  # a well-formed LoRA in itself...
    out = tmp_path / "b"
    with pytest.raises(SkinError, match="blk.0.attn_q.weight is 576x576"):
        create_bundle(out, name="x", description="", adapter_gguf=bad,
                      peft_dir=write_peft(tmp_path / "peft"), base_model=rec.blake3,
                      identity=ident, base_gguf=base_path)
    assert not out.exists()
    model = Model(base_path)
    try:
        with pytest.raises(LlamaError):  # ...that llama.cpp refuses (NULL from lora_init)
            Adapter(model, bad)
        with pytest.raises(SkinError, match="llama.cpp could not load the adapter"):
            load_adapter(model, bad, key="x")
        good = load_adapter(model, write_adapter(tmp_path / "ok.gguf", shapes), key="ok")
        assert good.ptr and good.key == "ok"
        good.close()
    finally:
        model.close()


def test_create_bundle_refuses_bad_input(base, ident, tmp_path):
    rec, base_path, shapes = base
    adapter = write_adapter(tmp_path / "a.gguf", shapes)
    peft = write_peft(tmp_path / "peft")
    kw = dict(name="n", description="", adapter_gguf=adapter, peft_dir=peft,
              base_model=rec.blake3, identity=ident)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SkinError, match="already exists"):
        create_bundle(tmp_path / "full", **kw)
    with pytest.raises(SkinError, match="give a parent"):
        create_bundle(tmp_path / "o1", royalty=0.2, **kw)
    with pytest.raises(SkinError, match="not a skin id"):
        create_bundle(tmp_path / "o2", parent="../x", **kw)
    with pytest.raises(SkinError, match="no such file"):
        create_bundle(tmp_path / "o3", **{**kw, "peft_dir": tmp_path})
    with pytest.raises(SkinError, match="not an adapter"):
        create_bundle(tmp_path / "o4", **{**kw, "adapter_gguf": base_path})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "full", "peft"]


# ---- store, lineage, royalties ------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory, base):
    """Original -> remix (royalty 0.3) -> remix of the remix (royalty 0.25), three creators."""
    tmp = tmp_path_factory.mktemp("chain")
    creators = [load_or_create_identity(tmp / f"c{i}") for i in range(3)]
    a, a_id = make_bundle(tmp, base, creators[0], name="Smith", seed=1)
    b, b_id = make_bundle(tmp, base, creators[1], name="Sly Smith", seed=2, parent=a_id,
                          royalty=0.3)
    c, c_id = make_bundle(tmp, base, creators[2], name="Sly Sad Smith", seed=3, parent=b_id,
                          royalty=0.25)
    return [(a, a_id), (b, b_id), (c, c_id)], creators


def test_install_list_get(chain, base, tmp_path):
    (links, creators) = chain
    store = SkinStore(tmp_path)
    (a, a_id), (b, b_id), _ = links
    assert store.install(a, base_model=base[0].blake3, base_gguf=base[1]) == a_id
    mtime = store.path(a_id).stat().st_mtime_ns
    assert store.install(a) == a_id and store.path(a_id).stat().st_mtime_ns == mtime  # no-op
    assert store.install(b) == b_id
    assert [s.skin_id for s in store.list()] == [b_id, a_id]  # by name: "Sly Smith" < "Smith"
    assert store.get(b_id[:6]).manifest.name == "Sly Smith"
    assert store.verify(a_id[:8]).skin_id == a_id
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]
    with pytest.raises(SkinError, match="no installed skin"):
        store.get("f" * 64 if not a_id.startswith("f") else "e" * 64)
    with pytest.raises(SkinError, match="at least 4 hex"):
        store.get("ab")
    with pytest.raises(SkinError, match="not a skin id"):
        store.path("../../etc")
    # A damaged installed copy is noticed and replaced by installing again.
    (store.path(a_id) / "adapter_config.json").write_text("{}")
    with pytest.raises(SkinError, match="size mismatch|hash mismatch"):
        store.verify(a_id)
    assert store.install(a) == a_id and store.verify(a_id).skin_id == a_id


def test_install_refuses_a_bad_bundle_and_leaves_nothing(good, tmp_path):
    b = copy_bundle(good[0], tmp_path)
    _flip_byte(b, None, None)
    store = SkinStore(tmp_path / "home")
    with pytest.raises(SkinError, match="hash mismatch"):
        store.install(b)
    assert list(store.root.iterdir()) == []


def test_lineage_and_royalty_split(chain, tmp_path):
    links, creators = chain
    store = SkinStore(tmp_path)
    for path, _ in reversed(links):
        store.install(path)
    (_, a_id), (_, b_id), (_, c_id) = links
    assert [m.name for m in store.lineage(c_id)] == ["Sly Sad Smith", "Sly Smith", "Smith"]
    split = store.royalty_split(c_id)
    assert [(c, s) for c, s, _ in split] == [(creators[2].public_hex, c_id),
                                             (creators[1].public_hex, b_id),
                                             (creators[0].public_hex, a_id)]
    # C keeps 3/4; B keeps 0.7 of the quarter that reaches it; the original keeps the rest.
    assert [share for *_, share in split] == [Fraction(3, 4), Fraction(7, 40), Fraction(3, 40)]
    assert sum(share for *_, share in split) == 1
    assert store.royalty_split(a_id) == [(creators[0].public_hex, a_id, Fraction(1))]


def test_missing_parent_is_reported_and_a_cycle_refused(chain, tmp_path, monkeypatch):
    links, _ = chain
    store = SkinStore(tmp_path)
    (_, a_id), (_, b_id), (c, c_id) = links
    store.install(c)
    found, missing = store.chain(c_id)
    assert [s.skin_id for s in found] == [c_id] and missing == b_id
    with pytest.raises(SkinError, match=f"remixes {b_id}, which is not installed"):
        store.lineage(c_id)
    with pytest.raises(SkinError, match="not installed"):
        store.royalty_split(c_id)
    # Content addressing makes a real cycle impossible; a damaged store must still not loop.
    real_read = store._read

    def looping(skin_id):
        s = real_read(c_id)
        return type(s)(skin_id=skin_id, path=s.path,
                       manifest=msgspec.structs.replace(s.manifest, parent=c_id))
    monkeypatch.setattr(store, "_read", looping)
    monkeypatch.setattr(store, "is_installed", lambda sid: True)
    with pytest.raises(SkinError, match="cycle"):
        store.lineage(c_id)


def test_split_is_exact_for_decimal_royalties(tmp_path, base):
    tmp = tmp_path
    ids = [load_or_create_identity(tmp / f"k{i}") for i in range(2)]
    a, a_id = make_bundle(tmp, base, ids[0], name="A", seed=4, check_shapes=False)
    b, b_id = make_bundle(tmp, base, ids[1], name="B", seed=5, parent=a_id, royalty=0.1,
                          check_shapes=False)
    store = SkinStore(tmp / "home")
    store.install(a), store.install(b)
    assert [s for *_, s in store.royalty_split(b_id)] == [Fraction(9, 10), Fraction(1, 10)]


# ---- the adapter pool and the voice -------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(base):
    from npc.runtime import Runtime
    rt = Runtime(base[1], n_ctx=4096, n_slots=2, n_threads=2)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def three_skins(tmp_path_factory, base, ident):
    tmp = tmp_path_factory.mktemp("pool")
    store = SkinStore(tmp / "home")
    ids = []
    for i in range(3):
        path, sid = make_bundle(tmp, base, ident, name=f"Skin {i}", seed=10 + i)
        store.install(path)
        ids.append(sid)
    return store, ids


@pytest.mark.model
def test_pool_evicts_least_recently_used_and_forgets_first(runtime, three_skins, base,
                                                           monkeypatch):
    from npc.adapters import AdapterPool
    store, (s0, s1, s2) = three_skins
    forgotten = []
    real_forget = runtime.forget_adapter

    def spy(key):
        # Called after the pool let go of the adapter but before it is freed.
        forgotten.append((key, key not in pool.loaded and bool(live[key].ptr)))
        real_forget(key)
    monkeypatch.setattr(runtime, "forget_adapter", spy)
    pool = AdapterPool(runtime, store, base_model=base[0].blake3, max_loaded=2)
    live = {}
    live[s0] = pool.get(s0)
    live[s1] = pool.get(s1)
    assert pool.get(s0) is live[s0]  # loaded once, now the most recent
    live[s2] = pool.get(s2)  # over the count: s1, the least recent, goes
    assert pool.loaded == [s0, s2] and forgotten == [(s1, True)]
    assert live[s1].ptr is None and live[s0].ptr and live[s2].ptr
    # Under a byte cap that fits one adapter, a held adapter is still never evicted.
    pool.max_loaded = 1
    with pool.hold(s0):  # on release the pool shrinks to one: s2, the least recent, goes
        pass
    pool.max_loaded = 2
    pool.max_bytes = pool.loaded_bytes * 2 - 1
    with pool.hold(s0):
        live[s1] = pool.get(s1)
        assert pool.loaded == [s0, s1]
    assert pool.loaded == [s1]  # once released, s0 (the least recent) goes
    pool.close()
    assert pool.loaded == [] and live[s1].ptr is None
    assert [k for k, _ in forgotten] == [s1, s2, s0, s1] and all(ok for _, ok in forgotten)


@pytest.mark.model
def test_eviction_drops_prefixes_cached_under_the_skin(runtime, three_skins, base):
    from npc.adapters import AdapterPool
    store, (s0, s1, _) = three_skins
    pool = AdapterPool(runtime, store, base_model=base[0].blake3, max_loaded=1)
    try:
        adapter = pool.get(s1)
        prompt = runtime.tokenize_segments([("Hello there, smith.", False)])
        runtime.generate(prompt, key="bram", max_tokens=2, adapter=adapter, adapter_key=s1)
        assert any(s.key == (s1, "bram") for s in runtime.slots)
        assert runtime.ctx.adapter is adapter
        pool.get(s0)  # evicts s1
        assert not any(isinstance(s.key, tuple) and s.key[0] == s1 for s in runtime.slots)
        assert runtime.ctx.adapter is None and adapter.ptr is None
    finally:
        pool.close()


@pytest.mark.model
def test_a_stack_of_adapters_applies_both_and_is_forgotten_with_either(runtime, three_skins,
                                                                            base):
    from npc.adapters import AdapterPool
    from npc.runtime import STACK_SEP
    store, (s0, s1, _) = three_skins
    pool = AdapterPool(runtime, store, base_model=base[0].blake3, max_loaded=3)
    ctx = runtime.ctx
    prompt = runtime.tokenize_segments([("Hello there, smith. What do you sell?", False)])

    def logits(adapter, scale=1.0):
        ctx.set_adapter(adapter, scale)
        ctx.clear()
        ctx.decode(prompt, seq=0, pos0=0)
        return ctx.logits().copy()

    try:
        a0, a1 = pool.get(s0), pool.get(s1)
        plain, one, both = logits(None), logits(a0), logits((a0, a1))
        assert not np.allclose(one, both) and not np.allclose(plain, both)
        assert not np.allclose(logits(a1), both)
        assert np.array_equal(logits((a0, a1)), both)  # switching back gives the same weights
        assert np.array_equal(logits(a0), one)
        assert ctx.adapter is a0 and ctx.adapters == (a0,)
        ctx.clear()
        key = STACK_SEP.join((s0, s1))
        runtime.generate(prompt, key="bram", max_tokens=2, adapter=(a0, a1), adapter_key=key)
        assert ctx.adapters == (a0, a1) and ctx.adapter is None
        assert any(s.key == (key, "bram") for s in runtime.slots)
        runtime.forget_adapter(s1)  # the stack's prefixes go with either of its adapters
        assert not any(isinstance(s.key, tuple) and s.key[0] == key for s in runtime.slots)
        assert ctx.adapters == ()
    finally:
        ctx.set_adapter(None)
        ctx.clear()  # the raw decodes above bypassed the runtime's prefix bookkeeping
        for slot in runtime.slots:
            slot.key, slot.tokens, slot.used = None, [], 0
        pool.close()


@pytest.mark.model
def test_pool_refuses_unverifiable_skins(runtime, three_skins):
    from npc.adapters import AdapterPool
    store, (s0, *_) = three_skins
    with pytest.raises(SkinError, match="not installed"):
        AdapterPool(runtime, store).get("ab" * 32)
    with pytest.raises(SkinError, match="wrong base model"):
        AdapterPool(runtime, store, base_model="0" * 64).get(s0)


def _ask(voice, state, skin, words="Good morning."):
    from engine.dialogue import build_request
    state.npc("bram").skin = skin
    return voice.respond(build_request(state, "bram", words))


@pytest.mark.model
@pytest.mark.slow
def test_voice_speaks_through_the_skin_an_npc_wears(runtime, three_skins, base):
    from engine.dialogue import DialogueProposal
    from engine.world import new_game
    from npc.adapters import AdapterPool
    from npc.voice import ModelVoice
    store, (s0, *_) = three_skins
    pool = AdapterPool(runtime, store)
    voice = ModelVoice(runtime, max_tokens=3, pool=pool, base_model=base[0].blake3)
    try:
        assert isinstance(_ask(voice, new_game(seed=1), s0), DialogueProposal)
        assert voice.failed_skins == {} and pool.loaded == [s0]
        assert any(s.key == (s0, "bram") for s in runtime.slots)
    finally:
        pool.close()


@pytest.mark.model
@pytest.mark.slow
def test_voice_falls_back_to_the_base_voice(runtime, three_skins, base, caplog):
    from engine.dialogue import DialogueProposal
    from engine.world import new_game
    from npc.adapters import AdapterPool
    from npc.voice import ModelVoice
    store, (s0, *_) = three_skins
    state = new_game(seed=1)
    voice = ModelVoice(runtime, max_tokens=3, pool=AdapterPool(runtime, store),
                       base_model=base[0].blake3)
    missing = "cd" * 32
    with caplog.at_level("WARNING", logger="hearth.skins"):
        assert isinstance(_ask(voice, state, missing), DialogueProposal)  # the base voice
        assert isinstance(_ask(voice, state, missing), DialogueProposal)
    assert "not installed" in voice.failed_skins[missing]
    assert sum(missing in r.getMessage() for r in caplog.records) == 1  # logged once
    assert any(s.key == (None, "bram") for s in runtime.slots)
    wrong_base = ModelVoice(runtime, max_tokens=3, pool=AdapterPool(runtime, store),
                            base_model="0" * 64)
    assert isinstance(_ask(wrong_base, state, s0, "Hi."), DialogueProposal)
    assert "wrong base model" in wrong_base.failed_skins[s0]
    no_pool = ModelVoice(runtime, max_tokens=3)
    assert isinstance(_ask(no_pool, state, s0, "Hi."), DialogueProposal)
    assert s0 in no_pool.failed_skins

# ---- the command line -------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_id(tmp_path):
    r = hearth("id", home=tmp_path)
    assert r.returncode == 0, r.stderr
    key = load_or_create_identity(tmp_path).public_hex
    assert key in r.stdout and "creator.ed25519" in r.stdout and "cannot be recovered" in r.stdout
    r2 = hearth("id", "--json", home=tmp_path)
    assert json.loads(r2.stdout)["public_key"] == key


def test_cli_install_list_wear_lineage(chain, hearth_home, tmp_path, capsys):
    links, creators = chain
    (a, a_id), (b, b_id), (c, c_id) = links
    # The first install runs as its own process; the further commands run the same command lines
    # on the same home in this process (hearth_here).
    r = hearth("skin", "install", str(a), home=hearth_home)
    assert r.returncode == 0 and a_id in r.stdout, r.stderr
    for path, sid in links[1:]:
        r = hearth_here(capsys, "skin", "install", path)
        assert r.returncode == 0 and sid in r.stdout, r.stderr
    r = hearth_here(capsys, "skin", "install", a)
    assert r.returncode == 0 and "already installed" in r.stdout
    r = hearth_here(capsys, "skin", "list", "--json")
    listed = {s["id"]: s for s in json.loads(r.stdout)}
    assert {a_id, b_id, c_id} <= set(listed) and listed[b_id]["parent"] == a_id
    r = hearth_here(capsys, "skin", "list")
    assert "Sly Sad Smith" in r.stdout and c_id[:16] in r.stdout
    r = hearth_here(capsys, "skin", "verify", c_id[:10])
    assert r.returncode == 0 and r.stdout == c_id + "\n", r.stderr

    save = tmp_path / "g.save"
    r = hearth_here(capsys, "skin", "wear", "bram", c_id[:12], "--save", save)
    assert r.returncode == 0 and "Sly Sad Smith" in r.stdout, r.stderr
    doc = json.loads(hearth_here(capsys, "state", "--save", save, "--json").stdout)
    assert {n["id"]: n["skin"] for n in doc["npcs"]}["bram"] == c_id
    r = hearth_here(capsys, "skin", "wear", "bram", "none", "--save", save)
    assert r.returncode == 0, r.stderr
    doc = json.loads(hearth_here(capsys, "state", "--save", save, "--json").stdout)
    assert {n["id"]: n["skin"] for n in doc["npcs"]}["bram"] is None
    for bad, why in [(["ghost", c_id], "unknown npc"), (["bram", "ab" * 32], "no installed skin")]:
        r = hearth_here(capsys, "skin", "wear", *bad, "--save", save)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr

    r = hearth_here(capsys, "skin", "lineage", c_id, "--json")
    doc = json.loads(r.stdout)
    assert [x["id"] for x in doc["chain"]] == [c_id, b_id, a_id]
    assert [Fraction(x["fraction"]) for x in doc["split"]] == [Fraction(3, 4), Fraction(7, 40),
                                                              Fraction(3, 40)]
    r = hearth_here(capsys, "skin", "lineage", c_id[:8])
    assert r.returncode == 0, r.stderr
    assert "75.00%" in r.stdout and "17.50%" in r.stdout and "7.50%" in r.stdout
    assert creators[0].public_hex[:16] in r.stdout


@pytest.mark.slow
def test_cli_train_refuses_bad_input_before_training(tmp_path, hearth_home):
    data = tmp_path / "d.jsonl"
    r = hearth("skin", "train", "--data", str(data), "--name", "x", "--out", str(tmp_path / "o"),
               home=hearth_home)
    assert r.returncode == 2 and "d.jsonl: no such file" in r.stderr
    data.write_text('{"user": "hi", "npc": "hello"}\n')
    r = hearth("skin", "train", "--data", str(data), "--name", "x", "--out", str(tmp_path / "o"),
               "--royalty", "0.5", home=hearth_home)
    assert r.returncode == 2 and "give a parent" in r.stderr
    r = hearth("skin", "train", "--data", str(data), "--name", "x", "--out", str(tmp_path / "o"),
               "--parent", "ab" * 32, home=hearth_home)
    assert r.returncode == 2 and "no installed skin" in r.stderr and "Traceback" not in r.stderr


def test_cli_train_bundles_and_signs_what_the_trainer_made(base, hearth_home, tmp_path,
                                                             monkeypatch, capsys):
    """The command's wiring, with a stand-in trainer (training itself is tested with it)."""
    import types
    from dataclasses import dataclass

    from game.cli import main
    calls = {}

    @dataclass
    class Result:
        adapter_gguf: Path
        peft_dir: Path
        summary: TrainingSummary

    def train_lora(base_gguf, data, work_dir, *, steps, rank, progress=True, init_from=None):
        calls.update(base_gguf=base_gguf, data=data, steps=steps, rank=rank, init_from=init_from)
        return Result(write_adapter(work_dir / "a.gguf", base[2], rank=rank),
                      write_peft(work_dir / "peft", rank=rank),
                      TrainingSummary(steps=steps, rank=rank, final_loss=1.25, examples=1))

    monkeypatch.setitem(sys.modules, "npc.skins.train",
                        types.SimpleNamespace(train_lora=train_lora))
    monkeypatch.setenv("HEARTH_HOME", str(hearth_home))
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "hello"}]}\n')
    out = tmp_path / "bundle"
    code = main(["skin", "train", "--data", str(data), "--name", "Quiet Smith", "--out", str(out),
                 "--steps", "3", "--rank", "2", "--description", "few words"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    sid = captured.out.strip()
    assert calls == {"base_gguf": base[1], "data": data, "steps": 3, "rank": 2, "init_from": None}
    v = verify_bundle(out, base_model=base[0].blake3, base_gguf=base[1])
    assert v.skin_id == sid and v.manifest.name == "Quiet Smith"
    assert v.manifest.training.final_loss == 1.25 and v.manifest.description == "few words"
    assert v.manifest.creator == load_or_create_identity().public_hex


# ---- composed stacks ---------------------------------------------------------------------------

def _lora_deltas(path: Path) -> dict[str, np.ndarray]:
    """{weight: scale * B @ A} of a GGUF LoRA, in float64."""
    r = gguf.GGUFReader(str(path))
    alpha = float(r.fields["adapter.lora.alpha"].contents())
    t = {x.name: np.asarray(x.data).astype(np.float64) for x in r.tensors}
    out = {}
    for name in t:
        if name.endswith(".lora_a"):
            w = name[:-len(".lora_a")]
            a, b = t[name], t[w + ".lora_b"]
            out[w] = (alpha / a.shape[0] if alpha else 1.0) * (b @ a)
    return out


# Equal scales over the same weights fold to 1 and stay F16; other scales, or a top layer that
# touches fewer weights (so composed ranks differ by weight), are folded into B in F32.
@pytest.mark.parametrize("ranks,alphas,top_layers,dtype", [((4, 4), (8.0, 8.0), (0, 1), "F16"),
                                                           ((4, 2), (8.0, 12.0), (0, 1), "F32"),
                                                           ((4, 4), (8.0, 8.0), (1,), "F32")])
def test_a_composed_adapter_is_the_sum_of_its_layers(tmp_path, ranks, alphas, top_layers, dtype):
    from npc.skins.compose import compose
    shapes = {f"blk.{i}.{n}.weight": (24, 16) for i in (0, 1) for n in TARGETS}
    paths = []
    for i, (rank, alpha) in enumerate(zip(ranks, alphas)):
        p = write_adapter(tmp_path / f"l{i}.gguf", shapes, rank=rank, seed=i,
                          layers=(0, 1) if i == 0 else top_layers)
        # Rewritten in F16 (as shipped adapters are) with this layer's alpha.
        rw = gguf.GGUFReader(str(p))
        w = gguf.GGUFWriter(str(p) + ".x", arch="llama")
        w.add_type("adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", alpha)
        for x in rw.tensors:
            w.add_tensor(x.name, np.asarray(x.data).astype(np.float16))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
        w.close()
        Path(str(p) + ".x").replace(p)
        paths.append(p)
    out = compose(paths, tmp_path / "c.gguf")
    got, want = _lora_deltas(out), {}
    for p in paths:
        for name, d in _lora_deltas(p).items():
            want[name] = want.get(name, 0) + d
    assert set(got) == set(want)
    for name in want:
        assert np.allclose(got[name], want[name], rtol=1e-5, atol=1e-9), name
    r = gguf.GGUFReader(str(out))
    assert {x.tensor_type.name for x in r.tensors} == {dtype}
    assert r.fields["general.type"].contents() == "adapter"


def test_composing_refuses_layers_that_do_not_fit(tmp_path):
    from npc.skins.compose import compose
    a = write_adapter(tmp_path / "a.gguf", {f"blk.{i}.{n}.weight": (24, 16)
                                            for i in (0, 1) for n in TARGETS})
    b = write_adapter(tmp_path / "b.gguf", {f"blk.{i}.{n}.weight": (24, 20)
                                            for i in (0, 1) for n in TARGETS})
    with pytest.raises(SkinError, match="24x20|24x16"):
        compose([a, b], tmp_path / "c.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(SkinError, match="junk.gguf"):
        compose([a, tmp_path / "junk.gguf"], tmp_path / "c.gguf")
    assert not (tmp_path / "c.gguf").exists()


@pytest.mark.model
def test_a_stack_is_worn_as_one_composed_adapter(runtime, three_skins, base):
    """The pirate skin over the village voice (the shipped adapters), worn as a stack and as the
    pool's composed adapter: the same sum of deltas, only added in another order."""
    from assets import ASSETS_DIR
    from npc.adapters import AdapterPool, stack_key
    store, (s0, _, _) = three_skins
    village, pirate = (store.install(ASSETS_DIR / d, base_model=base[0].blake3, base_gguf=base[1])
                       for d in ("village/bundle", "skins/bundles/pirate"))
    pool = AdapterPool(runtime, store, base_model=base[0].blake3, max_loaded=4)
    ctx = runtime.ctx
    prompt = runtime.tokenize_segments([("Hello there, smith. What do you sell?", False)])

    def logits(adapter):
        ctx.set_adapter(adapter)
        ctx.clear()
        ctx.decode(prompt, seq=0, pos0=0)
        return ctx.logits().copy()

    def gap(x, y):
        return float(np.abs(x - y).max())

    key = stack_key((village, pirate))
    try:
        v, p = pool.get(village), pool.get(pirate)
        stacked, top_alone = logits((v, p)), logits(p)
        composed_adapter = pool.get(key)
        composed = logits(composed_adapter)
        assert composed_adapter.key == key and len(list(pool.stacks_dir.glob("*.gguf"))) == 1
        # The deltas are equal (test above); llama.cpp adds them in another order, which shows
        # through the quantized activations as noise far below what the lower layer changes.
        # (Both agree with PyTorch equally well: tests/test_skin_training.py.)
        print(f"\nstacked vs composed {gap(stacked, composed):.3f}, "
              f"vs the top layer alone {gap(stacked, top_alone):.3f}")
        assert gap(stacked, composed) < 0.2 * gap(stacked, top_alone)
        assert np.corrcoef(stacked, composed)[0, 1] > 0.995
        assert int(stacked.argmax()) == int(composed.argmax())
        ctx.clear()
        runtime.generate(prompt, key="bram", max_tokens=2, adapter=composed_adapter,
                         adapter_key=key)
        assert any(s.key == (key, "bram") for s in runtime.slots)
        runtime.forget_adapter(key)  # the composed adapter's own key forgets its prefixes
        assert not any(isinstance(s.key, tuple) and s.key[0] == key for s in runtime.slots)
        # A damaged cached composition is made again, not trusted.
        pool.close()
        cached = next(pool.stacks_dir.glob("*.gguf"))
        cached.write_bytes(b"GGUF" + b"\0" * 64)
        again = logits(pool.get(key))
        assert np.array_equal(again, composed)
        with pytest.raises(SkinError, match="twice"):
            pool.get(stack_key((s0, s0)))
        with pytest.raises(SkinError, match="not installed"):
            pool.get(stack_key((s0, "ab" * 32)))
    finally:
        ctx.set_adapter(None)
        ctx.clear()
        for slot in runtime.slots:
            slot.key, slot.tokens, slot.used = None, [], 0
        pool.close()
