"""A small deterministic InferenceBackend that follows the contract exactly, for network tests.

The "model" is a hash: the logits after a token prefix are BLAKE3(salt, prefix) read as VOCAB
scores. Greedy decoding takes the argmax; sampled decoding replays a sampler seeded by (seed,
position) over temperature- and top-p-shaped probabilities. Token 0 is end-of-generation. The
prompt's tokens are its UTF-8 bytes, so prompt counts are exact. ``rescore`` recomputes every
position's logits teacher-forced and checks each claimed token, the stop, the length, the prompt
count and the text. A ``cheat`` makes a worker lie in one of the ways a real one could.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence

import blake3

from swarm.jobs.backend import Completion, Gate, Released, Verdict, WorkItem

VOCAB = 48
EOS = 0
CHEATS = ("other_model", "random", "one_token", "short")


def prompt_tokens(item: WorkItem) -> list[int]:
    text = "".join(f"<{m.role}>{m.content}" for m in item.messages)
    return list(text.encode())


def detokenize(tokens: Sequence[int]) -> str:
    return "".join(chr(ord("a") + (t - 1) % 26) for t in tokens)


class HashBackend:
    def __init__(self, salt: bytes = b"toy-model-1", step_seconds: float = 0.0,
                 cheat: str | None = None):
        assert cheat in (None, *CHEATS)
        self.salt = salt
        self.step_seconds = step_seconds
        self.cheat = cheat
        self.generated_items = 0
        self.rescored_items = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return blake3.blake3(self.salt).hexdigest()

    # ---- the "model" ----

    def _logits(self, salt: bytes, prefix: Sequence[int]) -> list[float]:
        h = blake3.blake3(salt + bytes(b % 256 for b in prefix[-64:])
                          + len(prefix).to_bytes(4, "little")).digest(VOCAB)
        return [b / 16.0 for b in h]

    @staticmethod
    def _pick(logits: list[float], item: WorkItem, position: int) -> int:
        if item.temperature == 0.0:
            return max(range(VOCAB), key=lambda i: (logits[i], -i))
        scaled = [v / item.temperature for v in logits]
        top = max(scaled)
        probs = [math.exp(v - top) for v in scaled]
        total = sum(probs)
        order = sorted(range(VOCAB), key=lambda i: (-probs[i], i))
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += probs[i] / total
            if mass >= item.top_p:
                break
        rng = random.Random(item.seed * 1_000_003 + position)
        return rng.choices(kept, weights=[probs[i] for i in kept])[0]

    def _decode(self, item: WorkItem, salt: bytes) -> tuple[list[int], str]:
        context = prompt_tokens(item)
        out: list[int] = []
        while len(out) < item.max_tokens:
            t = self._pick(self._logits(salt, context + out), item, len(out))
            if t == EOS:
                return out, "stop"
            out.append(t)
        return out, "length"

    # ---- the contract ----

    def generate(self, items: Sequence[WorkItem], skin: str | None = None, *,
                 gate: Gate | None = None,
                 on_done: Callable[[Completion], None] | None = None) -> list[Completion]:
        done: list[Completion] = []
        for n, item in enumerate(items):
            if gate is not None and gate.paused() and not gate.wait_resumed(3600.0):
                raise Released(done, [i.custom_id for i in items[n:]])
            if self.step_seconds:
                time.sleep(self.step_seconds)
            salt = self.salt + (skin or "").encode()
            tokens, finish = self._decode(item, salt)
            tokens, finish = self._lie(item, tokens, finish, salt)
            c = Completion(custom_id=item.custom_id, tokens=tokens, text=detokenize(tokens),
                           prompt_tokens=len(prompt_tokens(item)), finish_reason=finish)
            with self._lock:
                self.generated_items += 1
            done.append(c)
            if on_done is not None:
                on_done(c)
        return done

    def _lie(self, item, tokens, finish, salt):
        if self.cheat == "other_model":
            return self._decode(item, salt + b"-other")
        if self.cheat == "random":
            rng = random.Random(item.custom_id)
            return [rng.randrange(1, VOCAB) for _ in tokens] or [1], finish
        if self.cheat == "one_token" and tokens:
            i = len(tokens) // 2
            return tokens[:i] + [tokens[i] % (VOCAB - 1) + 1] + tokens[i + 1:], finish
        if self.cheat == "one_token":
            return [1], finish
        if self.cheat == "short":
            return tokens[: len(tokens) // 2], "stop"
        return tokens, finish

    def rescore(self, item: WorkItem, claim: Completion, skin: str | None = None) -> Verdict:
        with self._lock:
            self.rescored_items += 1
        salt = self.salt + (skin or "").encode()
        context = prompt_tokens(item)
        if claim.prompt_tokens != len(context):
            return Verdict(False, 0, None, f"prompt is {len(context)} tokens, "
                                           f"claimed {claim.prompt_tokens}")
        if len(claim.tokens) > item.max_tokens:
            return Verdict(False, 0, item.max_tokens, "more tokens than max_tokens")
        for i, t in enumerate(claim.tokens):
            want = self._pick(self._logits(salt, context + claim.tokens[:i]), item, i)
            if t != want:
                return Verdict(False, i, i, f"token {i}: claimed {t}, rule gives {want}")
        n = len(claim.tokens)
        if claim.finish_reason == "stop":
            want = self._pick(self._logits(salt, context + claim.tokens), item, n)
            if want != EOS:
                return Verdict(False, n, n, f"claimed a stop at {n}, rule gives {want}")
        elif claim.finish_reason != "length" or n != item.max_tokens:
            return Verdict(False, n, n, f"finish {claim.finish_reason!r} after {n} tokens")
        if claim.text != detokenize(claim.tokens):
            return Verdict(False, n, None, "the text is not the tokens' text")
        return Verdict(True, n)
