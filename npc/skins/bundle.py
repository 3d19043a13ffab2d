"""Making and checking skin bundles.

A bundle is a directory: ``manifest.json`` and ``manifest.sig`` plus the files the manifest lists
(``adapter.gguf`` for llama.cpp, ``adapter_model.safetensors`` and ``adapter_config.json`` for
PEFT). Verification trusts nothing in the directory until it has checked it, cheapest checks
first: the manifest and its signature, the file list's names and sizes (so an oversized or
hostile bundle is refused before a byte of it is hashed), then every file's BLAKE3, then the
adapter GGUF's header against the base model's. Every failure is a ``SkinError`` that names
the file and the problem.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from common.files import atomic_copy, atomic_write, blake3_file, fsync_dir
from npc.gguf_info import GGUFError, GGUFInfo, TensorInfo, read_gguf
from common.identity import Identity
from npc.skins.manifest import (
    ADAPTER_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
    SIGNATURE_BYTES, SIGNATURE_FILE, FileEntry, SkinError, SkinManifest, TrainingSummary,
    canonical_bytes, decode_manifest, skin_id,
)

#: Largest bundle accepted, counted from the manifest's sizes before anything is hashed. A
#: rank-16 LoRA on every projection of SmolLM2-135M is about 20 MiB in f32 per copy, and a
#: bundle holds two copies (GGUF and PEFT).
MAX_BUNDLE_BYTES = 64 * 1024 * 1024

#: ggml tensor types an adapter may use: type -> (elements per block, bytes per block).
_GGML_SIZES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
               8: (32, 34), 9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144),
               13: (256, 176), 14: (256, 210), 15: (256, 292), 30: (1, 2)}

_ROLE_NAMES = {"adapter_gguf": ADAPTER_FILE, "peft_weights": PEFT_WEIGHTS_FILE,
               "peft_config": PEFT_CONFIG_FILE}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose signature checked out (its files not yet looked at)."""

    skin_id: str
    manifest: SkinManifest
    manifest_bytes: bytes
    signature: bytes


@dataclass(frozen=True)
class VerifiedSkin:
    """A bundle whose signature, files and adapter all checked out."""

    skin_id: str
    manifest: SkinManifest
    path: Path

    @property
    def adapter_path(self) -> Path:
        entry = self.manifest.file("adapter_gguf")
        assert entry is not None  # verify_bundle guarantees one
        return self.path / entry.path


# ---- reading --------------------------------------------------------------------------------------

def _regular_file(path: Path) -> os.stat_result:
    """lstat a bundle file, refusing anything but a plain file (a symlink could point anywhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SkinError(f"{path}: missing from the bundle") from None
    except OSError as e:
        raise SkinError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise SkinError(f"{path}: is a symlink; a bundle holds only plain files")
    if not stat.S_ISREG(st.st_mode):
        raise SkinError(f"{path}: not a regular file")
    return st


def read_signed(bundle: Path | str) -> SignedManifest:
    """Read ``manifest.json`` and ``manifest.sig`` and check the signature against the creator
    key the manifest names. Cheap: no other file is opened."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise SkinError(f"{bundle}: not a skin bundle directory")
    mpath, spath = bundle / MANIFEST_FILE, bundle / SIGNATURE_FILE
    st = _regular_file(mpath)
    if st.st_size > MAX_MANIFEST_BYTES:
        raise SkinError(f"{mpath}: {st.st_size} bytes, too large for a manifest")
    st = _regular_file(spath)
    if st.st_size != SIGNATURE_BYTES:
        raise SkinError(f"{spath}: {st.st_size} bytes, not a {SIGNATURE_BYTES}-byte ed25519 "
                        f"signature")
    data, sig = mpath.read_bytes(), spath.read_bytes()
    manifest = decode_manifest(data, str(mpath))
    try:
        VerifyKey(bytes.fromhex(manifest.creator)).verify(data, sig)
    except (CryptoError, ValueError):
        raise SkinError(f"{spath}: bad signature: it does not verify against the creator key in "
                        f"{MANIFEST_FILE} ({manifest.creator[:16]}…), so the manifest was changed "
                        f"after signing or signed by a different key") from None
    return SignedManifest(skin_id(data, sig), manifest, data, sig)


