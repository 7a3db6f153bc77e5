"""The FastAPI application: prediction API, task list, health, metrics and the web page.

``create_app(predictor, settings)`` builds it around anything with Florence2's ``predict`` and
``info`` (the tests pass stand-ins). Routes, each declared once below; its metrics label is the
path it is declared with (:mod:`florence2.serve.middleware`):

* ``POST /v1/predict``: an image (multipart file, or base64 in JSON) + tasks + inputs + decoding
  options -> result dicts, image size and timings. Runs through the dynamic batcher.
* ``POST /v1/chat/completions``, ``GET /v1/models``: the OpenAI-compatible API
  (:mod:`florence2.serve.openai`); chat completions go through the same batcher as predictions,
  and ``stream: true`` sends the answer as server-sent events while it is generated.
* ``GET /v1/tasks``, ``GET /v1/info``: the task registry; model, limits and options.
* ``GET /health`` (always open), ``GET /metrics`` (Prometheus text).
* ``GET /`` and ``/static/*``: the web page; ``GET /examples``, ``/examples/{name}``: the example
  images shipped with the package.

Errors are JSON ``{"error": code, "detail": message}``: 400 for a body that cannot be parsed at
all (broken JSON or multipart), 401 without a valid API key, 413 for a body or image over the
limits, 415 for another content type, 422 for values that are not valid (bad base64, an image that
cannot be decoded, unknown task, bad region, options over the limits), 503 with ``Retry-After``
when the queue is full. The OpenAI routes answer the same errors in OpenAI's shape.

The server reads only the bytes a client sends: it never opens a path or URL given by a client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from florence2.errors import Florence2Error, ImageLoadError, RegionError
from florence2.image import load_image
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.serve import openai
from florence2.serve.batching import Batcher, Outcome, QueueFullError, ShuttingDownError
from florence2.serve.metrics import CONTENT_TYPE, ServerMetrics
from florence2.serve.middleware import RequestMetricsMiddleware, RequireApiKey
from florence2.serve.requests import (
    ApiError,
    Prediction,
    check_inputs,
    check_text,
    content_type_of,
    decode_image,
    parse_options,
    parse_region,
    parse_tasks,
    read_body,
    read_prediction,
)
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
from florence2.serve.streaming import END, StreamSink, sse
from florence2.tasks import TASKS

STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "examples"

log = logging.getLogger("florence2.serve")

# (tasks, sorted option items): requests with equal keys run in one predict call, each image with
# its own text and region, whichever route they came from
BatchKey = tuple[tuple[str | None, ...], tuple[tuple[str, Any], ...]]
T = TypeVar("T")


@dataclass
class Queued:
    """One request in the batcher's queue: its model input and inputs, and what its route needs back
    beyond the result (the generated text and token counts; the pieces of a streamed answer)."""

    image: Any
    text: str | None
    region: tuple[float, ...] | None
    details: bool = False
    sink: StreamSink | None = None


@dataclass
class Streaming:
    """A streaming request under way: its sink, future, image, decoding time and first event."""

    sink: StreamSink
    future: Future
    image: Any
    decode_s: float
    first: Any


def _error_response(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    if any(request.url.path == path or request.url.path.startswith(f"{path}/") for path in openai.OPENAI_PATHS):
        body, status = openai.error_body(status, code, detail), openai.error_status(status)
    else:
        body = {"error": code, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


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


def predictor_info(predictor: Any) -> dict[str, Any]:
    """``predictor.info()``: what the predictor is and which keyword options its ``predict`` takes
    (see :meth:`florence2.Florence2.info`; ``options`` is required, ``parameters``, ``device`` and
    ``dtype`` are shown when given). TypeError for a predictor that cannot say."""
    info = getattr(predictor, "info", None)
    described = info() if callable(info) else None
    if not isinstance(described, dict) or "options" not in described:
        raise TypeError(
            f"the server needs a predictor with an info() method like Florence2.info() that lists the "
            f"options its predict accepts under 'options'; {type(predictor).__name__} has no such info()"
        )
    return described


def supported_options(predictor: Any) -> set[str]:
    """The request options the predictor accepts: those of :data:`OPTION_FIELDS` its info lists."""
    return set(predictor_info(predictor)["options"]) & set(OPTION_FIELDS)


def _model_info(info: dict[str, Any], name: str) -> ModelInfo:
    return ModelInfo(name=name, **{key: info.get(key) for key in ("parameters", "device", "dtype")})


# ---------------------------------------------------------------------------------------------
# Waiting for the model
# ---------------------------------------------------------------------------------------------


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(awaitable: Awaitable[T], request: Request) -> T:
    """What ``awaitable`` gives, unless the client disconnects first: then it is cancelled and 499
    is recorded (nobody receives it)."""
    waiting = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if waiting.done():
        return waiting.result()
    waiting.cancel()
    raise ApiError(499, "client_closed_request", "the client disconnected before its answer was ready")


async def wait_unless_disconnected(future: Future, request: Request) -> Outcome:
    """The outcome of a queued request; if its client disconnects first, the request is cancelled
    (dropped without using the model when its batch has not started) and 499 is recorded."""
    return await unless_disconnected(asyncio.wrap_future(future), request)


def failure(error: BaseException) -> ApiError:
    """The answer to a request whose prediction failed."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ShuttingDownError):
        return ApiError(503, "shutting_down", str(error))
    if isinstance(error, ImageLoadError):
        return ApiError(422, "bad_image", str(error))
    if isinstance(error, RegionError):
        return ApiError(422, "bad_region", str(error))
    if isinstance(error, (Florence2Error, ValueError)):  # e.g. a prompt too long for the model
        return ApiError(422, "bad_input", str(error))
    log.error("inference failed", exc_info=error)
    return ApiError(500, "inference_failed", f"inference failed: {type(error).__name__}")


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


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


