"""The FastAPI application: prediction API, task list, health, metrics and the web page.

``create_app(predictor, settings)`` builds it around anything with Florence2's ``predict``
signature (the tests pass stand-ins). Routes:

* ``POST /v1/predict``: an image (multipart file, or base64 in JSON) + tasks + inputs + decoding
  options -> result dicts, image size and timings. Runs through the dynamic batcher.
* ``GET /v1/tasks``, ``GET /v1/info``: the task registry; model, limits and options.
* ``GET /health`` (always open), ``GET /metrics`` (Prometheus text).
* ``GET /`` and ``/static/*``: the web page; ``GET /examples``, ``/examples/{name}``: the example
  images shipped with the package.

Errors are JSON ``{"error": code, "detail": message}``: 400 for a body that cannot be parsed at
all (broken JSON or multipart), 401 without a valid API key, 413 for a body or image over the
limits, 415 for another content type, 422 for values that are not valid (bad base64, an image that
cannot be decoded, unknown task, bad region, options over the limits), 503 with ``Retry-After``
when the queue is full.

The server reads only the bytes a client sends: it never opens a path or URL given by a client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import io
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from florence2.errors import Florence2Error, ImageLoadError, TaskError
from florence2.generation import DecodingOptions
from florence2.image import load_image
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.serve.batching import Batcher, Outcome, QueueFullError, ShuttingDownError
from florence2.serve.metrics import CONTENT_TYPE, ServerMetrics
from florence2.serve.schemas import (
    OPTION_FIELDS,
    ErrorResponse,
    ExampleInfo,
    ExamplesResponse,
    HealthResponse,
    ImageInfo,
    InfoResponse,
    ModelInfo,
    PredictFields,
    PredictJSONRequest,
    PredictResponse,
    TaskInfo,
    TasksResponse,
    Timings,
)
from florence2.serve.settings import API_KEY_ENV, ServeSettings
from florence2.tasks import TASKS, build_prompt, get_task, task_inputs

STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "examples"

log = logging.getLogger("florence2.serve")

# (tasks, sorted option items): requests with equal keys run in one predict call, each image with
# its own text and region
BatchKey = tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": message}`` with an HTTP status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


_ERRORS = {
    400: {"model": ErrorResponse, "description": "The body cannot be parsed (broken JSON or multipart)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    413: {"model": ErrorResponse, "description": "Body or image over the server's limits."},
    415: {"model": ErrorResponse, "description": "Neither application/json nor multipart/form-data."},
    422: {"model": ErrorResponse, "description": "Invalid image, task, input or option."},
    503: {"model": ErrorResponse, "description": "Queue full (see Retry-After) or shutting down."},
}


# ---------------------------------------------------------------------------------------------
# What the predictor accepts
# ---------------------------------------------------------------------------------------------


def supported_options(predictor: Any) -> set[str]:
    """The request options ``predictor.predict`` accepts, read from its signature at run time.

    Named keyword parameters count; ``**decoding`` stands for the ``DecodingOptions`` fields.
    """
    parameters = inspect.signature(predictor.predict).parameters.values()
    names = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        names |= {f.name for f in fields(DecodingOptions)}
    return names & set(OPTION_FIELDS)


def _model_info(predictor: Any, name: str) -> ModelInfo:
    model = getattr(predictor, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return ModelInfo(name=name)
    first = next(iter(model.parameters()), None)
    return ModelInfo(
        name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(first.device) if first is not None else None,
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Request parsing and validation (pure functions, no model)
# ---------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
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


def parse_json_body(body: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "bad_request", "the JSON body must be an object")
    try:
        request = PredictJSONRequest.model_validate(payload)
    except ValidationError as error:
        raise ApiError(422, "bad_request", _validation_message(error)) from None
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
        raise ApiError(422, "bad_request", _validation_message(error)) from None
    return image, parsed.model_dump(exclude_unset=True)


def _validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


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


def check_region(region: tuple[float, ...], size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = region
    width, height = size
    if not (x0 <= x1 and y0 <= y1):
        raise ApiError(422, "bad_region", f"a region needs x0 <= x1 and y0 <= y1, got {list(region)}")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ApiError(
            422, "bad_region", f"region {list(region)} lies outside the {width}x{height} image (pixels, XYXY)"
        )


def check_inputs(tokens: Sequence[str], text: str | None, region: Sequence[float] | None, size: tuple[int, int]):
    """Build every task's prompt once here, so a bad input is a 422 before the request queues."""
    several = len(tokens) > 1
    try:
        for token in tokens:
            build_prompt(token, *task_inputs(token, text, region, several), image_size=size)
    except TaskError as error:
        raise ApiError(422, "bad_input", str(error)) from None
    if several:
        kinds = {TASKS[t].input for t in tokens}
        if text is not None and not kinds & {"text", "region"}:
            raise ApiError(422, "bad_input", f"text given but none of {list(tokens)} takes a text")
        if region is not None and "region" not in kinds:
            raise ApiError(422, "bad_input", f"region given but none of {list(tokens)} takes a region")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an uploaded image; 413 above ``max_pixels`` (checked from the header), 422 if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
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
        return load_image(data, max_pixels=max_pixels)
    except ImageLoadError as error:
        raise ApiError(422, "bad_image", str(error)) from None


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_unless_disconnected(future: Future, request: Request) -> Outcome:
    """The outcome of a queued request; if its client disconnects first, the request is cancelled
    (dropped without using the model when its batch has not started) and 499 is recorded."""
    outcome = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({outcome, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if outcome.done():
        return outcome.result()
    outcome.cancel()
    raise ApiError(499, "client_closed_request", "the client disconnected before its answer was ready")


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


def _route_label(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    if path.startswith("/examples/"):
        return "/examples/{name}"
    if path in _KNOWN_PATHS:
        return path
    return "other"


_KNOWN_PATHS = {
    "/",
    "/health",
    "/metrics",
    "/v1/predict",
    "/v1/tasks",
    "/v1/info",
    "/examples",
    "/openapi.json",
    "/docs",
    "/redoc",
}


class RequestMetricsMiddleware:
    """Counts every HTTP response by route and status, and times it."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = _route_label(scope.get("path", ""))
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(time.perf_counter() - started, route)


_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


class RequireApiKey:
    """A dependency that answers 401 unless the request carries the key (either header)."""

    def __init__(self, api_key: str) -> None:
        self._expected = api_key.encode()

    async def __call__(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        key: Annotated[str | None, Depends(_API_KEY_HEADER)],
    ) -> None:
        given = [v for v in (credentials.credentials if credentials else None, key) if v]
        # compare_digest: the time taken does not tell how much of a key matched
        if not any(hmac.compare_digest(v.encode(), self._expected) for v in given):
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is needed: 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _predict_request_body() -> dict[str, Any]:
    json_schema = PredictJSONRequest.model_json_schema()
    properties = dict(PredictFields.model_json_schema()["properties"])
    properties.pop("tasks")
    form_schema = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "The image file."},
            "task": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Task token; repeat the field or separate tokens with commas (default <CAPTION>).",
            },
            **properties,
            "region": {"type": "string", "description": "x0,y0,x1,y1 in pixels of the image."},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": json_schema},
            },
        }
    }


def _load_examples() -> dict[str, ExampleInfo]:
    examples = {}
    for path in sorted(EXAMPLES_DIR.glob("*.png")):
        with Image.open(path) as image:
            width, height = image.size
        examples[path.name] = ExampleInfo(name=path.name, url=f"/examples/{path.name}", width=width, height=height)
    return examples


def create_app(
    predictor: Any | None = None,
    settings: ServeSettings | None = None,
    *,
    model_path: str | None = None,
    model_name: str | None = None,
) -> FastAPI:
    """Build the application.

    Args:
        predictor: a loaded :class:`~florence2.Florence2` (or anything with its ``predict``); None
            loads ``model_path`` (None: the embedded model).
        settings: limits and batching; the API key defaults to ``$FLORENCE2_API_KEY``.
        model_name: what ``/v1/info`` calls the model (default: the path, or "embedded").
    """
    from florence2 import __version__
    from florence2.pipeline import Florence2

    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV))
    if predictor is None:
        predictor = Florence2.from_pretrained(model_path)
    model_name = model_name or (str(model_path) if model_path else "embedded")
    options = supported_options(predictor)
    examples = _load_examples()

    def run_batch(key: Hashable, items: Sequence[tuple[Image.Image, str | None, Any]]) -> list[dict[str, Any]]:
        tasks, option_items = key
        texts = [text for _, text, _ in items]
        regions = [None if region is None else list(region) for _, _, region in items]
        return predictor.predict(
            [image for image, _, _ in items],
            list(tasks),
            text=texts if any(t is not None for t in texts) else None,
            region=regions if any(r is not None for r in regions) else None,
            batch_size=len(items),
            **dict(option_items),
        )

    metrics = ServerMetrics(queue_depth=lambda: batcher.depth, busy=lambda: float(batcher.busy))
    batcher = Batcher(
        run_batch,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        on_batch=metrics.record_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(
        title="florence2",
        version=__version__,
        summary="Florence-2 vision tasks over HTTP: captions, detection, grounding, segmentation, OCR.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    protected = [Depends(RequireApiKey(settings.api_key))] if settings.api_key else []

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status, error.code, error.detail, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(422, "bad_request", str(error.errors()))

    # -- API -------------------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        dependencies=protected,
        openapi_extra=_predict_request_body(),
        summary="Run tasks on one image",
        tags=["api"],
    )
    async def predict(request: Request) -> PredictResponse:
        """Send the image as a multipart file (fields ``image``, ``task`` repeated or comma-separated,
        ``text``, ``region`` as ``x0,y0,x1,y1``, decoding options) or as base64 in a JSON body.
        Concurrent requests with the same tasks, inputs and options are batched together."""
        started = time.perf_counter()
        body = await read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            data, values = await parse_multipart(request, body)
        elif content_type in ("application/json", ""):
            data, values = parse_json_body(body)
        else:
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json")

        tokens = parse_tasks(values.get("tasks"))
        text = values.get("text")
        if text is not None and len(text) > settings.max_text_chars:
            raise ApiError(
                422, "text_too_long", f"text is {len(text)} characters; the limit is {settings.max_text_chars}"
            )
        region = parse_region(values.get("region"))
        chosen = {name: values[name] for name in OPTION_FIELDS if values.get(name) is not None}
        unsupported = sorted(set(chosen) - options)
        if unsupported:
            raise ApiError(422, "unsupported_option", f"this model does not accept {unsupported}")
        if chosen.get("num_beams", 1) > settings.max_num_beams:
            raise ApiError(422, "too_many_beams", f"num_beams is limited to {settings.max_num_beams}")
        if chosen.get("max_new_tokens", 1) > settings.max_new_tokens:
            raise ApiError(422, "too_many_new_tokens", f"max_new_tokens is limited to {settings.max_new_tokens}")

        decode_started = time.perf_counter()
        image = await run_in_threadpool(decode_image, data, settings.max_image_pixels)
        decode_s = time.perf_counter() - decode_started
        if region is not None:
            check_region(region, image.size)
        check_inputs(tokens, text, region, image.size)

        key: BatchKey = (tokens, tuple(sorted(chosen.items())))
        try:
            future = batcher.submit(key, (image, text, region))
        except QueueFullError as error:
            metrics.rejected.inc()
            raise ApiError(503, "queue_full", str(error), headers={"Retry-After": str(error.retry_after_s)}) from None
        except ShuttingDownError as error:
            raise ApiError(503, "shutting_down", str(error)) from None
        try:
            outcome = await wait_unless_disconnected(future, request)
        except ApiError:
            raise
        except ShuttingDownError as error:
            raise ApiError(503, "shutting_down", str(error)) from None
        except (Florence2Error, ValueError) as error:  # e.g. a prompt too long for the model
            raise ApiError(422, "bad_input", str(error)) from None
        except Exception as error:
            log.exception("inference failed")
            raise ApiError(500, "inference_failed", f"inference failed: {type(error).__name__}") from None
        metrics.queue_wait.observe(outcome.queue_s)
        return PredictResponse(
            tasks=list(tokens),
            image=ImageInfo(width=image.width, height=image.height),
            results=outcome.result,
            timings=Timings(
                decode_ms=round(decode_s * 1000, 3),
                queue_ms=round(outcome.queue_s * 1000, 3),
                inference_ms=round(outcome.inference_s * 1000, 3),
                total_ms=round((time.perf_counter() - started) * 1000, 3),
                batch_size=outcome.batch_size,
            ),
        )

    @app.get(
        "/v1/tasks", response_model=TasksResponse, responses={401: _ERRORS[401]}, dependencies=protected, tags=["api"]
    )
    async def tasks() -> TasksResponse:
        """The task registry: token, input kind ('none', 'text', 'region'), description, prompt."""
        return TasksResponse(
            tasks=[
                TaskInfo(
                    token=s.token, input=s.input, description=s.description, prompt=s.prompt, result_type=s.result_type
                )
                for s in TASKS.values()
            ]
        )

    info_body = InfoResponse(
        model=_model_info(predictor, model_name),
        options=sorted(options, key=OPTION_FIELDS.index),
        limits={
            "max_body_bytes": settings.max_body_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_new_tokens": settings.max_new_tokens,
            "max_num_beams": settings.max_num_beams,
            "max_text_chars": settings.max_text_chars,
        },
        batching={
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue": settings.max_queue,
        },
    )

    @app.get(
        "/v1/info", response_model=InfoResponse, responses={401: _ERRORS[401]}, dependencies=protected, tags=["api"]
    )
    async def info() -> InfoResponse:
        """The model, the request options it accepts, the limits and the batching settings."""
        return info_body

    @app.get("/health", response_model=HealthResponse, tags=["ops"])
    async def health() -> HealthResponse:
        """Liveness; open even when an API key is set (it reveals nothing but this)."""
        return HealthResponse(status="ok", auth_required=settings.api_key is not None)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}}, 401: _ERRORS[401]},
        dependencies=protected,
        tags=["ops"],
    )
    async def metrics_text() -> PlainTextResponse:
        """Prometheus text format: requests by route and status, latency, queue depth, batch sizes."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    # -- page --------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/examples", response_model=ExamplesResponse, tags=["page"])
    async def list_examples() -> ExamplesResponse:
        """The example images shipped with the package."""
        return ExamplesResponse(examples=list(examples.values()))

    @app.get("/examples/{name}", response_class=FileResponse, responses={404: {"model": ErrorResponse}}, tags=["page"])
    async def example(name: str) -> FileResponse:
        """One shipped example image, by the name ``/examples`` lists (no other file is reachable)."""
        if name not in examples:
            raise ApiError(404, "not_found", f"no example named {name!r}")
        return FileResponse(EXAMPLES_DIR / name, media_type="image/png")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
