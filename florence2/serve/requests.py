"""Reading, parsing and checking a prediction request: everything before it queues, no model.

Each function raises :class:`ApiError` (status, code, message) for what a client sent wrong; the
app answers it as ``{"error": code, "detail": message}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import re
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from florence2.errors import ImageLoadError, RegionError, TaskError
from florence2.image import IMAGE_FORMATS, load_image
from florence2.serve.schemas import OPTION_FIELDS, PredictFields, PredictJSONRequest
from florence2.serve.settings import ServeSettings
from florence2.tasks import TASKS, build_prompt, check_unicode, get_task, task_inputs


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": message}`` with an HTTP status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


@dataclass
class Prediction:
    """A request read and checked, before its image is decoded: what it asks the model.

    ``data`` is the image file's bytes; it is let go (set to None) once the image is decoded, so a
    queued request holds only model input."""

    data: bytes | None
    tokens: tuple[str | None, ...]  # task tokens; (None,) for a free prompt in ``text``
    text: str | None
    region: tuple[float, ...] | None
    options: dict[str, Any]  # decoding and scoring options, checked against the limits


# ---------------------------------------------------------------------------------------------
# The body
# ---------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and with
    408 when the client has not sent all of it within ``timeout_s`` seconds."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the body did not arrive within {timeout_s:g} s", headers={"Connection": "close"}
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {length!r}") from None
        if declared > limit:
            raise ApiError(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def content_type_of(request: Request, accepted: Sequence[str]) -> str:
    """The request's media type, one of ``accepted``; 415 for any other (or none)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in accepted:
        shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise ApiError(415, "unsupported_media_type", f"{shown}: send {' or '.join(accepted)}")
    return content_type


async def read_prediction(request: Request, settings: ServeSettings) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the other fields of a multipart or JSON prediction request."""
    content_type = content_type_of(request, ("multipart/form-data", "application/json"))
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    if content_type == "multipart/form-data":
        return await parse_multipart(request, body)
    return parse_json_body(body)


def decode_base64(text: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, optional data-URL prefix, whitespace allowed) -> bytes."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(422, "bad_base64", "a data URL image must be base64: data:image/png;base64,...")
    text = re.sub(r"\s+", "", text)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(422, "bad_base64", f"the image is not valid base64: {error}") from None
    if not data:
        raise ApiError(422, "bad_image", "the image is empty")
    return data


def load_json_object(body: bytes) -> dict[str, Any]:
    """A JSON body that must be an object: 400 when it is not JSON at all, 422 when not an object."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "the JSON body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "bad_request", "the JSON body must be an object")
    return payload


def parse_json_body(body: bytes) -> tuple[bytes, dict[str, Any]]:
    payload = load_json_object(body)
    try:
        request = PredictJSONRequest.model_validate(payload)
    except ValidationError as error:
        raise ApiError(422, "bad_request", validation_message(error)) from None
    return decode_base64(request.image), request.model_dump(exclude={"image"}, exclude_unset=True)


async def parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, Any]]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=32)
    except StarletteHTTPException as error:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed: {error.detail}") from None
    except Exception as error:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed: {error}") from None
    try:
        image: bytes | None = None
        values: dict[str, Any] = {}
        tasks: list[str] = []
        for key, value in form.multi_items():
            if key == "image":
                if not isinstance(value, UploadFile):
                    raise ApiError(422, "bad_image", "the 'image' field must be a file upload")
                if image is not None:
                    raise ApiError(422, "bad_request", "one image per request")
                image = await value.read()
            elif isinstance(value, UploadFile):
                raise ApiError(422, "bad_request", f"unexpected file field {key!r}")
            elif key in ("task", "tasks"):
                tasks.append(value)
            elif value != "":  # an HTML form sends empty fields for unset options
                if key in values:
                    raise ApiError(422, "bad_request", f"field {key!r} given twice")
                values[key] = value
    finally:
        await form.close()
    if image is None:
        raise ApiError(422, "bad_image", "no 'image' file in the form")
    if not image:
        raise ApiError(422, "bad_image", "the image is empty")
    if tasks:
        values["tasks"] = tasks
    try:
        parsed = PredictFields.model_validate(values)
    except ValidationError as error:
        raise ApiError(422, "bad_request", validation_message(error)) from None
    return image, parsed.model_dump(exclude_unset=True)


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# The fields
# ---------------------------------------------------------------------------------------------


