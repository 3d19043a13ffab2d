"""Choosing the fastest stable llama.cpp configuration for this machine, by measurement.

Candidates are the shipped quantization and requantized copies (Q4_0, Q8_0), each loaded with and
without llama.cpp's extra buffer types (the AMX/repack kernels, which crash multi-token batches
on some CPUs). Each candidate runs in its own subprocess (``npc.probe``), so a crash only rules
that candidate out, and is measured at several thread counts. Decoding (a token at a time, for
as long as a line takes) runs beside the game thread, so its thread count leaves one core to the
game; prefill (a short burst) may use every core. The choice is recorded per (base model,
llama.cpp build, CPU) and reused.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import blake3
import msgspec

from common.files import atomic_write
from npc.store import ModelRecord, ModelStore

#: Latency of a typical turn: uncached prompt tokens and spoken tokens.
TURN_PREFILL_TOKENS = 120
TURN_DECODE_TOKENS = 40
PROBE_TIMEOUT_S = 240
#: Bumped when what is measured changes, so older records are measured again.
TUNING_VERSION = 2
REQUANT = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


class Speed(msgspec.Struct):
    prefill_tps: float = 0.0
    decode_tps: float = 0.0


class Candidate(msgspec.Struct):
    quantization: str
    use_extra_bufts: bool
    model: str
    ok: bool
    error: str | None = None
    #: At the thread counts chosen for each phase.
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    decode_threads: int = 0
    batch_threads: int = 0
    by_threads: dict[int, Speed] = {}

    @property
    def turn_s(self) -> float:
        if not self.ok or self.prefill_tps <= 0 or self.decode_tps <= 0:
            return float("inf")
        return TURN_PREFILL_TOKENS / self.prefill_tps + TURN_DECODE_TOKENS / self.decode_tps


class RuntimeChoice(msgspec.Struct):
    key: str
    base: str
    model: str
    quantization: str
    use_extra_bufts: bool
    n_threads: int
    prefill_tps: float
    decode_tps: float
    measured_at: float
    candidates: list[Candidate] = []
    #: Threads for prefill batches (``n_threads`` is for decoding); 0 in older records: the same.
    n_threads_batch: int = 0


def thread_counts(cores: int) -> list[int]:
    """Thread counts worth measuring on ``cores`` cores (at most 8 are used)."""
    n = max(1, min(cores, 8))
    return sorted({1, max(1, n - 1), n})


def pick_threads(by_threads: dict[int, Speed], cores: int) -> tuple[int, int]:
    """(decode threads, prefill threads): the fastest measured count for each phase, decoding on
    at most all cores but one so the game thread keeps a core to itself while a line is spoken."""
    decode_max = max(1, min(cores, 8) - 1)
    usable = {t: s for t, s in by_threads.items() if s.prefill_tps > 0 and s.decode_tps > 0}
    if not usable:
        raise ValueError("no thread count was measured")
    dec = [t for t in usable if t <= decode_max] or [min(usable)]
    return (max(dec, key=lambda t: (usable[t].decode_tps, -t)),
            max(usable, key=lambda t: (usable[t].prefill_tps, -t)))


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def build_signature() -> str:
    """What the measurement depends on: the llama.cpp build and features, and the CPU."""
    from npc.llama import C as llama_cpp  # after npc.llama's OpenMP settings
    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else str(info)
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") or line.startswith("flags"):
                cpu += line
    except OSError:
        pass
    return f"{llama_cpp.__version__}|{info}|{cpu}|{os.cpu_count()}"


def _choices_path(store: ModelStore) -> Path:
    return store.root.parent / "runtime-choice.json"


def _load_choices(store: ModelStore) -> dict[str, RuntimeChoice]:
    p = _choices_path(store)
    try:
        return msgspec.json.decode(p.read_bytes(), type=dict[str, RuntimeChoice])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}


def _save_choices(store: ModelStore, choices: dict[str, RuntimeChoice]) -> None:
    atomic_write(_choices_path(store), msgspec.json.format(msgspec.json.encode(choices)))


def probe(path: Path, use_extra_bufts: bool,
          threads: list[int]) -> tuple[bool, str | None, dict[int, Speed]]:
    env = dict(os.environ)
    try:
        r = subprocess.run([sys.executable, "-m", "npc.probe", str(path), "--extra-bufts",
                            str(int(use_extra_bufts)), "--threads", ",".join(map(str, threads))],
                           capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env,
                           cwd=str(Path(__file__).resolve().parent.parent))
    except subprocess.TimeoutExpired:
        return False, f"timed out after {PROBE_TIMEOUT_S}s", {}
    if r.returncode < 0:
        return False, f"crashed (signal {-r.returncode})", {}
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or ["failed"])[-1][:200], {}
    try:
        return True, None, msgspec.json.decode(r.stdout.strip().splitlines()[-1],
                                               type=dict[int, Speed])
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError):
        return False, "unreadable probe output", {}


def requantized(store: ModelStore, base: ModelRecord, quant: str) -> ModelRecord:
    for rec in store.records():
        if rec.derived_from == base.blake3 and rec.quantization == quant:
            return rec
    from npc.llama import C as llama_cpp
    from npc.llama import quantize
    tmp = store.root / f".{base.blake3}.{quant}.partial"
    quantize(store.path(base.blake3), tmp, getattr(llama_cpp, REQUANT[quant]))
    return store.import_file(tmp, source=f"requantized {base.blake3[:16]} to {quant}",
                             derived_from=base.blake3, move=True)


def choose(store: ModelStore, base: ModelRecord, cores: int | None = None, force: bool = False,
           say: Callable[[str], None] = lambda s: None) -> RuntimeChoice:
    cores = cores or os.cpu_count() or 2
    counts = thread_counts(cores)
    key = blake3.blake3(f"{base.blake3}|{cores}|{TUNING_VERSION}|{build_signature()}"
                        .encode()).hexdigest()[:32]
    choices = _load_choices(store)
    if not force and key in choices and store.path(choices[key].model).is_file():
        return choices[key]
    say("Measuring llama.cpp configurations for this machine (once; about a minute)...")
    files = [(base.quantization, base)]
    for q in REQUANT:
        if q != base.quantization:
            try:
                files.append((q, requantized(store, base, q)))
            except Exception as e:  # a failed requantization only removes a candidate
                say(f"  {q}: requantization failed ({e})")
    cands: list[Candidate] = []
    for quant, rec in files:
        for extra in (False, True):
            ok, err, by = probe(store.path(rec.blake3), extra, counts)
            c = Candidate(quantization=quant, use_extra_bufts=extra, model=rec.blake3, ok=ok,
                          error=err, by_threads=by)
            if ok:
                try:
                    c.decode_threads, c.batch_threads = pick_threads(by, cores)
                    c.prefill_tps = by[c.batch_threads].prefill_tps
                    c.decode_tps = by[c.decode_threads].decode_tps
                except ValueError as e:
                    c.ok, c.error = False, str(e)
            cands.append(c)
            say(f"  {quant:5s} extra_bufts={int(extra)}: " + (
                f"prefill {c.prefill_tps:6.1f} tok/s ({_threads(c.batch_threads)}), decode "
                f"{c.decode_tps:5.1f} tok/s ({_threads(c.decode_threads)}), turn {c.turn_s:.2f}s"
                if c.ok else f"unusable: {c.error}"))
    usable = [c for c in cands if c.ok]
    if not usable:
        raise RuntimeError("no llama.cpp configuration ran on this machine: "
                           + "; ".join(f"{c.quantization}/{int(c.use_extra_bufts)}: {c.error}" for c in cands))
    best = min(usable, key=lambda c: c.turn_s)
    choice = RuntimeChoice(key=key, base=base.blake3, model=best.model,
                           quantization=best.quantization, use_extra_bufts=best.use_extra_bufts,
                           n_threads=best.decode_threads, n_threads_batch=best.batch_threads,
                           prefill_tps=best.prefill_tps, decode_tps=best.decode_tps,
                           measured_at=time.time(), candidates=cands)
    choices[key] = choice
    _save_choices(store, choices)
    # Requantized copies that lost are only disk weight (they can be derived again).
    for quant, rec in files:
        if rec.derived_from and rec.blake3 != best.model:
            store.remove(rec.blake3)
    say(f"Chose {best.quantization} with extra_bufts={int(best.use_extra_bufts)}, "
        f"{best.decode_threads} decode / {best.batch_threads} prefill threads.")
    return choice
