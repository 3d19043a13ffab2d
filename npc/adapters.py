"""The adapter pool: installed skins loaded as llama.cpp LoRA adapters against the one base model.

Each skin is verified (signature, every hash, base model, tensor shapes) before llama.cpp sees its
adapter, loaded once, and kept until the pool is over its count or byte cap; then the least
recently used adapter is evicted. Eviction tells the runtime to forget the adapter first, so no
cached prefix and no active-adapter pointer outlives the weights. An adapter held for a
generation (``hold``) is never evicted while it is in use.

A stack of skins (ids joined by ``STACK_SEP``, bottom first: a skin worn on top of the village
voice) is loaded as one adapter composed from the verified layers (``npc.skins.compose``), so
wearing it costs one LoRA per weight, not one per layer. Composed files are cached beside the
skin store and made again when missing or refused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import blake3

from npc.llama import Adapter, LlamaError, Model
from npc.runtime import STACK_SEP
from npc.skins.bundle import verify_bundle
from npc.skins.compose import compose
from npc.skins.manifest import SkinError
from npc.skins.store import SkinStore

#: Adapters kept loaded. With Hearth's llama.cpp patch (tools/llama/patches/) a loaded adapter
#: costs its tensors and nothing more: graph bookkeeping and the cost of switching follow the
#: adapter in use, not the number loaded (tools/bench/skins.py measures both with 64 loaded).
DEFAULT_MAX_LOADED = 64
#: Adapter bytes kept in memory (llama.cpp holds each adapter's tensors at about file size),
#: the cap that usually binds: about 100 demo-sized skins.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def load_adapter(model: Model, path: Path | str, key: str) -> Adapter:
    """llama.cpp's own load of a LoRA: the last check, after ``verify_bundle``."""
    try:
        return Adapter(model, path, key=key)
    except LlamaError:
        raise SkinError(f"{path}: llama.cpp could not load the adapter (not a LoRA for this "
                        f"base model, or damaged)") from None


@dataclass
class _Loaded:
    adapter: Adapter
    size: int
    pins: int = 0


def stack_key(layers: Sequence[str]) -> str:
    """The pool's (and the prefix cache's) key for skins worn together, bottom first."""
    return STACK_SEP.join(layers)


class AdapterPool:
    def __init__(self, runtime, skin_store: SkinStore, *, base_model: str | None = None,
                 base_gguf: Path | str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_loaded: int = DEFAULT_MAX_LOADED):
        """``base_model`` is the BLAKE3 of the base model skins must be made for (the runtime may
        run a requantization of it, whose file hash differs). ``base_gguf`` is the file the
        shape checks read; by default the runtime's own model, whose shapes are the base's."""
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.runtime = runtime
        self.store = skin_store
        self.base_model = base_model
        self.base_gguf = Path(base_gguf) if base_gguf is not None else Path(runtime.model.path)
        self.max_bytes = max_bytes
        self.max_loaded = max_loaded
        #: Where composed stacks are cached: beside the skin store.
        self.stacks_dir = skin_store.root.parent / "skin-stacks"
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def loaded(self) -> list[str]:
        """Loaded skin ids, least recently used first."""
        with self._lock:
            return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._loaded.values())

    def get(self, skin_id: str) -> Adapter:
        """The skin's adapter, loading (after full verification) on first use. Raises SkinError
        naming the problem when the skin is not installed, does not verify, or llama.cpp
        refuses it."""
        with self._lock:
            entry = self._loaded.get(skin_id)
            if entry is not None:
                self._loaded.move_to_end(skin_id)
                return entry.adapter
            layers = skin_id.split(STACK_SEP)
            if len(layers) == 1:
                path = self._verified(skin_id)
                adapter = load_adapter(self.runtime.model, path, key=skin_id)
            else:
                path, adapter = self._composed(layers, skin_id)
            self._loaded[skin_id] = _Loaded(adapter, path.stat().st_size)
            self._evict(keep=skin_id)
            return adapter

    def _verified(self, skin_id: str) -> Path:
        """The adapter file of an installed skin, after full verification."""
        if not self.store.is_installed(skin_id):
            raise SkinError(f"skin {skin_id} is not installed")
        verified = verify_bundle(self.store.path(skin_id), base_model=self.base_model,
                                 base_gguf=self.base_gguf)
        if verified.skin_id != skin_id:
            raise SkinError(f"{verified.path}: holds skin {verified.skin_id}, not {skin_id}")
        return verified.adapter_path

    def _composed(self, layers: list[str], key: str) -> tuple[Path, Adapter]:
        """The stack's composed adapter: every layer verified first, the cached composition
        reused when llama.cpp takes it, composed (again) otherwise."""
        if len(set(layers)) != len(layers):
            raise SkinError(f"stack {key}: a skin appears twice")
        paths = [self._verified(layer) for layer in layers]
        out = self.stacks_dir / f"{blake3.blake3(key.encode()).hexdigest()[:32]}.gguf"
        if out.exists():
            try:
                return out, Adapter(self.runtime.model, out, key=key)
            except LlamaError:
                pass  # damaged or from another version: compose it again
        compose(paths, out)
        return out, load_adapter(self.runtime.model, out, key=key)

    @contextmanager
    def hold(self, skin_id: str) -> Iterator[Adapter]:
        """``get``, with the adapter pinned (not evictable) until the block ends. ``skin_id``
        may be a stack (``stack_key``)."""
        with self._lock:
            adapter = self.get(skin_id)
            self._loaded[skin_id].pins += 1
        try:
            yield adapter
        finally:
            with self._lock:
                entry = self._loaded.get(skin_id)
                if entry is not None:
                    entry.pins -= 1
                self._evict()

    def _evict(self, keep: str | None = None) -> None:
        while (len(self._loaded) > self.max_loaded
               or sum(e.size for e in self._loaded.values()) > self.max_bytes):
            victim = next((k for k, e in self._loaded.items() if k != keep and e.pins == 0), None)
            if victim is None:
                return  # everything left is in use (or is the one just asked for)
            self._unload(victim)

    def _unload(self, skin_id: str) -> None:
        entry = self._loaded.pop(skin_id)
        # Forget first: the runtime drops prefixes cached under these weights and, if this is
        # the active adapter, detaches it, before llama.cpp frees it.
        self.runtime.forget_adapter(skin_id)
        entry.adapter.close()

    def close(self) -> None:
        with self._lock:
            for skin_id in list(self._loaded):
                self._unload(skin_id)