def _check_file_list(bundle: Path, manifest: SkinManifest) -> None:
    seen: set[str] = set()
    roles: set[str] = set()
    for entry in manifest.files:
        p = entry.path
        where = f"{bundle / MANIFEST_FILE}: file {p!r}"
        if not p:
            raise SkinError(f"{where}: empty path")
        if p.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", p) or os.path.isabs(p):
            raise SkinError(f"{where}: absolute path; bundle files must be inside the bundle")
        parts = re.split(r"[/\\]", p)
        if ".." in parts:
            raise SkinError(f"{where}: path traversal ('..'); bundle files must be inside the "
                            f"bundle")
        if len(parts) > 1 or not _PLAIN_NAME.match(p):
            raise SkinError(f"{where}: not a plain file name")
        if p in (MANIFEST_FILE, SIGNATURE_FILE):
            raise SkinError(f"{where}: the manifest cannot list itself or its signature")
        if p in seen:
            raise SkinError(f"{where}: listed twice")
        if entry.role in roles:
            raise SkinError(f"{where}: a second {entry.role} file")
        seen.add(p)
        roles.add(entry.role)
    if "adapter_gguf" not in roles:
        raise SkinError(f"{bundle / MANIFEST_FILE}: lists no adapter_gguf file (the LoRA that "
                        f"llama.cpp loads)")
    total = sum(e.size for e in manifest.files)
    if total > MAX_BUNDLE_BYTES:
        raise SkinError(f"{bundle / MANIFEST_FILE}: oversized bundle: its files total "
                        f"{total / 2**20:.1f} MiB, over the {MAX_BUNDLE_BYTES // 2**20} MiB limit")


def _check_files(bundle: Path, manifest: SkinManifest) -> None:
    # Every size first (cheap), then the hashes.
    for entry in manifest.files:
        path = bundle / entry.path
        st = _regular_file(path)
        if st.st_size != entry.size:
            raise SkinError(f"{path}: size mismatch: the manifest says {entry.size} bytes, the "
                            f"file has {st.st_size}")
    for entry in manifest.files:
        path = bundle / entry.path
        digest = blake3_file(path)
        if digest != entry.blake3:
            raise SkinError(f"{path}: hash mismatch: BLAKE3 {digest[:16]}…, the manifest says "
                            f"{entry.blake3[:16]}… (damaged or altered)")


# ---- the adapter GGUF --------------------------------------------------------------------------

def _nbytes(t: TensorInfo) -> int | None:
    if t.dtype not in _GGML_SIZES:
        return None
    block, size = _GGML_SIZES[t.dtype]
    n = 1
    for d in t.shape:
        n *= d
    return n // block * size


def inspect_adapter(path: Path | str) -> GGUFInfo:
    """Check that a GGUF is a complete LoRA adapter (type, tensor pairs, data present)."""
    path = Path(path)
    try:
        info = read_gguf(path)
    except GGUFError as e:
        raise SkinError(f"{path}: not a usable GGUF ({e})") from None
    except OSError as e:
        raise SkinError(f"{path}: cannot read ({e.strerror})") from None
    if info.kind != "adapter":
        raise SkinError(f"{path}: not an adapter: general.type is {info.kind!r}, expected "
                        f"'adapter' (a base model cannot be a skin)")
    atype = info.metadata.get("adapter.type")
    if atype != "lora":
        raise SkinError(f"{path}: not a LoRA adapter: adapter.type is {atype!r}, expected 'lora'")
    if not info.tensors:
        raise SkinError(f"{path}: the adapter has no tensors")
    for t in info.tensors:
        n = _nbytes(t)
        if n is None:
            raise SkinError(f"{path}: tensor {t.name} has ggml type {t.dtype}, which Hearth "
                            f"does not accept in an adapter")
        if info.data_offset + t.offset + n > info.file_size:
            raise SkinError(f"{path}: truncated GGUF: the data of tensor {t.name} runs past the "
                            f"end of the file ({info.file_size} bytes)")
    for base_name, (a, b) in _lora_pairs(path, info).items():
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
            raise SkinError(f"{path}: {base_name}: lora_a {_np(a.shape)} and lora_b "
                            f"{_np(b.shape)} do not share a rank")
    return info


