"""Request validation and OpenAI error bodies (no server needed)."""

import json

import pytest

from bisllm.router.protocol import (
    RequestError,
    decode_json_object,
    error_body,
    sse_error_event,
    validate_chat,
    validate_completion,
    validate_embedding,
)


def test_error_body_has_openai_shape():
    body = json.loads(error_body(400, "bad thing", "prompt"))
    assert body == {
        "error": {"message": "bad thing", "type": "BadRequestError", "param": "prompt", "code": 400}
    }


def test_sse_error_event_is_one_event():
    event = sse_error_event(502, "cut")
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["code"] == 502


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"null", b"\xff\xfe", b""])
def test_malformed_or_non_object_json_is_400(raw):
    with pytest.raises(RequestError) as info:
        decode_json_object(raw)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": "10"},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        {"messages": [{"role": "user", "content": "x"}], "temperature": True},
        {"messages": [{"role": "user", "content": "x"}], "model": 3},
    ],
)
def test_bad_chat_requests(body):
    with pytest.raises(RequestError) as info:
        validate_chat(body)
    assert info.value.status == 400


def test_good_chat_request():
    validate_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 3,
            "stream": True,
            "temperature": 0,
        }
    )


@pytest.mark.parametrize("prompt", [None, 5, [], ["a", 1], [[1, 2], []], [True, 1], {"a": 1}])
def test_bad_completion_prompts(prompt):
    with pytest.raises(RequestError):
        validate_completion({"prompt": prompt})


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_good_completion_prompts(prompt):
    validate_completion({"prompt": prompt, "max_tokens": 1})


def test_embedding_input_required():
    with pytest.raises(RequestError):
        validate_embedding({"input": []})
    validate_embedding({"input": "x"})
