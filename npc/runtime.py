"""One base model, one llama.cpp context, many cached prompt prefixes, constrained generation.

The KV cache holds up to ``n_slots`` sequences. Each slot is keyed by (adapter, NPC): a request
reuses the longest token prefix its slot already holds and decodes only the rest. A LoRA swap
does not invalidate llama.cpp's KV cache, so a slot is never shared between adapters.

Generation is greedy. With a ``ReplyGrammar`` it takes the model's top token when the grammar
accepts it and otherwise walks down the ranking (top 64, then the whole vocabulary) until a
token fits: one cheap check per token instead of a grammar pass over 49,152 tokens. Bytes the
grammar forces are appended without sampling.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from npc.grammar import ReplyGrammar
# llama_cpp through npc.llama, whose OpenMP settings must be in place before the library loads.
from npc.llama import Adapter, C, Context, LlamaError, LoadOptions, Model

TOP_K_FIRST = 64
#: A candidate that would repeat a token n-gram already in the reply is passed over (small
#: models loop otherwise).
NO_REPEAT_NGRAM = 3
#: Longer n-grams of given text (the player's words, the NPC's last line) may not be copied either:
#: a small model otherwise parrots the player or repeats itself turn after turn.
NO_COPY_NGRAM = 5
#: Joins the keys of an adapter stack into one prefix-cache key ("village+skin").
STACK_SEP = "+"


@dataclass
class GenResult:
    text: str
    raw: bytes
    n_tokens: int
    n_prompt: int
    n_cached: int
    ttft_s: float
    total_s: float
    cancelled: bool = False
    #: Times the top token broke the grammar and a lower-ranked one was taken.
    grammar_detours: int = 0
    #: Times even the top 64 had no acceptable token and the whole vocabulary was ranked.
    full_scans: int = 0
    #: Time to decode the uncached part of the prompt, and tokens the grammar forced (decoded
    #: without sampling), for per-token accounting.
    prefill_s: float = 0.0
    n_forced: int = 0


@dataclass
class _Slot:
    seq: int
    key: Hashable = None
    tokens: list[int] = field(default_factory=list)
    used: int = 0


class Runtime:
    def __init__(self, model_path: Path | str, use_extra_bufts: bool = False, n_threads: int = 2,
                 n_ctx: int = 8192, n_slots: int = 8, n_batch: int = 512, n_threads_batch: int = 0):
        self.model = Model(model_path, use_extra_bufts=use_extra_bufts)
        self.opts = LoadOptions(use_extra_bufts=use_extra_bufts, n_ctx=n_ctx, n_batch=n_batch,
                                n_seq_max=n_slots, n_threads=n_threads,
                                n_threads_batch=n_threads_batch)
        self.ctx = Context(self.model, self.opts)
        self.slots = [_Slot(seq=i) for i in range(n_slots)]
        self._clock = 0
        self._lock = threading.Lock()
        self.add_bos = bool(C.llama_vocab_get_add_bos(self.model.vocab))
        self.bos = C.llama_vocab_bos(self.model.vocab)
        self.pieces = self.model.pieces
        self.eog = np.array([self.model.is_eog(t) for t in range(self.model.n_vocab)])

    @property
    def seq_capacity(self) -> int:
        return self.ctx.n_ctx_seq

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        toks = [self.bos] if self.add_bos else []
        for text, special in segments:
            toks += self.model.tokenize(text, add_special=False, parse_special=special)
        return toks

    def forget_adapter(self, adapter_key: str) -> None:
        """Drop every cached prefix computed under this adapter, alone or in a stack (whose key
        joins its adapters' keys with ``+``; a composed stack's adapter has that key itself);
        call before freeing it."""
        with self._lock:
            for s in self.slots:
                if (isinstance(s.key, tuple) and s.key and s.key[0]
                        and (s.key[0] == adapter_key
                             or adapter_key in s.key[0].split(STACK_SEP))):
                    self.ctx.seq_rm(s.seq)
                    s.key, s.tokens, s.used = None, [], 0
            if any(getattr(a, "key", None) == adapter_key for a in self.ctx.adapters):
                self.ctx.set_adapter(None)

    def _slot_for(self, key: Hashable) -> _Slot:
        self._clock += 1
        for s in self.slots:
            if s.key == key:
                s.used = self._clock
                return s
        s = min(self.slots, key=lambda s: s.used)  # least recently used
        self.ctx.seq_rm(s.seq)
        s.key, s.tokens, s.used = key, [], self._clock
        return s

    def generate(self, prompt: list[int], key: Hashable, grammar: ReplyGrammar | None = None,
                 max_tokens: int = 64, on_text: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None,
                 adapter: Adapter | tuple[Adapter, ...] | None = None,
                 adapter_key: str | None = None, stop_at_eog: bool = True,
                 avoid: list[list[int]] | None = None, ban: set[int] | None = None) -> GenResult:
        """``adapter`` is one adapter or a stack applied together; ``adapter_key`` names it for
        the prefix cache (a skin id, or a stack's ids joined by ``STACK_SEP``) and must be given
        with an adapter, so a cached prefix is never reused under different weights."""
        adapter, cache_key = _cache_key(adapter, adapter_key, key)
        with self._lock:
            return self._generate(prompt, cache_key, grammar, max_tokens, on_text, cancel, adapter,
                                  stop_at_eog,
                                  _ngram_table(avoid or [], NO_COPY_NGRAM), frozenset(ban or ()))

    def prefill(self, prompt: list[int], key: Hashable,
                adapter: Adapter | tuple[Adapter, ...] | None = None,
                adapter_key: str | None = None) -> int:
        """Compute and cache ``prompt`` in ``key``'s slot without generating (a prompt's stable
        head, ahead of the request that will start with it); returns the tokens computed."""
        adapter, cache_key = _cache_key(adapter, adapter_key, key)
        if not prompt or len(prompt) + 8 > self.seq_capacity:
            return 0
        with self._lock:
            _, n_common = self._prefill(prompt, cache_key, adapter)
        return len(prompt) - n_common

    def _prefill(self, prompt, key, adapter) -> tuple[_Slot, int]:
        """Bring ``key``'s slot to hold exactly ``prompt``, computing only what it does not share
        with what the slot holds; returns the slot and the tokens reused."""
        self.ctx.set_adapter(adapter)
        slot = self._slot_for(key)
        n_common = 0
        for a, b in zip(slot.tokens, prompt):
            if a != b:
                break
            n_common += 1
        n_common = min(n_common, len(prompt) - 1)  # the last prompt token must produce logits
        self.ctx.seq_rm(slot.seq, n_common, -1)
        slot.tokens = slot.tokens[:n_common]
        self.ctx.decode(prompt[n_common:], slot.seq, n_common)
        slot.tokens = list(prompt)
        return slot, n_common

    def _generate(self, prompt, key, grammar, max_tokens, on_text, cancel, adapter,
                  stop_at_eog, avoid_table, ban) -> GenResult:
        t0 = time.perf_counter()
        if len(prompt) + max_tokens + 8 > self.seq_capacity:
            raise LlamaError(f"prompt of {len(prompt)} tokens does not fit the context "
                             f"({self.seq_capacity} per slot)")
        slot, n_common = self._prefill(prompt, key, adapter)
        prefill_s = time.perf_counter() - t0
        n_forced = 0
        out = bytearray()
        n_gen = 0
        ttft = None
        detours = scans = 0
        cancelled = False
        gen_tokens: list[int] = []
        if grammar is not None:
            grammar.reset()
        while n_gen < max_tokens:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            if grammar is not None:
                forced = grammar.forced()
                if forced:
                    grammar.push(forced)
                    out += forced
                    if grammar.done:
                        break
                    ftoks = self.model.tokenize(forced.decode("utf-8"), parse_special=False)
                    self.ctx.decode(ftoks, slot.seq, len(slot.tokens))
                    slot.tokens += ftoks
                    n_forced += len(ftoks)
                    continue
            logits = self.ctx.logits(-1)
            tok = int(np.argmax(logits))
            if grammar is not None:
                piece = self.pieces[tok]
                banned = _repeat_bans(gen_tokens) | ban if grammar.phase == 1 else set()
                if avoid_table and len(gen_tokens) >= NO_COPY_NGRAM - 1:
                    banned |= avoid_table.get(tuple(gen_tokens[-(NO_COPY_NGRAM - 1):]), set())
                if self.eog[tok] or not piece or tok in banned or not grammar.accepts(piece):
                    detours += 1
                    tok, full = self._constrained_pick(logits, grammar, banned)
                    scans += full
                    if tok < 0:
                        break
                    piece = self.pieces[tok]
                grammar.push(piece)
                out += piece
                gen_tokens.append(tok)
            else:
                if self.eog[tok] and stop_at_eog:
                    break
                out += self.pieces[tok]
            n_gen += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
            if on_text is not None:
                on_text(grammar.line if grammar is not None else bytes(out).decode("utf-8", "ignore"))
            if grammar is not None and grammar.done:
                break
            self.ctx.decode([tok], slot.seq, len(slot.tokens))
            slot.tokens.append(tok)
        total = time.perf_counter() - t0
        return GenResult(text=out.decode("utf-8", "replace"), raw=bytes(out), n_tokens=n_gen,
                         n_prompt=len(prompt), n_cached=n_common, ttft_s=ttft or total,
                         total_s=total, cancelled=cancelled, grammar_detours=detours,
                         full_scans=scans, prefill_s=prefill_s, n_forced=n_forced)

    def _constrained_pick(self, logits: np.ndarray, grammar: ReplyGrammar,
                          banned: set[int] = frozenset()) -> tuple[int, int]:
        top = np.argpartition(-logits, TOP_K_FIRST)[:TOP_K_FIRST]
        for t in top[np.argsort(-logits[top])]:
            t = int(t)
            p = self.pieces[t]
            if p and not self.eog[t] and t not in banned and grammar.accepts(p):
                return t, 0
        for t in np.argsort(-logits):
            t = int(t)
            p = self.pieces[t]
            if p and not self.eog[t] and t not in banned and grammar.accepts(p):
                return t, 1
        return -1, 1

    def close(self) -> None:
        self.ctx.close()
        self.model.close()


def _cache_key(adapter, adapter_key: str | None, key: Hashable):
    """(the adapter or stack to apply, or None; the prefix-cache key: (adapter key, ``key``)).
    A prefix is never reused under other weights, so an adapter needs its key."""
    if adapter == ():
        adapter = None
    if adapter is not None and not adapter_key:
        raise ValueError("an adapter needs an adapter_key for the prefix cache")
    return adapter, (adapter_key if adapter is not None else None, key)


def _ngram_table(seqs: list[list[int]], n: int) -> dict[tuple[int, ...], set[int]]:
    """(n-1)-gram -> tokens that would complete an n-gram found in ``seqs``."""
    table: dict[tuple[int, ...], set[int]] = {}
    for seq in seqs:
        for i in range(len(seq) - n + 1):
            table.setdefault(tuple(seq[i:i + n - 1]), set()).add(seq[i + n - 1])
    return table


def _repeat_bans(tokens: list[int], n: int = NO_REPEAT_NGRAM) -> set[int]:
    """Tokens that would complete an n-gram already present in ``tokens``."""
    if len(tokens) < n:
        return set()
    prefix = tuple(tokens[-(n - 1):])
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tuple(tokens[i:i + n - 1]) == prefix}
