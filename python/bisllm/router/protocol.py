"""OpenAI wire shapes the router needs: error bodies and request validation.

The router validates only what it reads (the model, the prompt or messages, the
stream flags, max_tokens); everything else is forwarded untouched so the worker
(vLLM) stays the authority on the rest of the API. Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``, with vLLM's type names.
"""

from __future__ import annotations

from typing import Any

import msgspec

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class RequestError(Exception):
    """A client-visible error: becomes an OpenAI error body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    return _json_encoder.encode(
        {
            "error": {
                "message": message,
                "type": _ERROR_TYPES.get(status, "APIError"),
                "param": param,
                "code": status,
            }
        }
    )


def sse_error_event(status: int, message: str) -> bytes:
    """An OpenAI-style error as one SSE event, for a stream that fails mid-way."""
    return b"data: " + error_body(status, message) + b"\n\n"


def decode_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = _json_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def encode_json(value: Any) -> bytes:
    return _json_encoder.encode(value)


def _check_type(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> None:
    value = body.get(key)
    if value is None:
        return
    # bool is an int subclass: reject it where a number is expected.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RequestError(400, f"'{key}' must be {what}", param=key)


def validate_common(body: dict[str, Any]) -> None:
    _check_type(body, "model", (str,), "a string")
    _check_type(body, "stream", (bool,), "a boolean")
    _check_type(body, "stream_options", (dict,), "an object")
    _check_type(body, "max_tokens", (int,), "an integer")
    _check_type(body, "max_completion_tokens", (int,), "an integer")
    _check_type(body, "n", (int,), "an integer")
    _check_type(body, "temperature", (int, float), "a number")
    _check_type(body, "top_p", (int, float), "a number")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and value < 1:
            raise RequestError(400, f"'{key}' must be at least 1, got {value}", param=key)


def validate_chat(body: dict[str, Any]) -> None:
    validate_common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(
                400, f"messages[{i}] must be an object with a string 'role'", param="messages"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(
                400, f"messages[{i}].content must be a string or a list of parts", param="messages"
            )


def validate_completion(body: dict[str, Any]) -> None:
    """Check the prompt's shape; token ids themselves are checked when converted for routing.

    Checking 16K ids one by one in Python would cost more than routing the request, so
    the element checks happen in ``PromptTokenizer.completion_ids``' conversion to an
    ``array('I')`` (done in C, and the buffer then goes to the core without copies).
    """
    validate_common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str) and all(isinstance(p, str) for p in prompt):
            return
        if isinstance(first, int) and not isinstance(first, bool):
            return
        if isinstance(first, list) and all(isinstance(p, list) and p for p in prompt):
            return
    raise RequestError(
        400,
        "'prompt' must be a string, a list of strings, a list of token ids "
        "or a list of token-id lists",
        param="prompt",
    )


def validate_embedding(body: dict[str, Any]) -> None:
    _check_type(body, "model", (str,), "a string")
    value = body.get("input")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise RequestError(400, "'input' must be a string or a non-empty list", param="input")