def _chat_request_body() -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["messages"],
        "description": "An OpenAI chat-completion request; see docs/serving.md for what this server reads.",
        "properties": {
            "model": {"type": "string", "description": "Any name: the server serves one model (GET /v1/models)."},
            "messages": {
                "type": "array",
                "description": "The last message must be the user's: a text part (a task token such as <OD>, "
                "optionally followed by the task's text input, or a free prompt) and an image_url part "
                "with a data: URL.",
                "items": {"type": "object"},
            },
            "stream": {"type": "boolean", "default": False},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "enum": [0], "description": "0 or left out: decoding is deterministic."},
            **{name: PredictFields.model_json_schema()["properties"][name] for name in OPTION_FIELDS},
        },
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
        predictor: a loaded :class:`~florence2.Florence2` (or anything with its ``predict`` and
            ``info``: TypeError without ``info``); None loads ``model_path`` (None: the embedded model).
        settings: limits and batching; the API key defaults to ``$FLORENCE2_API_KEY``.
        model_name: what ``/v1/info`` and ``/v1/models`` call the model (default: the path, or
            "embedded").
    """
    from florence2 import __version__
    from florence2.pipeline import Florence2

    settings = settings or ServeSettings(api_key=os.environ.get(API_KEY_ENV))
    if predictor is None:
        predictor = Florence2.from_pretrained(model_path)
    model_name = model_name or (str(model_path) if model_path else "embedded")
    options = supported_options(predictor)
    accepted = set(predictor_info(predictor)["options"])
    # on_error="return" (Florence2.predict): a request whose input fails inside a batch fails alone
    # and the others are answered from the same batch (the batcher's per-item results)
    per_item_errors = {"on_error": "return"} if "on_error" in accepted else {}
    examples = _load_examples()
    # decode straight to model input when the predictor can (the full-size image is let go at once)
    prepare = getattr(predictor, "prepare_image", load_image)
    decoding = asyncio.Semaphore(settings.max_decodes)
    started_at = int(time.time())

    def run_batch(key: Hashable, items: Sequence[Queued]) -> list[Any]:
        tasks, option_items = key
        texts = [item.text for item in items]
        regions = [None if item.region is None else list(item.region) for item in items]
        extra: dict[str, Any] = {}
        if any(item.sink is not None for item in items):  # streaming rows ride in the same batch
            for item in items:
                if item.sink is not None:
                    item.sink.restart()
            extra["stream"] = [None if item.sink is None else item.sink.on_piece for item in items]
        if any(item.details for item in items):
            extra["details"] = True
        results = predictor.predict(
            [item.image for item in items],
            list(tasks),
            text=texts if any(t is not None for t in texts) else None,
            region=regions if any(r is not None for r in regions) else None,
            batch_size=len(items),
            **per_item_errors,
            **dict(option_items),
            **extra,
        )
        if "details" in extra:  # a /v1/predict answer is the results alone, whatever it shared a batch with
            results = [
                {k: v for k, v in result.items() if k != "generation"}
                if isinstance(result, dict) and not item.details
                else result
                for item, result in zip(items, results)
            ]
        return results

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
        return _error_response(request, error.status, error.code, error.detail, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(request, error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response(request, 500, "internal_error", f"internal error: {type(error).__name__}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(request, 422, "bad_request", str(error.errors()))

    # -- the queue -------------------------------------------------------------------------------

    async def enqueue(
        prediction: Prediction, *, details: bool = False, sink: StreamSink | None = None
    ) -> tuple[Future, Any, float]:
        """Queue a checked request: its future, its decoded image and the seconds decoding took.

        A place in the queue is taken before the image is decoded: a request that would be
        answered 503 costs no decoding, and no more images are decoded or held than the queue has
        room for. The image's bytes are let go once it is decoded."""
        try:
            slot = batcher.slot()
        except QueueFullError as error:
            metrics.rejected.inc()
            raise ApiError(503, "queue_full", str(error), headers={"Retry-After": str(error.retry_after_s)}) from None
        except ShuttingDownError as error:
            raise ApiError(503, "shutting_down", str(error)) from None
        with slot:
            async with decoding:
                decode_started = time.perf_counter()
                image = await run_in_threadpool(decode_image, prediction.data, settings.max_image_pixels, prepare)
                decode_s = time.perf_counter() - decode_started
            prediction.data = None
            check_inputs(prediction.tokens, prediction.text, prediction.region, image.size)
            key: BatchKey = (prediction.tokens, tuple(sorted(prediction.options.items())))
            try:
                future = slot.submit(key, Queued(image, prediction.text, prediction.region, details, sink))
            except ShuttingDownError as error:
                raise ApiError(503, "shutting_down", str(error)) from None
        return future, image, decode_s

    async def outcome_of(future: Future, request: Request) -> Outcome:
        try:
            outcome = await wait_unless_disconnected(future, request)
        except Exception as error:
            raise failure(error) from None
        metrics.queue_wait.observe(outcome.queue_s)
        return outcome

    def predict_response(
        prediction: Prediction, image: Any, results: dict[str, Any], outcome: Outcome, decode_s: float, started: float
    ) -> PredictResponse:
        return PredictResponse(
            tasks=[token for token in prediction.tokens if token is not None],
            image=ImageInfo(width=image.size[0], height=image.size[1]),
            results=results,
            timings=Timings(
                decode_ms=round(decode_s * 1000, 3),
                queue_ms=round(outcome.queue_s * 1000, 3),
                inference_ms=round(outcome.inference_s * 1000, 3),
                total_ms=round((time.perf_counter() - started) * 1000, 3),
                batch_size=outcome.batch_size,
            ),
        )

    async def start_stream(prediction: Prediction, request: Request, *, details: bool) -> Streaming:
        """Queue a streaming request and wait for its first piece (or its end). A request that
        fails before any text is generated (a bad input, a full queue) gets a plain error answer;
        one whose client leaves first is dropped (499)."""
        sink = StreamSink(asyncio.get_running_loop())
        future, image, decode_s = await enqueue(prediction, details=details, sink=sink)
        sink.follow(future)
        try:
            first = await unless_disconnected(sink.queue.get(), request)
        except ApiError:
            sink.cancel()
            future.cancel()
            raise
        if first is END and future.exception() is not None:
            raise failure(future.exception())
        return Streaming(sink, future, image, decode_s, first)

    def stream_response(
        stream: Streaming,
        *,
        head: list[str],
        piece: Callable[[str | None, str], str],
        finish: Callable[[Outcome], list[str]],
        error: Callable[[ApiError], str],
        tail: Sequence[str] = (),
    ) -> StreamingResponse:
        """Server-sent events: ``head``, one event per piece as it is generated, then ``finish``'s
        events from the outcome (or one ``error`` event), then ``tail``. A client that goes away
        cancels the request's sink, which stops its rows at the next decoding step."""

        async def events() -> AsyncIterator[str]:
            try:
                for event in head:
                    yield event
                item = stream.first
                while item is not END:
                    yield piece(*item)
                    item = await stream.sink.queue.get()
                if stream.sink.broken:
                    failed: ApiError | None = ApiError(
                        500, "inference_failed", "the batch failed after the answer had begun"
                    )
                else:
                    failed = None if stream.future.exception() is None else failure(stream.future.exception())
                if failed is not None:
                    yield error(failed)
                else:
                    outcome = stream.future.result()
                    metrics.queue_wait.observe(outcome.queue_s)
                    for event in finish(outcome):
                        yield event
                for event in tail:
                    yield event
            finally:
                stream.sink.cancel()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(stream.sink.cancel),  # also when the stream never started
        )

    # -- API -------------------------------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={
            200: {
                "description": "The results; with stream=true, server-sent events ('piece', then 'result').",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_ERRORS,
        },
        dependencies=protected,
        openapi_extra=_predict_request_body(),
        summary="Run tasks on one image",
        tags=["api"],
    )
    async def predict(request: Request) -> PredictResponse:
        """Send the image as a multipart file (fields ``image``, ``task`` repeated or comma-separated,
        ``text``, ``region`` as ``x0,y0,x1,y1``, decoding options) or as base64 in a JSON body.
        Concurrent requests with the same tasks, inputs and options are batched together.
        ``stream=true`` answers with server-sent events while the answer is generated."""
        started = time.perf_counter()
        data, values = await read_prediction(request, settings)
        text = values.get("text")
        tokens = parse_tasks(values.get("tasks"))
        check_text(text, settings.max_text_chars)
        region = parse_region(values.get("region"))
        prediction = Prediction(data, tokens, text, region, parse_options(values, options, settings))
        del data  # the prediction holds the bytes until the image is decoded
        if not values.get("stream"):
            future, image, decode_s = await enqueue(prediction)
            outcome = await outcome_of(future, request)
            return predict_response(prediction, image, outcome.result, outcome, decode_s, started)

        if "stream" not in accepted:
            raise ApiError(422, "unsupported_option", "this model cannot stream its answers")
        stream = await start_stream(prediction, request, details=False)

        def finish(outcome: Outcome) -> list[str]:
            body = predict_response(prediction, stream.image, outcome.result, outcome, stream.decode_s, started)
            return [sse(body.model_dump(mode="json"), event="result")]

        return stream_response(
            stream,
            head=[],
            piece=lambda task, text: sse({"task": task, "text": text}, event="piece"),
            finish=finish,
            error=lambda e: sse({"error": e.code, "detail": e.detail}, event="error"),
        )

    # -- OpenAI-compatible API -------------------------------------------------------------------

    @app.post(
        "/v1/chat/completions",
        responses={status: {"description": about["description"]} for status, about in _ERRORS.items()},
        dependencies=protected,
        openapi_extra=_chat_request_body(),
        summary="OpenAI-compatible chat completion (one image, one task)",
        tags=["openai"],
    )
    async def chat_completions(request: Request) -> Any:
        """A user message with a task token (and its text input) and an image as a data URL; the
        answer is a chat completion whose ``florence2`` field holds the ``/v1/predict`` answer.
        ``stream: true`` sends chunks as server-sent events while the answer is generated."""
        started = time.perf_counter()
        content_type_of(request, ("application/json",))
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        chat = openai.parse_chat_request(body, options, settings)
        del body
        if "details" not in accepted:
            raise ApiError(501, "not_supported", "this predictor cannot give the generated text (no 'details' option)")
        if chat.stream and "stream" not in accepted:
            raise ApiError(422, "unsupported_parameter", "this predictor cannot stream (no 'stream' option)")
        completion_id = openai.new_completion_id()
        key = chat.prediction.tokens[0] or "text"  # the result's key: the task, or "text" for a free prompt

        def answer(outcome: Outcome, image: Any, decode_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
            """The generation details and the florence2 field (the /v1/predict answer)."""
            results = dict(outcome.result)
            generation = results.pop("generation")[key]
            florence2 = predict_response(chat.prediction, image, results, outcome, decode_s, started)
            return generation, florence2.model_dump(mode="json")

        if not chat.stream:
            future, image, decode_s = await enqueue(chat.prediction, details=True)
            outcome = await outcome_of(future, request)
            generation, florence2 = answer(outcome, image, decode_s)
            return JSONResponse(openai.completion(completion_id, model_name, generation, florence2))

        stream = await start_stream(chat.prediction, request, details=True)

        def finish(outcome: Outcome) -> list[str]:
            generation, florence2 = answer(outcome, stream.image, stream.decode_s)
            reason = generation["finish_reason"]
            last = [sse(openai.chunk(completion_id, model_name, {}, reason, florence2=florence2))]
            if chat.include_usage:
                last.append(sse(openai.chunk(completion_id, model_name, usage=openai.usage(generation))))
            return last

        return stream_response(
            stream,
            head=[sse(openai.chunk(completion_id, model_name, {"role": "assistant", "content": ""}))],
            piece=lambda task, text: sse(openai.chunk(completion_id, model_name, {"content": text})),
            finish=finish,
            error=lambda e: sse(openai.error_body(openai.error_status(e.status), e.code, e.detail)),
            tail=[sse("[DONE]")],
        )

    @app.get("/v1/models", responses={401: _ERRORS[401]}, dependencies=protected, tags=["openai"])
    async def models() -> dict[str, Any]:
        """OpenAI-compatible model list: the one loaded model."""
        return {"object": "list", "data": [openai.model_card(model_name, started_at)]}

    @app.get(
        "/v1/models/{model_id:path}",
        responses={401: _ERRORS[401], 404: {"description": "No such model."}},
        dependencies=protected,
        tags=["openai"],
    )
    async def model(model_id: str) -> dict[str, Any]:
        """OpenAI-compatible model retrieval."""
        if model_id != model_name:
            raise ApiError(404, "model_not_found", f"this server serves {model_name!r}, not {model_id!r}")
        return openai.model_card(model_name, started_at)

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
        model=_model_info(predictor_info(predictor), model_name),
        options=sorted(options, key=OPTION_FIELDS.index),
        limits={
            "max_body_bytes": settings.max_body_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_new_tokens": settings.max_new_tokens,
            "max_num_beams": settings.max_num_beams,
            "max_text_chars": settings.max_text_chars,
            "max_decodes": settings.max_decodes,
            "body_timeout_s": settings.body_timeout_s,
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