def _np(shape: tuple[int, ...]) -> tuple[int, ...]:
    """GGUF lists dimensions fastest-first; numpy (and PEFT) list them the other way round."""
    return tuple(reversed(shape))


def _lora_pairs(path: Path, info: GGUFInfo) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    halves: dict[str, dict[str, TensorInfo]] = {}
    for t in info.tensors:
        for suffix in (".lora_a", ".lora_b"):
            if t.name.endswith(suffix):
                halves.setdefault(t.name[: -len(suffix)], {})[suffix] = t
                break
        else:
            raise SkinError(f"{path}: tensor {t.name} is not a LoRA half (.lora_a or .lora_b)")
    pairs = {}
    for name, h in halves.items():
        if len(h) != 2:
            missing = ".lora_b" if ".lora_a" in h else ".lora_a"
            raise SkinError(f"{path}: tensor {name}{missing} is missing (LoRA tensors come in "
                            f"pairs)")
        pairs[name] = (h[".lora_a"], h[".lora_b"])
    return pairs


@functools.lru_cache(maxsize=4)
def _base_tensors(path: str, mtime_ns: int, size: int) -> tuple[str, dict[str, tuple[int, ...]]]:
    info = read_gguf(path)
    return info.architecture, {t.name: t.shape for t in info.tensors}


def check_against_base(adapter: Path | str, base_gguf: Path | str,
                       info: GGUFInfo | None = None) -> None:
    """The checks llama.cpp makes when it loads a LoRA, done first so the message is useful:
    same architecture, every adapted tensor exists in the base, and the shapes fit.

    In numpy terms a base weight is (out, in), lora_a is (r, in) and lora_b is (out, r); GGUF
    stores each shape reversed."""
    adapter, base_gguf = Path(adapter), Path(base_gguf)
    info = info or inspect_adapter(adapter)
    try:
        st = base_gguf.stat()
        arch, base = _base_tensors(str(base_gguf), st.st_mtime_ns, st.st_size)
    except (OSError, GGUFError) as e:
        raise SkinError(f"{base_gguf}: cannot read the base model ({e})") from None
    if info.architecture != arch:
        raise SkinError(f"{adapter}: adapter for architecture {info.architecture!r}, the base "
                        f"model is {arch!r}")
    for name, (a, b) in _lora_pairs(adapter, info).items():
        w = base.get(name)
        if w is None:
            raise SkinError(f"{adapter}: tensor {name} does not exist in the base model "
                            f"(an adapter for a different model?)")
        if len(w) != 2:
            raise SkinError(f"{adapter}: {name} is not a matrix in the base model")
        if name.endswith("token_embd.weight"):
            ok = w[0] == b.shape[1] and w[1] == a.shape[1]  # llama.cpp keeps A/B flipped here
        else:
            ok = w[0] == a.shape[0] and w[1] == b.shape[1]
        if not ok:
            out, inp = _np(w)
            raise SkinError(f"{adapter}: tensor shapes inconsistent with the base model: {name} "
                            f"is {out}x{inp} (out x in), so lora_a must be (r, {inp}) and "
                            f"lora_b ({out}, r), but they are {_np(a.shape)} and {_np(b.shape)}")


# ---- verification -----------------------------------------------------------------------------

