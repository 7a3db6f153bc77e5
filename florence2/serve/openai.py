"""The OpenAI-compatible API: chat-completion requests to predictions, results to chat completions.

``POST /v1/chat/completions`` takes the last message of ``messages``, which must be the user's:
its text parts name the task (a task token such as ``<OD>``, optionally followed by the task's
text input) or hold a free prompt (fine-tuned models), and its one ``image_url`` part carries the
image as a ``data:`` URL (the server never fetches a URL). The request becomes the same
:class:`~florence2.serve.requests.Prediction` as a ``/v1/predict`` request and goes through the
same queue and batches. Decoding is deterministic: ``temperature`` must be 0 (or left out), and
the Florence-2 decoding options (``num_beams``, ``no_repeat_ngram_size``, ``length_penalty``,
``score_threshold``, ``nms_iou``) are extra body fields.

The answer is the standard chat-completion object; ``message.content`` is the generated text as
the reference decodes it, less the sequence tokens ``<s>``, ``</s>`` and ``<pad>`` (location and
polygon tokens stay as ``<loc_N>`` text), and the extra field ``florence2`` holds the parsed
result with its scores (the ``/v1/predict`` results). Errors take OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, with 400 where the native API answers 422.

Nothing here touches the model or the queue; the routes are in :mod:`florence2.serve.app`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from florence2.errors import TaskError
from florence2.serve.requests import (
    ApiError,
    Prediction,
    check_text,
    decode_base64,
    load_json_object,
    parse_options,
    validation_message,
)
from florence2.serve.schemas import OPTION_FIELDS, PredictFields
from florence2.serve.settings import ServeSettings
from florence2.tasks import get_task

# the routes whose errors take OpenAI's shape
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")

# request fields of OpenAI's API that would change the answer, and the values that change nothing
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "top_p": (None, 1),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "stop": (None, [], ""),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
}
# a leading <NAME> names a task; anything else is a free prompt
_TASK_TOKEN = re.compile(r"\s*(<[A-Za-z_]+>)(.*)", re.DOTALL)


# ---------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of a chat-completion request this server reads; others are ignored unless they
    would change the answer (see :data:`_NEUTRAL`), and the decoding options of ``/v1/predict``
    are accepted as extra fields."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None


@dataclass
class ChatRequest:
    """A chat-completion request read and checked: the prediction it asks for and how to answer."""

    prediction: Prediction
    stream: bool
    include_usage: bool


def parse_chat_request(body: bytes, accepted: Collection[str], settings: ServeSettings) -> ChatRequest:
    """The prediction a chat-completion body asks for; :class:`ApiError` for anything this server
    cannot answer as asked (422 here; the OpenAI routes answer it as 400)."""
    payload = load_json_object(body)
    try:
        request = ChatCompletionRequest.model_validate(payload)
    except ValidationError as error:
        raise ApiError(422, "bad_request", validation_message(error)) from None
    _check_sampling(request, payload)
    data, text = _read_message(request.messages[-1])
    tokens, text = parse_prompt(text)
    check_text(text, settings.max_text_chars)
    options = _decoding_options(request, payload, accepted, settings)
    usage = request.stream_options is not None and request.stream_options.include_usage
    return ChatRequest(
        prediction=Prediction(data, tokens, text, None, options), stream=request.stream, include_usage=usage
    )


def _check_sampling(request: ChatCompletionRequest, payload: dict[str, Any]) -> None:
    if request.temperature not in (None, 0):
        raise ApiError(
            422,
            "unsupported_parameter",
            f"temperature {request.temperature:g} is not supported: Florence-2 decodes deterministically "
            "(greedy or beam search); send temperature 0 or leave it out",
        )
    for name, neutral in _NEUTRAL.items():
        if payload.get(name) not in neutral:
            raise ApiError(
                422,
                "unsupported_parameter",
                f"{name}={payload[name]!r} is not supported by this server (Florence-2 gives one "
                "deterministic answer per request); leave it out",
            )


def _read_message(message: Message) -> tuple[bytes, str]:
    """The image bytes and the text of the last message, which must be the user's."""
    if message.role != "user":
        raise ApiError(422, "bad_request", f"the last message must be the user's, not {message.role!r}")
    parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
    texts, images = [], []
    for part in parts or []:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url":
            images.append(part.image_url)
        else:
            raise ApiError(422, "bad_request", f"content parts of type {part.type!r} are not supported")
    if not images:
        raise ApiError(422, "missing_image", "the user message needs an image: an image_url part with a data: URL")
    if len(images) > 1:
        raise ApiError(422, "bad_request", f"one image per request, got {len(images)}")
    url = images[0].url if isinstance(images[0], ImageURL) else images[0]
    if not isinstance(url, str) or not url.startswith("data:"):
        scheme = str(url).split(":", 1)[0] if ":" in str(url) else ""
        if scheme.lower() in ("http", "https", "ftp", "file"):
            raise ApiError(
                422,
                "remote_image_url",
                f"the server never fetches images ({scheme}:// URL given): send the image in the request "
                "as a data URL, data:image/png;base64,...",
            )
        raise ApiError(422, "bad_image_url", "image_url must be a data URL: data:image/png;base64,...")
    return decode_base64(url), " ".join(t for t in texts if t)


