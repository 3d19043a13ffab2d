"""Choosing the fastest stable llama.cpp configuration for this machine, by measurement.

Candidates are the shipped quantization and requantized copies (Q4_0, Q8_0), each loaded with and
without llama.cpp's extra buffer types (the AMX/repack kernels, which crash multi-token batches
on some CPUs). Each candidate runs in its own subprocess (``npc.probe``), so a crash only rules
that candidate out. The choice is recorded per (base model, llama.cpp build, CPU) and reused.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import blake3
import msgspec

from npc.store import ModelRecord, ModelStore

#: Latency of a typical turn: uncached prompt tokens and spoken tokens.
TURN_PREFILL_TOKENS = 120
TURN_DECODE_TOKENS = 40
PROBE_TIMEOUT_S = 180
REQUANT = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


class Candidate(msgspec.Struct):
    quantization: str
    use_extra_bufts: bool
    model: str
    ok: bool
    error: str | None = None
    prefill_tps: float = 0.0
    decode_tps: float = 0.0

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


def build_signature() -> str:
    """What the measurement depends on: the llama.cpp build and features, and the CPU."""
    import llama_cpp
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
    p = _choices_path(store)
    tmp = p.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(choices)))
    os.replace(tmp, p)


def probe(path: Path, use_extra_bufts: bool, threads: int) -> tuple[bool, str | None, dict]:
    env = dict(os.environ)
    try:
        r = subprocess.run([sys.executable, "-m", "npc.probe", str(path), "--extra-bufts",
                            str(int(use_extra_bufts)), "--threads", str(threads)],
                           capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env,
                           cwd=str(Path(__file__).resolve().parent.parent))
    except subprocess.TimeoutExpired:
        return False, f"timed out after {PROBE_TIMEOUT_S}s", {}
    if r.returncode < 0:
        return False, f"crashed (signal {-r.returncode})", {}
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or ["failed"])[-1][:200], {}
    try:
        return True, None, json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, "unreadable probe output", {}


def requantized(store: ModelStore, base: ModelRecord, quant: str) -> ModelRecord:
    for rec in store.records():
        if rec.derived_from == base.blake3 and rec.quantization == quant:
            return rec
    import llama_cpp
    from npc.llama import quantize
    tmp = store.root / f".{base.blake3}.{quant}.partial"
    quantize(store.path(base.blake3), tmp, getattr(llama_cpp, REQUANT[quant]))
    return store.import_file(tmp, source=f"requantized {base.blake3[:16]} to {quant}",
                             derived_from=base.blake3, move=True)


def choose(store: ModelStore, base: ModelRecord, threads: int | None = None, force: bool = False,
           say: Callable[[str], None] = lambda s: None) -> RuntimeChoice:
    threads = threads or max(1, min(os.cpu_count() or 2, 8))
    key = blake3.blake3(f"{base.blake3}|{threads}|{build_signature()}".encode()).hexdigest()[:32]
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
            ok, err, m = probe(store.path(rec.blake3), extra, threads)
            c = Candidate(quantization=quant, use_extra_bufts=extra, model=rec.blake3, ok=ok,
                          error=err, prefill_tps=m.get("prefill_tps", 0.0),
                          decode_tps=m.get("decode_tps", 0.0))
            cands.append(c)
            say(f"  {quant:5s} extra_bufts={int(extra)}: " + (
                f"prefill {c.prefill_tps:6.1f} tok/s, decode {c.decode_tps:5.1f} tok/s, "
                f"turn {c.turn_s:.2f}s" if ok else f"unusable: {err}"))
    usable = [c for c in cands if c.ok]
    if not usable:
        raise RuntimeError("no llama.cpp configuration ran on this machine: "
                           + "; ".join(f"{c.quantization}/{int(c.use_extra_bufts)}: {c.error}" for c in cands))
    best = min(usable, key=lambda c: c.turn_s)
    choice = RuntimeChoice(key=key, base=base.blake3, model=best.model,
                           quantization=best.quantization, use_extra_bufts=best.use_extra_bufts,
                           n_threads=threads, prefill_tps=best.prefill_tps,
                           decode_tps=best.decode_tps, measured_at=time.time(), candidates=cands)
    choices[key] = choice
    _save_choices(store, choices)
    # Requantized copies that lost are only disk weight (they can be derived again).
    for quant, rec in files:
        if rec.derived_from and rec.blake3 != best.model:
            store.remove(rec.blake3)
    say(f"Chose {best.quantization} with extra_bufts={int(best.use_extra_bufts)}.")
    return choice