def verify_bundle(path: Path | str, base_model: str | None = None,
                  base_gguf: Path | str | None = None) -> VerifiedSkin:
    """Check a bundle completely. ``base_model`` (a BLAKE3 hex) must match the manifest's base
    when given; ``base_gguf`` (the base model file, or a requantization of it: the shapes are
    the same) enables the tensor shape checks."""
    bundle = Path(path)
    signed = read_signed(bundle)
    m = signed.manifest
    if base_model is not None and m.base_model != base_model:
        raise SkinError(f"{bundle / MANIFEST_FILE}: wrong base model: the skin was made for "
                        f"base model {m.base_model[:16]}…, this one is {base_model[:16]}…")
    _check_file_list(bundle, m)
    _check_files(bundle, m)
    verified = VerifiedSkin(skin_id=signed.skin_id, manifest=m, path=bundle)
    info = inspect_adapter(verified.adapter_path)
    if base_gguf is not None:
        check_against_base(verified.adapter_path, base_gguf, info)
    return verified


# ---- creation ---------------------------------------------------------------------------------

def check_new_bundle(out_dir: Path | str, *, name: str, royalty: float = 0.0,
                     parent: str | None = None) -> None:
    """The checks ``create_bundle`` makes before any work, for callers that have slow work to do
    first (training the adapter)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SkinError(f"{out}: already exists (choose a new directory for the bundle)")
    if not name.strip():
        raise SkinError("a skin needs a name")
    if not 0.0 <= royalty <= 1.0:
        raise SkinError(f"royalty {royalty} is not between 0 and 1")
    if parent is not None and not re.fullmatch(r"[0-9a-f]{64}", parent):
        raise SkinError(f"parent {parent!r} is not a skin id (64 hex digits)")
    if royalty > 0 and parent is None:
        raise SkinError("a royalty flows to the parent skin: give a parent, or a royalty of 0")


def create_bundle(out_dir: Path | str, *, name: str, description: str,
                  adapter_gguf: Path | str, peft_dir: Path | str, base_model: str,
                  identity: Identity, parent: str | None = None, royalty: float = 0.0,
                  license: str = "CC-BY-4.0", training: TrainingSummary | None = None,
                  base_gguf: Path | str | None = None) -> str:
    """Copy an adapter (GGUF and PEFT forms) into a new signed bundle at ``out_dir`` and return
    its skin id. The bundle is assembled in a temp directory beside ``out_dir`` and renamed into
    place, so ``out_dir`` is either absent or complete."""
    out = Path(out_dir)
    adapter_gguf, peft_dir = Path(adapter_gguf), Path(peft_dir)
    check_new_bundle(out, name=name, royalty=royalty, parent=parent)
    sources = {"adapter_gguf": adapter_gguf, "peft_weights": peft_dir / PEFT_WEIGHTS_FILE,
               "peft_config": peft_dir / PEFT_CONFIG_FILE}
    for src in sources.values():
        if not src.is_file():
            raise SkinError(f"{src}: no such file")
    info = inspect_adapter(adapter_gguf)
    if base_gguf is not None:
        check_against_base(adapter_gguf, base_gguf, info)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        files = []
        for role, src in sources.items():
            dst = tmp / _ROLE_NAMES[role]
            atomic_copy(src, dst)
            files.append(FileEntry(path=dst.name, blake3=blake3_file(dst),
                                   size=dst.stat().st_size, role=role))
        manifest = SkinManifest(
            name=name.strip(), description=description, creator=identity.public_hex,
            base_model=base_model, parent=parent, royalty=royalty, license=license,
            created=int(time.time()), training=training or TrainingSummary(), files=files)
        data = canonical_bytes(manifest)
        decode_manifest(data, "the new manifest")  # Struct() does not check constraints; decoding does
        atomic_write(tmp / MANIFEST_FILE, data)
        atomic_write(tmp / SIGNATURE_FILE, identity.sign(data))
        verified = verify_bundle(tmp, base_model=base_model, base_gguf=base_gguf)
        # Every file and the temp directory's entries are durable (the atomic writes fsync
        # both), so the rename publishes a complete bundle.
        try:
            os.rename(tmp, out)  # replaces an empty directory, fails on anything else
        except OSError as e:
            raise SkinError(f"{out}: cannot create the bundle there ({e.strerror})") from None
        fsync_dir(out.parent)
        return verified.skin_id
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