def parse_prompt(text: str) -> tuple[tuple[str | None], str | None]:
    """``"<OD>"`` -> ``(("<OD>",), None)``; ``"<CAPTION_TO_PHRASE_GROUNDING>A green car"`` ->
    ``(("<CAPTION_TO_PHRASE_GROUNDING>",), "A green car")``; text without a leading task token is a
    free prompt: ``((None,), text)``. A leading ``<NAME>`` that is no task is an error."""
    match = _TASK_TOKEN.match(text)
    if match is None:
        if not text.strip():
            raise ApiError(422, "missing_text", "the user message needs a text: a task token such as <CAPTION>")
        return (None,), text.strip()
    try:
        token = get_task(match[1]).token
    except TaskError as error:
        raise ApiError(422, "unknown_task", str(error)) from None
    return (token,), match[2].strip() or None


def _decoding_options(
    request: ChatCompletionRequest, payload: dict[str, Any], accepted: Collection[str], settings: ServeSettings
) -> dict[str, Any]:
    values = {name: payload[name] for name in OPTION_FIELDS if payload.get(name) is not None}
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        if values.get("max_new_tokens", limit) != limit:
            raise ApiError(422, "bad_request", "max_tokens and max_new_tokens differ; send one of them")
        values["max_new_tokens"] = limit
    try:
        checked = PredictFields.model_validate(values).model_dump(exclude_unset=True)
    except ValidationError as error:
        raise ApiError(422, "bad_request", validation_message(error)) from None
    return parse_options(checked, accepted, settings)


# ---------------------------------------------------------------------------------------------
# Response
# ---------------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(completion_id: str, model: str, generation: dict[str, Any], florence2: dict[str, Any]) -> dict[str, Any]:
    """The chat-completion object for one answer (``generation``: ``predict(details=True)``'s entry
    for the task)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation["text"]},
                "logprobs": None,
                "finish_reason": generation["finish_reason"],
            }
        ],
        "usage": usage(generation),
        "florence2": florence2,
    }


def chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta`` None gives the chunk without choices (for usage)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def usage(generation: dict[str, Any]) -> dict[str, int]:
    prompt, generated = generation["prompt_tokens"], generation["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "florence2"}


def error_body(status: int, code: str, detail: str) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = "authentication_error" if status == 401 else "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": detail, "type": kind, "param": None, "code": code}}


def error_status(status: int) -> int:
    """The status an OpenAI route answers: 400 for invalid values, as OpenAI does."""
    return 400 if status == 422 else status
