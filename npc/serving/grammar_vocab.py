"""The llguidance view of a loaded model's vocabulary, built once per model.

llguidance computes token masks over a tokenizer it knows byte for byte: every token's bytes
(llama.cpp's ``llama_token_to_piece`` with special tokens rendered, control tokens marked with a
leading 0xFF byte, llguidance's convention for special tokens, so a grammar never produces them
as text) and a callback into llama.cpp's own
``llama_tokenize`` for the literal strings of a grammar. Building it walks the whole vocabulary
(about half a second for the default model), so it is cached for as long as the model lives.
Every end-of-generation token of the model counts as llguidance's end of sequence, so whichever
one the model prefers is allowed exactly where the grammar may end.
"""

from __future__ import annotations

import threading
import weakref

import llguidance

from npc.llama import Model

_lock = threading.Lock()
_tokenizers: "weakref.WeakKeyDictionary[Model, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()


def eog_tokens(model: Model) -> list[int]:
    """Every token llama.cpp treats as the end of generation for this model."""
    return [t for t in range(model.n_vocab) if model.is_eog(t)]


def tokenizer_for(model: Model) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of ``model`` (built on first use, then shared)."""
    with _lock:
        tok = _tokenizers.get(model)
        if tok is None:
            eog = eog_tokens(model)
            if not eog:
                raise ValueError(f"{model.path.name} has no end-of-generation token, so a "
                                 f"grammar could never end it")
            tokens = [b"\xff" + model.piece(t, special=True) if model.is_control(t)
                      else model.piece(t, special=True) for t in range(model.n_vocab)]
            tok = llguidance.LLTokenizer.from_llamacpp(
                tokens=tokens, vocab_ptr=model.vocab, tokenize_fptr=model.tokenize_address(),
                eos_token=eog, slices=None)
            _tokenizers[model] = tok
        return tok
