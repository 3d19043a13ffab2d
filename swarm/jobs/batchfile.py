"""The OpenAI Batch API file format, in and out, so batch files people already have run unchanged.

Input: one JSON object per line, ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}``. A line that is not such an object, or repeats a ``custom_id``, makes the whole file
unreadable (``BatchFileError`` naming the line): nothing can be matched back to it. A well-formed line
whose body asks for something that cannot be honoured (a field Hearth does not implement, a value out
of range) becomes a per-line error in the output, never a silently different request.

Output: one line per input line, in input order, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``; the body is a ``chat.completion`` with ``usage``, or for a refused
line an ``{"error": {...}}`` body with status 400, as the Batch API does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import blake3

from swarm.jobs.backend import ChatMessage, Completion, WorkItem

CHAT_URL = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096
MAX_CUSTOM_ID = 512
MAX_LINE_BYTES = 1 << 20
MAX_LINES = 50_000
SEED_LIMIT = 2**32  # the sampler's seed is an unsigned 32-bit number
ROLES = ("system", "user", "assistant")

#: Body fields accepted only at the value that means "the default behaviour", which is all a
#: worker does; any other value is refused rather than ignored.
DEFAULT_ONLY = {"n": 1, "stream": False, "stop": None, "logprobs": False, "top_logprobs": None,
                "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "user": None,
                "tools": None, "tool_choice": None, "response_format": None, "store": False,
                "metadata": None, "parallel_tool_calls": None, "stream_options": None}
#: ``model`` names the model in Batch files written for other services; the job's ``--model``
#: decides which model runs, and each result's body names the model that actually ran.
HONOURED = ("messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p",
            "seed")


class BatchFileError(ValueError):
    """The file cannot be read as a batch (the message names the line)."""


class LineError(ValueError):
    """One request asks for something that cannot be honoured."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class BatchLine:
    """One input line: either a request to run or the reason it cannot run."""

    line: int  # 1-based
    custom_id: str
    item: WorkItem | None
    error: LineError | None = None


def parse_batch_file(path: Path | str) -> list[BatchLine]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BatchFileError(f"{path}: cannot read ({e.strerror})") from None
    return parse_batch(data, name=str(path))


def parse_batch(data: bytes, name: str = "batch") -> list[BatchLine]:
    """Every non-blank line of ``data``, in order. Raises BatchFileError for a malformed line."""
    out: list[BatchLine] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{name} line {number}"
        if len(raw) > MAX_LINE_BYTES:
            raise BatchFileError(f"{where}: longer than {MAX_LINE_BYTES} bytes")
        if len(out) >= MAX_LINES:
            raise BatchFileError(f"{where}: a batch holds at most {MAX_LINES} requests")
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BatchFileError(f"{where}: not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise BatchFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BatchFileError(f"{where}: custom_id is missing or not a non-empty string")
        if len(custom_id) > MAX_CUSTOM_ID:
            raise BatchFileError(f"{where}: custom_id is longer than {MAX_CUSTOM_ID} characters")
        if custom_id in seen:
            raise BatchFileError(f"{where}: custom_id {custom_id!r} repeats line {seen[custom_id]}")
        seen[custom_id] = number
        if obj.get("method") != "POST":
            raise BatchFileError(f"{where}: method must be \"POST\", got {obj.get('method')!r}")
        unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
        if unknown:
            raise BatchFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if not isinstance(obj.get("body"), dict):
            raise BatchFileError(f"{where}: body is missing or not a JSON object")
        try:
            if obj.get("url") != CHAT_URL:
                raise LineError(f"url {obj.get('url')!r} is not served: only {CHAT_URL} is", "url")
            item = work_item(custom_id, obj["body"])
        except LineError as e:
            out.append(BatchLine(number, custom_id, None, e))
            continue
        out.append(BatchLine(number, custom_id, item))
    if not out:
        raise BatchFileError(f"{name}: no requests in the file")
    return out


def work_item(custom_id: str, body: dict) -> WorkItem:
    """The request a chat-completions body describes, or LineError naming what cannot be done."""
    for key, value in body.items():
        if key in HONOURED:
            continue
        if key in DEFAULT_ONLY:
            if value != DEFAULT_ONLY[key] and value is not None:
                raise LineError(f"body field {key!r} = {value!r} cannot be honoured "
                                f"(only {DEFAULT_ONLY[key]!r} is supported)", key)
            continue
        raise LineError(f"body field {key!r} cannot be honoured", key)
    messages = _messages(body.get("messages"))
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise LineError("give max_tokens or max_completion_tokens, not both", "max_tokens")
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(max_key)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise LineError(f"{max_key} must be a whole number from 1 to {MAX_TOKENS_LIMIT}, got "
                        f"{max_tokens!r}", max_key)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if "top_p" in body and body["top_p"] is not None and top_p <= 0.0:
        raise LineError("top_p must be more than 0", "top_p")
    seed = body.get("seed")
    if seed is None:
        seed = 0
    if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise LineError(f"seed must be a whole number from 0 to {SEED_LIMIT - 1}, got {seed!r}",
                        "seed")
    return WorkItem(custom_id=custom_id, messages=messages, max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p, seed=seed)


def _messages(raw) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise LineError("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise LineError(f"messages[{i}] is not an object", "messages")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise LineError(f"messages[{i}] field(s) {', '.join(extra)} cannot be honoured",
                            "messages")
        if m.get("name") is not None:
            raise LineError(f"messages[{i}].name cannot be honoured", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise LineError(f"messages[{i}].role {role!r} cannot be honoured (one of "
                            f"{', '.join(ROLES)})", "messages")
        out.append(ChatMessage(role=role, content=_content(m.get("content"), i)))
    return out


def _content(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise LineError(f"messages[{i}].content: only text parts can be honoured",
                                "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise LineError(f"messages[{i}].content must be a string or a list of text parts",
                    "messages")


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise LineError(f"{key} must be a number from {low:g} to {high:g}, got {value!r}", key)
    return float(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- output --------------------------------------------------------------------------------------

def request_id(job: str, custom_id: str) -> str:
    return blake3.blake3(f"{job}\x00{custom_id}".encode()).hexdigest()[:24]


def result_line(job: str, custom_id: str, model: str, completion: Completion,
                created: int) -> dict:
    rid = request_id(job, custom_id)
    body = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": {"prompt_tokens": completion.prompt_tokens,
                  "completion_tokens": len(completion.tokens),
                  "total_tokens": completion.prompt_tokens + len(completion.tokens)},
    }
    return {"id": f"batch_req_{rid}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": rid, "body": body}, "error": None}


def error_line(job: str, custom_id: str, error: LineError) -> dict:
    rid = request_id(job, custom_id)
    body = {"error": {"message": str(error), "type": "invalid_request_error",
                      "param": error.param, "code": None}}
    return {"id": f"batch_req_{rid}", "custom_id": custom_id,
            "response": {"status_code": 400, "request_id": rid, "body": body}, "error": None}


def render_lines(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)
