"""The Batch API file format: requests in, results out, every refusal named."""

import json

import pytest

from swarm.jobs.backend import Completion
from swarm.jobs.batchfile import (
    DEFAULT_MAX_TOKENS, BatchFileError, error_line, parse_batch, render_lines, result_line,
)


def line(custom_id="a", **body):
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": body})


def parse(*lines):
    return parse_batch("\n".join(lines).encode())


def test_a_batch_file_for_another_service_reads_unchanged():
    got = parse(line("r1", model="gpt-4o-mini", max_tokens=12, temperature=0.7, top_p=0.9, seed=5),
                "", line("r2", messages=[{"role": "system", "content": [{"type": "text",
                                                                         "text": "be brief"}]},
                                         {"role": "user", "content": "hi"}], temperature=0))
    assert [g.custom_id for g in got] == ["r1", "r2"] and all(g.error is None for g in got)
    a, b = got[0].item, got[1].item
    assert (a.max_tokens, a.temperature, a.top_p, a.seed) == (12, 0.7, 0.9, 5)
    assert (b.max_tokens, b.temperature, b.messages[0].content) == (DEFAULT_MAX_TOKENS, 0.0,
                                                                    "be brief")
    assert got[1].line == 3


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"stop": ["\n"]}, "stop"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**40}, "seed"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
])
def test_a_body_that_cannot_be_honoured_is_a_per_line_error(body, param):
    got = parse(line("ok"), line("bad", **body), line("ok2"))
    assert [g.error is None for g in got] == [True, False, True]
    assert got[1].error.param == param and got[1].item is None
    out = error_line("j", "bad", got[1].error)
    assert out["response"]["status_code"] == 400
    assert param in out["response"]["body"]["error"]["message"]


def test_default_values_of_unsupported_fields_are_accepted():
    got = parse(line(n=1, stream=False, stop=None, logprobs=False))
    assert got[0].error is None


def test_a_wrong_url_is_a_per_line_error():
    raw = json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                      "body": {"input": "x"}})
    assert parse(raw)[0].error.param == "url"


@pytest.mark.parametrize("raw, words", [
    ("{not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (json.dumps({"method": "POST", "body": {}}), "line 2: custom_id"),
    (line("a"), "line 2: custom_id 'a' repeats line 1"),
    (json.dumps({"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
     "line 2: method"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}),
     "line 2: body"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {},
                 "extra": 1}), "line 2: unknown field(s) extra"),
])
def test_a_malformed_line_names_itself(raw, words):
    with pytest.raises(BatchFileError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_batch((line("a") + "\n" + raw).encode(), name="in.jsonl")


def test_an_empty_file_is_refused():
    with pytest.raises(BatchFileError, match="no requests"):
        parse_batch(b"\n\n")


def test_results_are_chat_completions_with_usage():
    c = Completion(custom_id="r1", tokens=[5, 6, 7], text="yes", prompt_tokens=11,
                   finish_reason="length")
    out = json.loads(render_lines([result_line("job", "r1", "m" * 64, c, 1700000000)]))
    assert out["custom_id"] == "r1" and out["error"] is None
    body = out["response"]["body"]
    assert out["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "yes"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert out["id"] == result_line("job", "r1", "m", c, 0)["id"] != \
        result_line("job2", "r1", "m", c, 0)["id"]
