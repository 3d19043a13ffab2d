"""A thin, typed wrapper over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

The high-level ``Llama`` class hides the knobs Hearth needs: ``use_extra_bufts`` (the AMX/repack
buffer types crash multi-token batches on some CPUs), several KV sequences in one context (one
per cached persona prefix), per-request LoRA adapters, and direct access to logits for our own
constrained sampler. Every ctypes call the rest of ``npc`` needs goes through here.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# How llama.cpp's OpenMP workers wait (read once, when the OpenMP runtime starts, i.e. before
# llama_cpp loads). Left to spin, they take the cores the game thread needs for its frames between
# tokens; told to sleep at once (spin 0), every per-node barrier inside a token costs a futex
# round trip, which made 2-thread decode 3-8x slower than 1 thread. A short spin keeps barriers
# cheap and lets workers sleep soon after a decode ends (tools/bench/threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import llama_cpp as C  # noqa: E402

_backend_lock = threading.Lock()
_backend_ready = False
_log_cb = None


def _silence_logs() -> None:
    global _log_cb

    @C.llama_log_callback
    def _discard(level, text, user_data):  # llama.cpp prints a lot to stderr by default
        return None

    _log_cb = _discard  # keep a reference: the C side holds the pointer
    C.llama_log_set(_log_cb, ctypes.c_void_p(0))


class _Glibc:
    """Allocator policy around llama.cpp's graph re-planning (glibc only; elsewhere a no-op).

    After an adapter switch llama.cpp re-plans its compute graph on the next decode, freeing and
    reallocating multi-megabyte blocks. Under glibc's sliding mmap threshold those blocks land on
    the heap and fragment it: resident memory crept up by ~150 MiB with 64 skins worn in turn
    (tools/bench/skins.py). During that one decode, blocks of 1 MiB or more get mappings of
    their own, which go back to the system when the next re-plan frees them. Between re-plans
    the thresholds are glibc's own ceilings (32 MiB mmap, 64 MiB trim), so PyTorch and numpy in
    the same process keep reusing heap memory as they would under the sliding default (a 1 MiB
    threshold everywhere made training ten times slower)."""

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    REPLAN, STEADY, TRIM = 1 << 20, 32 << 20, 64 << 20

    def __init__(self):
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # noqa: B018  (AttributeError when not glibc)
            self.mallopt = libc.mallopt
        except (OSError, AttributeError):
            self.mallopt = None
        self.lock = threading.Lock()
        self.steady_set = False

    def replan(self, call):
        if self.mallopt is None:
            return call()
        with self.lock:
            if not self.steady_set:
                self.mallopt(self.M_TRIM_THRESHOLD, self.TRIM)
                self.steady_set = True
            self.mallopt(self.M_MMAP_THRESHOLD, self.REPLAN)
            try:
                return call()
            finally:
                self.mallopt(self.M_MMAP_THRESHOLD, self.STEADY)


_glibc = _Glibc()


def backend_init(quiet: bool = True) -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            if quiet:
                _silence_logs()
            C.llama_backend_init()
            _backend_ready = True


class LlamaError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadOptions:
    use_extra_bufts: bool = False
    n_ctx: int = 4096
    n_batch: int = 512
    n_seq_max: int = 8
    n_threads: int = 2
    #: Threads for multi-token batches (prefill); 0: as ``n_threads``.
    n_threads_batch: int = 0
    flash_attn: bool = False
    kv_unified: bool = False


class Model:
    """A loaded GGUF model (weights only)."""

    def __init__(self, path: Path | str, use_extra_bufts: bool = False):
        backend_init()
        self.path = Path(path)
        if not self.path.is_file():
            raise LlamaError(f"model file not found: {self.path}")
        mp = C.llama_model_default_params()
        mp.use_extra_bufts = use_extra_bufts
        mp.n_gpu_layers = 0
        self.ptr = C.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.ptr:
            raise LlamaError(f"llama.cpp could not load {self.path} (not a GGUF model, or damaged)")
        self.vocab = C.llama_model_get_vocab(self.ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self._pieces: list[bytes] | None = None

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        arr = (C.llama_token * n_max)()
        n = C.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            arr = (C.llama_token * n_max)()
            n = C.llama_tokenize(self.vocab, data, len(data), arr, n_max, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    @property
    def pieces(self) -> list[bytes]:
        """Every token's bytes (computed once; the constrained sampler indexes it)."""
        if self._pieces is None:
            self._pieces = [self.piece(t) for t in range(self.n_vocab)]
        return self._pieces

    def is_control(self, token: int) -> bool:
        """A control token, or a user-defined one written like one (``<...>``): it stands for a
        meaning, not for its characters, so a grammar must never produce it as text."""
        attr = C.llama_vocab_get_attr(self.vocab, token)
        if attr & C.LLAMA_TOKEN_ATTR_CONTROL:
            return True
        if not attr & C.LLAMA_TOKEN_ATTR_USER_DEFINED:
            return False
        text = self.piece(token, special=True)
        return text[:1] == b"<" and text[-1:] == b">"

    @staticmethod
    def tokenize_address() -> int:
        """The address of llama.cpp's ``llama_tokenize``, for native code (llguidance) that
        tokenizes with this model's vocabulary itself."""
        return ctypes.cast(C.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` (special tokens rendered as their text)."""
        return b"".join(self.piece(t, special=True) for t in tokens).decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF (``tokenizer.chat_template``), if any."""
        tmpl = C.llama_model_chat_template(self.ptr, None)
        return tmpl.decode("utf-8") if tmpl else None

    def apply_chat_template(self, messages: list[tuple[str, str]], add_assistant: bool = True) -> str:
        """``messages`` ((role, content) pairs) rendered with the model's own chat template by
        llama.cpp's built-in template engine, ending with the assistant's opening when asked."""
        tmpl = C.llama_model_chat_template(self.ptr, None)
        if not tmpl:
            raise LlamaError(f"{self.path.name} has no chat template")
        keep = [(r.encode("utf-8"), c.encode("utf-8")) for r, c in messages]
        arr = (C.llama_chat_message * max(1, len(keep)))()
        for i, (r, c) in enumerate(keep):
            arr[i].role, arr[i].content = r, c
        size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = C.llama_chat_apply_template(tmpl, arr, len(keep), add_assistant, buf, size)
            if n < 0:
                raise LlamaError("llama.cpp does not support this model's chat template")
            if n <= size:
                return buf.raw[:n].decode("utf-8")
            size = n
        raise LlamaError("chat template output kept growing")

    def close(self) -> None:
        if getattr(self, "ptr", None):
            C.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Adapter:
    """A LoRA adapter loaded against one model."""

    def __init__(self, model: Model, path: Path | str, key: str | None = None):
        self.path = Path(path)
        self.model = model
        #: Stable name for caches (a skin id); defaults to the file path.
        self.key = key or str(self.path)
        self.ptr = C.llama_adapter_lora_init(model.ptr, str(self.path).encode())
        if not self.ptr:
            raise LlamaError(f"llama.cpp rejected the adapter {self.path} "
                             f"(not a LoRA GGUF for this model, or damaged)")

    def close(self) -> None:
        if getattr(self, "ptr", None):
            C.llama_adapter_lora_free(self.ptr)
            self.ptr = None


class Context:
    """One llama.cpp context: a KV cache with ``n_seq_max`` independent sequences."""

    def __init__(self, model: Model, opts: LoadOptions):
        self.model = model
        self.opts = opts
        cp = C.llama_context_default_params()
        cp.n_ctx = opts.n_ctx
        cp.n_batch = opts.n_batch
        cp.n_ubatch = opts.n_batch
        cp.n_seq_max = opts.n_seq_max
        cp.n_threads = opts.n_threads
        cp.n_threads_batch = opts.n_threads_batch or opts.n_threads
        cp.flash_attn_type = (C.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts.flash_attn
                              else C.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cp.kv_unified = opts.kv_unified
        cp.no_perf = True
        self.ptr = C.llama_init_from_model(model.ptr, cp)
        if not self.ptr:
            raise LlamaError("llama.cpp could not create a context")
        self.mem = C.llama_get_memory(self.ptr)
        self.n_ctx = C.llama_n_ctx(self.ptr)
        self.n_ctx_seq = self.n_ctx // opts.n_seq_max if not opts.kv_unified else self.n_ctx
        self._batch = C.llama_batch_init(opts.n_batch, 0, opts.n_seq_max)
        self._stack: tuple[Adapter, ...] = ()
        #: The adapter set changed, so llama.cpp re-plans its graph on the next decode.
        self._replan = False
        self._abort = threading.Event()
        self._abort_flag: AbortFlag | None = None

    # -- adapters ------------------------------------------------------------------------------

    def set_adapter(self, adapter: Adapter | tuple[Adapter, ...] | None, scale: float = 1.0) -> None:
        """Apply one adapter, a stack of adapters (each at ``scale``, their deltas summed), or
        none, from the next decode on."""
        stack = () if adapter is None else adapter if isinstance(adapter, tuple) else (adapter,)
        if len(stack) == len(self._stack) and all(a is b for a, b in zip(stack, self._stack)):
            return
        if not stack:
            C.llama_set_adapters_lora(self.ptr, None, 0, None)
        else:
            arr = (C.llama_adapter_lora_p_ctypes * len(stack))(*(a.ptr for a in stack))
            scales = (ctypes.c_float * len(stack))(*([scale] * len(stack)))
            rc = C.llama_set_adapters_lora(self.ptr, arr, len(stack), scales)
            if rc != 0:
                raise LlamaError(f"llama.cpp refused adapter(s) {[str(a.path) for a in stack]}")
        self._stack = stack
        self._replan = True

    @property
    def adapter(self) -> Adapter | None:
        """The adapter applied alone (None when none or a stack is applied)."""
        return self._stack[0] if len(self._stack) == 1 else None

    @property
    def adapters(self) -> tuple[Adapter, ...]:
        return self._stack

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        """Threads for single-token decodes and for multi-token batches, from the next decode on."""
        C.llama_set_n_threads(self.ptr, n_threads, n_threads_batch)

    # -- KV cache ------------------------------------------------------------------------------

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        C.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def clear(self) -> None:
        C.llama_memory_clear(self.mem, True)

    # -- decoding ------------------------------------------------------------------------------

    def _llama_decode(self, batch) -> int:
        if self._replan:  # this decode re-plans the graph for the new adapter set
            self._replan = False
            return _glibc.replan(lambda: C.llama_decode(self.ptr, batch))
        return C.llama_decode(self.ptr, batch)

    def decode(self, tokens: list[int], seq: int, pos0: int, logits_last: bool = True,
               all_logits: bool = False) -> None:
        """Feed tokens of one sequence starting at position ``pos0``, in ``n_batch`` chunks."""
        nb = self.opts.n_batch
        for start in range(0, len(tokens), nb):
            chunk = tokens[start: start + nb]
            b = self._batch
            for i, t in enumerate(chunk):
                b.token[i] = t
                b.pos[i] = pos0 + start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = all_logits or (logits_last and start + i == len(tokens) - 1)
            b.n_tokens = len(chunk)
            rc = self._llama_decode(b)
            if rc != 0:
                raise LlamaError(f"llama_decode failed ({rc})")

    def decode_entries(self, entries: list[tuple[int, int, int, bool]]) -> int:
        """One ``llama_decode`` over (token, seq, pos, wants logits) entries of any sequences.
        Returns 0, or 2 when the abort flag stopped it (ubatches already computed stay in the KV
        cache; the caller rolls them back). Other failures raise."""
        if not entries or len(entries) > self.opts.n_batch:
            raise LlamaError(f"a batch holds 1 to {self.opts.n_batch} tokens, not {len(entries)}")
        b = self._batch
        for i, (t, seq, pos, want) in enumerate(entries):
            b.token[i] = t
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want
        b.n_tokens = len(entries)
        rc = self._llama_decode(b)
        if rc not in (0, 2):
            raise LlamaError(f"llama_decode failed ({rc})")
        return rc

    def abort_flag(self) -> "AbortFlag":
        """A flag that, once set, stops the running ``llama_decode`` between graph nodes (it
        returns 2). Installed on first use; the check runs in C, never in Python."""
        if self._abort_flag is None:
            self._abort_flag = AbortFlag()
            C.llama_set_abort_callback(self.ptr, self._abort_flag.callback, self._abort_flag.data)
        return self._abort_flag

    def seq_pos_max(self, seq: int) -> int:
        """The last position held for ``seq`` in the KV cache (-1 when empty)."""
        return int(C.llama_memory_seq_pos_max(self.mem, seq))

    def logits(self, i: int = -1) -> np.ndarray:
        ptr = C.llama_get_logits_ith(self.ptr, i)
        if not ptr:
            raise LlamaError("no logits for that batch position")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def close(self) -> None:
        if getattr(self, "ptr", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self.ptr)
            self.ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class AbortFlag:
    """llama.cpp's abort callback without Python in the loop.

    ggml calls the callback between graph nodes from its compute thread; a Python callback there
    would take the GIL hundreds of times per decode and wait behind any busy Python thread. The
    callback is libc's ``strlen`` over a two-byte buffer (the flag, then a NUL): it returns 1
    while the flag byte is set and 0 otherwise, read straight from memory."""

    _strlen = None

    def __init__(self):
        if AbortFlag._strlen is None:
            libc = ctypes.CDLL(None)
            AbortFlag._strlen = C.ggml_abort_callback(ctypes.cast(libc.strlen, ctypes.c_void_p).value)
        self.callback = AbortFlag._strlen
        self._buf = ctypes.create_string_buffer(2)
        self.data = ctypes.cast(self._buf, ctypes.c_void_p)

    def set(self) -> None:
        self._buf[0] = b"\x01"

    def clear(self) -> None:
        self._buf[0] = b"\x00"

    def is_set(self) -> bool:
        return self._buf.raw[0] != 0


def quantize(src: Path | str, dst: Path | str, ftype: int, nthread: int = 2) -> None:
    """Requantize a GGUF model (``ftype`` is a ``LLAMA_FTYPE_MOSTLY_*`` value)."""
    backend_init()
    qp = C.llama_model_quantize_default_params()
    qp.nthread = nthread
    qp.ftype = ftype
    qp.allow_requantize = True
    rc = C.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(qp))
    if rc != 0:
        raise LlamaError(f"quantizing {src} failed ({rc})")
