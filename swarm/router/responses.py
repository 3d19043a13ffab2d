"""OpenAI response bodies and stream chunks built from ``Piece``s and ``Done``s."""

from __future__ import annotations

from swarm.router.local import Done, GenerationRequest, Piece


def _token_entry(p: Piece) -> dict:
    token = p.token if p.token is not None else p.text
    return {"token": token, "logprob": p.logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                             for t, lp in p.top_logprobs]}


def chat_logprobs(pieces: list[Piece]) -> dict:
    return {"content": [_token_entry(p) for p in pieces], "refusal": None}


def completion_logprobs(pieces: list[Piece], offset: int = 0) -> dict:
    tokens, offsets = [], []
    for p in pieces:
        offsets.append(offset)
        tokens.append(p.token if p.token is not None else p.text)
        offset += len(p.text)
    return {"tokens": tokens, "token_logprobs": [p.logprob for p in pieces],
            "top_logprobs": [dict(p.top_logprobs) for p in pieces], "text_offset": offsets}


def tool_calls_json(done: Done) -> list[dict]:
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in done.tool_calls]


def finish_reason(done: Done) -> str:
    return "tool_calls" if done.tool_calls else done.finish_reason


def usage(dones: list[Done], n: int) -> dict:
    """Prompt tokens counted once per prompt (each prompt has ``n`` choices)."""
    prompt = sum(d.prompt_tokens for i, d in enumerate(dones) if i % n == 0)
    completion = sum(d.completion_tokens for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_message(done: Done) -> dict:
    if done.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": tool_calls_json(done),
                "refusal": None}
    return {"role": "assistant", "content": done.text, "refusal": None}


def chat_body(rid: str, created: int, model: str, fingerprint: str,
              gens: tuple[GenerationRequest, ...], results: list[tuple[list[Piece], Done]],
              n: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": i, "message": chat_message(done),
                         "logprobs": chat_logprobs(pieces) if g.logprobs is not None else None,
                         "finish_reason": finish_reason(done)}
                        for i, (g, (pieces, done)) in enumerate(zip(gens, results))],
            "usage": usage([d for _, d in results], n)}


def completion_body(rid: str, created: int, model: str, fingerprint: str,
                    gens: tuple[GenerationRequest, ...], results: list[tuple[list[Piece], Done]],
                    n: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": i, "text": done.text,
                         "logprobs": completion_logprobs(pieces) if g.logprobs is not None
                         else None,
                         "finish_reason": finish_reason(done)}
                        for i, (g, (pieces, done)) in enumerate(zip(gens, results))],
            "usage": usage([d for _, d in results], n)}


class ChunkMaker:
    """Stream chunks of one response (every chunk carries the same id, created and model)."""

    def __init__(self, kind: str, rid: str, created: int, model: str, fingerprint: str,
                 include_usage: bool):
        self.kind = kind
        self.head = {"id": rid, "object": "chat.completion.chunk" if kind == "chat"
                     else "text_completion", "created": created, "model": model,
                     "system_fingerprint": fingerprint}
        self.include_usage = include_usage

    def _chunk(self, choice: dict) -> dict:
        out = {**self.head, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def start(self, index: int) -> dict | None:
        if self.kind != "chat":
            return None
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None})

    def text(self, index: int, text: str, pieces: list[Piece] | None, offset: int = 0) -> dict:
        if self.kind == "chat":
            return self._chunk({"index": index, "delta": {"content": text},
                                "logprobs": chat_logprobs(pieces) if pieces else None,
                                "finish_reason": None})
        return self._chunk({"index": index, "text": text,
                            "logprobs": completion_logprobs(pieces, offset) if pieces else None,
                            "finish_reason": None})

    def tool_calls(self, index: int, done: Done) -> dict:
        calls = [{"index": k, **c} for k, c in enumerate(tool_calls_json(done))]
        return self._chunk({"index": index, "delta": {"tool_calls": calls}, "logprobs": None,
                            "finish_reason": None})

    def finish(self, index: int, done: Done) -> dict:
        if self.kind == "chat":
            return self._chunk({"index": index, "delta": {}, "logprobs": None,
                                "finish_reason": finish_reason(done)})
        return self._chunk({"index": index, "text": "", "logprobs": None,
                            "finish_reason": finish_reason(done)})

    def usage(self, dones: list[Done], n: int) -> dict:
        return {**self.head, "choices": [], "usage": usage(dones, n)}