def parse_tasks(value: list[str] | str | None) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else list(value or ["<CAPTION>"])
    tokens: list[str] = []
    for name in (part.strip() for item in names for part in item.split(",")):
        if not name:
            continue
        try:
            token = get_task(name).token
        except TaskError as error:
            raise ApiError(422, "unknown_task", str(error)) from None
        if token not in tokens:
            tokens.append(token)
    if not tokens:
        raise ApiError(422, "unknown_task", f"no task given; valid tasks: {', '.join(TASKS)}")
    return tuple(tokens)


def check_text(text: str | None, max_chars: int) -> None:
    """The text's length, and that it can be encoded at all (before anything is decoded or queued)."""
    if text is None:
        return
    if len(text) > max_chars:
        raise ApiError(422, "text_too_long", f"text is {len(text)} characters; the limit is {max_chars}")
    try:
        check_unicode(text)
    except TaskError as error:
        raise ApiError(422, "bad_input", str(error)) from None


def parse_region(value: list[float] | str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise ApiError(422, "bad_region", f"a region is four numbers x0,y0,x1,y1, got {value!r}") from None
    if len(value) != 4 or not all(math.isfinite(v) for v in value):
        raise ApiError(422, "bad_region", f"a region is four finite numbers x0,y0,x1,y1, got {value!r}")
    return tuple(float(v) for v in value)


def parse_options(values: dict[str, Any], accepted: Collection[str], settings: ServeSettings) -> dict[str, Any]:
    """The options a request sets, refused when the predictor does not take one or it is over a limit."""
    chosen = {name: values[name] for name in OPTION_FIELDS if values.get(name) is not None}
    unsupported = sorted(set(chosen) - set(accepted))
    if unsupported:
        raise ApiError(422, "unsupported_option", f"this model does not accept {unsupported}")
    if chosen.get("num_beams", 1) > settings.max_num_beams:
        raise ApiError(422, "too_many_beams", f"num_beams is limited to {settings.max_num_beams}")
    if chosen.get("max_new_tokens", 1) > settings.max_new_tokens:
        raise ApiError(422, "too_many_new_tokens", f"max_new_tokens is limited to {settings.max_new_tokens}")
    return chosen


def check_inputs(tokens: Sequence[str], text: str | None, region: Sequence[float] | None, size: tuple[int, int]):
    """Build every task's prompt once here, so a bad input is a 422 before the request queues."""
    several = len(tokens) > 1
    try:
        for token in tokens:
            build_prompt(token, *task_inputs(token, text, region, several), image_size=size)
    except RegionError as error:
        raise ApiError(422, "bad_region", str(error)) from None
    except TaskError as error:
        raise ApiError(422, "bad_input", str(error)) from None
    if several:
        kinds = {TASKS[t].input for t in tokens}
        if text is not None and not kinds & {"text", "region"}:
            raise ApiError(422, "bad_input", f"text given but none of {list(tokens)} takes a text")
        if region is not None and "region" not in kinds:
            raise ApiError(422, "bad_input", f"region given but none of {list(tokens)} takes a region")


# ---------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int, prepare: Callable[..., Any] = load_image) -> Any:
    """Decode an uploaded image with ``prepare(data, max_pixels=...)`` (``load_image``, or a
    predictor's ``prepare_image``, which turns it into model input at once); 413 above
    ``max_pixels`` (checked from the header), 422 if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                width, height = probe.size
    except Image.DecompressionBombError as error:
        raise ApiError(413, "image_too_large", f"the image is too large: {error}") from None
    except Exception:
        width = height = 0  # load_image below says what is wrong
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    try:
        return prepare(data, max_pixels=max_pixels)
    except ImageLoadError as error:
        raise ApiError(422, "bad_image", str(error)) from None
