"""Request and response models of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Request options a client may set; each is forwarded to ``Florence2.predict`` when it accepts it.
DECODING_FIELDS = ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "length_penalty")
SCORE_FIELDS = ("score_threshold", "nms_iou")
OPTION_FIELDS = DECODING_FIELDS + SCORE_FIELDS


class PredictFields(BaseModel):
    """Everything of a prediction request but the image (shared by the JSON and multipart forms)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] | str = Field(
        default="<CAPTION>",
        description="Task tokens ('<OD>', 'OD' or 'od'); a list, or one string with commas. Several tasks "
        "share one vision encoding. See GET /v1/tasks.",
        examples=[["<OD>", "<CAPTION>"]],
    )
    text: str | None = Field(
        default=None, description="Text input of the tasks that take one (grounding, referring, open vocabulary)."
    )
    region: list[float] | str | None = Field(
        default=None,
        description="Region input of the region tasks: [x0, y0, x1, y1] (or 'x0,y0,x1,y1') in pixels of the image.",
        examples=[[10, 20, 90, 100]],
    )
    num_beams: int | None = Field(default=None, ge=1, description="Beam width (limit: GET /v1/info).")
    max_new_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate (limit: GET /v1/info).")
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, le=16, description="Ban repeated n-grams; 0: off.")
    length_penalty: float | None = Field(default=None, ge=-10, le=10, description="Beam search length penalty.")
    score_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Drop regions scoring below this (when the model supports scores)."
    )
    nms_iou: float | None = Field(
        default=None, ge=0, le=1, description="Per-label non-maximum suppression IoU (when the model supports it)."
    )
    stream: bool = Field(
        default=False,
        description="Answer with server-sent events: 'piece' events ({task, text}) while the answer is "
        "generated (token by token with greedy decoding, at the end with beam search), then one 'result' "
        "event holding the usual response (or one 'error' event).",
    )


class PredictJSONRequest(PredictFields):
    """A prediction request as JSON, the image in base64."""

    image: str = Field(description="The image file's bytes in base64, or a data URL (data:image/png;base64,...).")


class ImageInfo(BaseModel):
    width: int = Field(description="Width in pixels, after EXIF rotation: the frame of every coordinate.")
    height: int


class Timings(BaseModel):
    decode_ms: float = Field(description="Image decoding.")
    queue_ms: float = Field(description="Wait for the request's batch to start.")
    inference_ms: float = Field(description="Model time of the whole batch.")
    total_ms: float = Field(description="From request to response.")
    batch_size: int = Field(description="Requests in the batch this one ran in.")


class PredictResponse(BaseModel):
    tasks: list[str] = Field(description="The task tokens that ran, in order.")
    image: ImageInfo
    results: dict[str, Any] = Field(
        description="Florence2.predict's result dict, unchanged: {task token: result, ...} in the official "
        "format, plus confidence scores where the model gives them ('scores', 'sequence_scores')."
    )
    timings: Timings


class TaskInfo(BaseModel):
    token: str
    input: str = Field(description="'none', 'text' or 'region'.")
    description: str
    prompt: str
    result_type: str


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]


class HealthResponse(BaseModel):
    status: str
    auth_required: bool = Field(description="Whether /v1/* and /metrics need an API key.")


class ExampleInfo(BaseModel):
    name: str
    url: str
    width: int
    height: int


class ExamplesResponse(BaseModel):
    examples: list[ExampleInfo]


class ModelInfo(BaseModel):
    name: str
    parameters: int | None = None
    device: str | None = None
    dtype: str | None = None


class InfoResponse(BaseModel):
    model: ModelInfo
    options: list[str] = Field(description="Request options this server forwards to the model.")
    limits: dict[str, Any]
    batching: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str = Field(description="A stable code, e.g. 'unknown_task', 'queue_full'.")
    detail: str = Field(description="What went wrong, for humans.")
