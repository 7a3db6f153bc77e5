"""The FastAPI application: prediction API, task list, health, metrics and the web page.

``create_app(predictor, settings)`` builds it around anything with Florence2's ``predict`` and
``info`` (the tests pass stand-ins). Routes, each declared once below; its metrics label is the
path it is declared with (:mod:`florence2.serve.middleware`):

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
import logging
import os
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from florence2.errors import Florence2Error, ImageLoadError, RegionError
from florence2.image import load_image
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.serve.batching import Batcher, Outcome, QueueFullError, ShuttingDownError
from florence2.serve.metrics import CONTENT_TYPE, ServerMetrics
from florence2.serve.middleware import RequestMetricsMiddleware, RequireApiKey
from florence2.serve.requests import (
    ApiError,
    check_inputs,
    check_text,
    decode_image,
    parse_options,
    parse_region,
    parse_tasks,
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
from florence2.tasks import TASKS

STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "examples"

log = logging.getLogger("florence2.serve")

# (tasks, sorted option items): requests with equal keys run in one predict call, each image with
# its own text and region
BatchKey = tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]


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
        predictor: a loaded :class:`~florence2.Florence2` (or anything with its ``predict`` and
            ``info``: TypeError without ``info``); None loads ``model_path`` (None: the embedded model).
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
    # on_error="return" (Florence2.predict): a request whose input fails inside a batch fails alone
    # and the others are answered from the same batch (the batcher's per-item results)
    per_item_errors = {"on_error": "return"} if "on_error" in predictor_info(predictor)["options"] else {}
    examples = _load_examples()
    # decode straight to model input when the predictor can (the full-size image is let go at once)
    prepare = getattr(predictor, "prepare_image", load_image)
    decoding = asyncio.Semaphore(settings.max_decodes)

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
            **per_item_errors,
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

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response(500, "internal_error", f"internal error: {type(error).__name__}")

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
        data, values = await read_prediction(request, settings)
        tokens = parse_tasks(values.get("tasks"))
        text = values.get("text")
        check_text(text, settings.max_text_chars)
        region = parse_region(values.get("region"))
        chosen = parse_options(values, options, settings)

        # a place in the queue before the image is decoded: a request that would be answered 503
        # costs no decoding, and no more images are decoded or held than the queue has room for
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
                image = await run_in_threadpool(decode_image, data, settings.max_image_pixels, prepare)
                decode_s = time.perf_counter() - decode_started
            del data
            check_inputs(tokens, text, region, image.size)
            key: BatchKey = (tokens, tuple(sorted(chosen.items())))
            try:
                future = slot.submit(key, (image, text, region))
            except ShuttingDownError as error:
                raise ApiError(503, "shutting_down", str(error)) from None
        try:
            outcome = await wait_unless_disconnected(future, request)
        except ApiError:
            raise
        except ShuttingDownError as error:
            raise ApiError(503, "shutting_down", str(error)) from None
        except ImageLoadError as error:
            raise ApiError(422, "bad_image", str(error)) from None
        except RegionError as error:
            raise ApiError(422, "bad_region", str(error)) from None
        except (Florence2Error, ValueError) as error:  # e.g. a prompt too long for the model
            raise ApiError(422, "bad_input", str(error)) from None
        except Exception as error:
            log.exception("inference failed")
            raise ApiError(500, "inference_failed", f"inference failed: {type(error).__name__}") from None
        metrics.queue_wait.observe(outcome.queue_s)
        return PredictResponse(
            tasks=list(tokens),
            image=ImageInfo(width=image.size[0], height=image.size[1]),
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
