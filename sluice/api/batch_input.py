"""OpenAI batch input: request lines read from a stored file and turned into Sluice items.

A line is ``{"custom_id", "method": "POST", "url", "body"}``; ``custom_id`` is unique in the file,
``url`` is the batch's endpoint and ``body.model`` a registered model (the same on every line: a
batch is one Sluice job). Each line becomes one item whose key is its ``custom_id``:

* ``/v1/embeddings``: ``input`` a string -> ``{"text"}``; a list of strings -> ``{"texts"}`` (one item,
  one embedding per text, see :mod:`sluice.families.feature_extraction`); ``encoding_format``
  ``float`` or ``base64`` (kept on the item for the output);
* ``/v1/chat/completions``: ``messages`` -> ``{"messages"}``, rendered with the model's chat template;
* ``/v1/completions``: ``prompt`` (one string) -> ``{"text"}``.

For the generating endpoints ``max_tokens`` (``max_completion_tokens``) becomes ``max_new_tokens``,
``temperature`` 0 greedy decoding and above 0 sampling at that temperature (OpenAI's default is
1), with ``top_p``, ``seed`` and ``stop``; top-k is off, as OpenAI has none. Options Sluice cannot
honour (``n`` > 1, ``stream``, ``logprobs``, tools, ...) are refused per line, never ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sluice.db import KEY_CHARS
from sluice.settings import Settings

ENDPOINTS = {"/v1/embeddings": "feature-extraction", "/v1/chat/completions": "text-generation",
             "/v1/completions": "text-generation"}  # fmt: skip
#: body fields Sluice cannot honour, with the one value each may have (None: absent)
_REFUSED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "stream": (None, False), "logprobs": (None, False), "top_logprobs": (None,),
    "echo": (None, False), "suffix": (None,), "tools": (None, []), "tool_choice": (None, "none"), "functions": (None,),
    "function_call": (None,), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "audio": (None,), "prediction": (None,), "dimensions": (None,),
}  # fmt: skip
_ITEM_PREFIX = re.compile(r"^item \d+: ")


class LineProblem(Exception):
    """One request line is unusable: an OpenAI ``BatchError`` (code, message, param)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class Request:
    """A parsed line: its number in the file, its custom_id, the model it asks for and its item."""

    line: int
    custom_id: str
    model: str
    record: dict[str, Any]


def lines(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of a file given in pieces, with their 1-based line numbers; a line longer
    than ``limit`` bytes raises :class:`LineProblem` instead of growing without bound."""
    carry = b""
    number = 0
    for chunk in chunks:
        *complete, carry = (carry + chunk).split(b"\n")
        if len(carry) > limit:
            raise LineProblem("line_too_long", f"line {number + len(complete) + 1} is over {limit:,} bytes")
        for raw in complete:
            number += 1
            if raw.strip():
                yield number, raw
    if carry.strip():
        yield number + 1, carry


def parse(number: int, raw: bytes, endpoint: str, settings: Settings) -> Request:
    """One line as a :class:`Request`; :class:`LineProblem` says what is wrong with it."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LineProblem("invalid_json", f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LineProblem("invalid_json", "a request line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > KEY_CHARS:
        raise LineProblem("invalid_custom_id", f"custom_id must be a string of 1 to {KEY_CHARS} characters",
                          "custom_id")  # fmt: skip
    if obj.get("method") != "POST":
        raise LineProblem("invalid_method", f'method must be "POST", got {obj.get("method")!r}', "method")
    if obj.get("url") != endpoint:
        raise LineProblem("invalid_url", f"url must be the batch's endpoint {endpoint!r}, got {obj.get('url')!r}",
                          "url")  # fmt: skip
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineProblem("invalid_body", "body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LineProblem("missing_required_parameter", "body.model must name a registered model", "body.model")
    for name, allowed in _REFUSED.items():
        if name in body and body[name] not in allowed:
            raise LineProblem("unsupported_parameter", f"body.{name}={body[name]!r} is not supported by Sluice",
                              f"body.{name}")  # fmt: skip
    return Request(number, custom_id, model, TRANSLATE[endpoint](body, settings))


def _embeddings(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    given = body.get("input")
    if isinstance(given, str):
        record: dict[str, Any] = {"text": given}
    elif isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        record = {"texts": given}
    elif isinstance(given, list) and given and all(isinstance(x, int | list) for x in given):
        raise LineProblem("invalid_value", "token-id input is not supported; send the text", "body.input")
    else:
        raise LineProblem("invalid_value", "body.input must be a string or a non-empty list of strings", "body.input")
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise LineProblem("invalid_value", "body.encoding_format must be \"float\" or \"base64\"",
                          "body.encoding_format")  # fmt: skip
    if encoding == "base64":
        record["encoding_format"] = "base64"
    return record


def _generation(body: dict[str, Any], default_tokens: int) -> dict[str, Any]:
    """The sampling options every generating endpoint shares, as text-generation fields."""
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise LineProblem("invalid_value", "body.temperature must be a number from 0 to 2", "body.temperature")
    fields: dict[str, Any] = {"max_new_tokens": default_tokens if tokens is None else tokens,
                              "do_sample": temperature > 0, "top_k": 0}  # fmt: skip
    if temperature > 0 and temperature != 1:
        fields["temperature"] = float(temperature)
    for name in ("top_p", "seed", "stop"):
        if body.get(name) is not None:
            fields[name] = body[name]
    return fields


def _chat(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineProblem("invalid_value", "body.messages must be a non-empty list", "body.messages")
    return {"messages": [_message(m, n) for n, m in enumerate(messages)],
            **_generation(body, settings.api_default_max_tokens)}  # fmt: skip


def _message(message: Any, n: int) -> dict[str, str]:
    """A chat message as ``{"role", "content"}``; content given as text parts is joined."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise LineProblem("invalid_value", f"body.messages[{n}] must be an object with a role", f"body.messages[{n}]")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):  # fmt: skip
            raise LineProblem("unsupported_parameter", f"body.messages[{n}].content: only text parts are supported",
                              f"body.messages[{n}].content")  # fmt: skip
        content = "\n".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise LineProblem("invalid_value", f"body.messages[{n}].content must be text", f"body.messages[{n}].content")
    return {"role": message["role"], "content": content}


def _completion(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise LineProblem("invalid_value", "body.prompt must be one string (one request line per prompt)",
                          "body.prompt")  # fmt: skip
    return {"text": prompt, **_generation(body, 16)}  # OpenAI's default max_tokens for completions


TRANSLATE: dict[str, Callable[[dict[str, Any], Settings], dict[str, Any]]] = {
    "/v1/embeddings": _embeddings, "/v1/chat/completions": _chat, "/v1/completions": _completion,
}  # fmt: skip


def item_problem(message: str) -> str:
    """A family's message about an item without its ``item N:`` prefix (the line number is given apart)."""
    return _ITEM_PREFIX.sub("", message, count=1)
