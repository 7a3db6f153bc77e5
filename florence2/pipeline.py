"""The predictor: image(s) + task -> official result dicts.

>>> from florence2 import Florence2
>>> f2 = Florence2.from_pretrained("path/to/Florence-2-base")    # or no path: the embedded model
>>> f2.predict("car.jpg", "<OD>")
{'<OD>': {'bboxes': [[34.24, 160.08, 597.44, 371.76], ...], 'labels': ['car', ...], 'scores': [0.91, ...]},
 'sequence_scores': {'<OD>': 0.88}}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from florence2.errors import CheckpointError, Florence2Error, TaskError
from florence2.generation import DecodingOptions, GenerationOutput, search
from florence2.image import MAX_IMAGE_PIXELS, ImageSource, PreparedImage
from florence2.model.florence2 import Florence2Model
from florence2.parsing import clean_text
from florence2.processor import Florence2Processor
from florence2.progress import progress_bar
from florence2.quantization import QUANTIZATION_MODES, quantize_int8
from florence2.scoring import TokenScores, filter_result, sequence_score
from florence2.tasks import task_inputs
from florence2.tokenizer import Florence2Tokenizer
from florence2.weights import load_model, read_generation_settings, resolve_checkpoint, save_model

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "model"
# keyword options of ``Florence2.predict`` other than the decoding options
BACKENDS = ("torch", "onnxruntime")
PREDICT_OPTIONS = frozenset({"batch_size", "progress", "score_threshold", "nms_iou", "on_error", "stream", "details"})
# stream(task, piece) -> False to stop: see Florence2.predict
StreamCallback = Callable[[str | None, str], bool | None]


@dataclass(frozen=True)
class EncodedImage:
    """An image already through the vision tower (:meth:`Florence2.encode_images`): its image tokens
    and original size. ``predict`` takes it wherever it takes an image and skips the vision tower, so
    one encoding serves any number of later calls (e.g. a grounding pass on a caption just made)."""

    features: torch.Tensor  # (N_img, D) image tokens, on the model's device
    size: tuple[int, int]  # (width, height) of the original image


def default_model_path() -> Path:
    """The model shipped inside the package."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise CheckpointError(f"no embedded model in this installation ({DEFAULT_MODEL_DIR}); pass a checkpoint path")
    return DEFAULT_MODEL_DIR


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Florence2:
    """A loaded model with its processor. ``predict`` runs any task on one image or many."""

    def __init__(
        self, model: Florence2Model, processor: Florence2Processor, generation_defaults: dict[str, Any] | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.generation_defaults = dict(generation_defaults or {})
        self.num_image_tokens = model.config.num_image_tokens(processor.image_size)
        self.quantized: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        quantize: str | None = None,
        backend: str = "torch",
    ) -> Florence2:
        """Load a checkpoint folder of either public layout (or a hub id); no path: the embedded model.

        dtype: float32 (default, the reference's numbers), float16, bfloat16, or ``"auto"``: bfloat16
            on CPUs that compute it natively (AMX or AVX512-BF16) and on recent GPUs, float16 on older
            GPUs, float32 elsewhere (:func:`florence2.weights.parse_dtype`). With ``quantize`` or the
            ``"onnxruntime"`` backend ``"auto"`` is float32: the int8 layers and the exported graphs
            take float32 inputs.
        quantize: ``"int8"`` stores the linear layers as int8 for faster CPU inference
            (:mod:`florence2.quantization`); None keeps ``dtype``.
        backend: ``"torch"`` (this package's PyTorch model) or ``"onnxruntime"`` (the ONNX graphs of
            an exported folder run by ONNX Runtime, :mod:`florence2.onnx_model`; no torch model is
            built). Generation, scores and parsing are the same code for both.
        """
        if quantize is not None and quantize not in QUANTIZATION_MODES:
            raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZATION_MODES}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        if dtype == "auto" and (quantize is not None or backend == "onnxruntime"):
            dtype = None
        folder = default_model_path() if path is None else resolve_checkpoint(path)
        if backend == "onnxruntime":
            from florence2.onnx_model import load_onnx_model

            model = load_onnx_model(folder, device=device, dtype=dtype, quantize=quantize)  # the _int8 graphs
        else:
            model = load_model(folder, device=device, dtype=dtype)
            if quantize == "int8":
                model = quantize_int8(model)
        processor = Florence2Processor.from_pretrained(folder, model.config.text.max_position_embeddings)
        predictor = cls(model, processor, read_generation_settings(folder))
        predictor.quantized = quantize
        return predictor

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the checkpoint (native transformers layout) with tokenizer and preprocessor config."""
        return save_model(self.model, folder, dtype=dtype, processor=self.processor)

    def info(self) -> dict[str, Any]:
        """What this predictor is and accepts, for servers and reports (no need to reach inside).

        ``options``: the keyword options ``predict`` takes besides image, task, text and region
        (``batch_size``, ``progress``, ``score_threshold``, ``nms_iou`` and every decoding option);
        ``decoding``: the decoding settings used when a call names none."""
        return {
            "backend": getattr(self.model, "backend", "torch"),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "quantized": self.quantized,
            "image_size": list(self.processor.image_size),
            "num_image_tokens": self.num_image_tokens,
            "max_positions": self.processor.max_positions,
            "options": sorted(PREDICT_OPTIONS | {f.name for f in fields(DecodingOptions)}),
            "decoding": asdict(self.decoding_options()),
        }

    def prepare_image(self, image: ImageSource, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> PreparedImage:
        """Load one image and turn it into this model's input now (e.g. on a background worker);
        ``predict`` takes the result wherever it takes an image, with the same results."""
        return self.processor.image_processor.prepare(image, max_pixels=max_pixels)

    def encode_images(
        self, images: Sequence[ImageSource], *, on_error: str = "raise"
    ) -> list[EncodedImage | Florence2Error]:
        """Run the vision tower once per image (as one batch); ``predict`` takes the results as images.
        ``on_error="return"``: an image that cannot be read gives its error in its place."""
        prepared: list[PreparedImage | Florence2Error] = []
        for image in images:
            try:
                prepared.append(self._prepared(image))
            except Florence2Error as error:
                if on_error == "raise":
                    raise
                prepared.append(error)
        good = [p for p in prepared if isinstance(p, PreparedImage)]
        features = iter(self._image_features(good)) if good else iter(())
        return [EncodedImage(next(features), p.size) if isinstance(p, PreparedImage) else p for p in prepared]

    def _prepared(self, image: Any) -> PreparedImage | EncodedImage:
        if isinstance(image, (PreparedImage, EncodedImage)):
            return image
        return self.processor.image_processor.prepare(image)

    def _image_features(self, images: Sequence[PreparedImage | EncodedImage]) -> torch.Tensor:
        """(B, N_img, D) image tokens: the vision tower runs once, on the images not encoded yet."""
        device, dtype = self.model.device, self.model.dtype
        todo = [image for image in images if isinstance(image, PreparedImage)]
        with torch.inference_mode():
            if todo:
                pixel_values, _ = self.processor.image_processor.preprocess(todo)
                computed = iter(self.model.encode_image(pixel_values.to(device)))
            return torch.stack(
                [
                    next(computed) if isinstance(image, PreparedImage) else image.features.to(device, dtype)
                    for image in images
                ]
            )

    def decoding_options(self, **overrides: Any) -> DecodingOptions:
        return DecodingOptions.for_model(self.model.config, **{**self.generation_defaults, **overrides})

    def predict(
        self,
        image: ImageSource | Sequence[ImageSource],
        task: str | Sequence[str] | None = "<CAPTION>",
        text: str | Sequence[str | None] | None = None,
        region: Sequence[float] | str | Sequence[Sequence[float] | str | None] | None = None,
        *,
        batch_size: int = 8,
        progress: bool = False,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        on_error: str = "raise",
        stream: StreamCallback | Sequence[StreamCallback | None] | None = None,
        details: bool = False,
        **decoding: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Run tasks on one image (returns a result dict) or a list of images (a list of them).

        task: a task token (``"<OD>"``, ``"OD"``, ``"od"``), None for a free prompt in ``text``, or
            a list of tasks: the vision encoder then runs once per image for all of them, their
            prompts are decoded together as one batch (``batch_size`` images x tasks rows), and
            their results share one dict. With several tasks, ``text`` goes to the tasks that take text
            and ``region`` to those that take a region.
        text: the task's text input (grounding, referring segmentation, open-vocabulary detection);
            with a list of images, a list gives each image its own text.
        region: the task's region input, an XYXY box in pixels of the original image (or its loc
            tokens); with a list of images, a list of boxes gives each image its own region.
        score_threshold: drop boxes, quads and polygons scoring below this (0..1).
        nms_iou: per-label non-maximum suppression of regions overlapping more than this IoU.
        on_error: ``"raise"`` (default): an image that cannot be read, or whose input is not valid
            (a bad region or text, a prompt too long for the model), raises its error.
            ``"return"``: that image's result is the error (a :class:`~florence2.errors.Florence2Error`)
            and every other image is still answered, from the same batches.
        stream: ``stream(task, piece)``, called after every decoding step with the text that step
            added to the image's answer for ``task`` (often ``""``: a step may add a special token,
            or part of a character); the pieces of one task join to its ``details`` text. Greedy
            decoding streams token by token; beam search knows its answer only at the end, so its
            text comes in one piece then (the steps before still call with ``""``). Returning
            ``False`` stops that image's generation: its rows end where they are and the batch ends
            when no row is left (its result is then cut short). With a list of images, a list
            gives each image its own callback (or None); one callback serves every image.
        details: add ``"generation": {task: {"text", "prompt_tokens", "completion_tokens",
            "finish_reason"}}`` to each result: the answer as decoded, without the sequence tokens
            ``<s>``, ``</s>`` and ``<pad>`` (location and polygon tokens kept), the image and prompt
            tokens the encoder read, the generated tokens (``<s>`` and ``</s>`` included), and why
            it ended (``"stop"``: the model ended it; ``"length"``: ``max_new_tokens``;
            ``"cancelled"``: the stream callback stopped it).
        decoding: :class:`~florence2.generation.DecodingOptions` fields (``num_beams``, ...).

        Results follow the official format, coordinates in float pixels of the original image, plus
        confidence scores (see :mod:`florence2.scoring`): ``scores`` parallel to ``bboxes``,
        ``quad_boxes`` and ``polygons`` (``bboxes_scores`` / ``polygons_scores`` for open-vocabulary
        detection), and ``"sequence_scores": {task: score}`` for every task's whole answer.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        for name, value in (("score_threshold", score_threshold), ("nms_iou", nms_iou)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        tasks = [task] if task is None or isinstance(task, str) else list(task)
        if not tasks:
            raise TaskError("no task given")
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        texts = _per_image(text, len(images), single, "text", isinstance(text, (list, tuple)))
        regions = _per_image(region, len(images), single, "region", _several_regions(region))
        streams = _per_image(stream, len(images), single, "stream", isinstance(stream, (list, tuple)))
        several = len(tasks) > 1
        requests = [[(t, *task_inputs(t, txt, reg, several)) for t in tasks] for txt, reg in zip(texts, regions)]
        options = self.decoding_options(**decoding)
        results: list[dict[str, Any] | Florence2Error] = []
        with progress_bar(len(images), enabled=progress, unit="img") as bar:
            for chunk in _chunks(range(len(images)), max(1, batch_size)):
                batch = [images[i] for i in chunk]
                requests_of = [requests[i] for i in chunk]
                results.extend(
                    self._predict_batch(
                        batch,
                        requests_of,
                        options,
                        score_threshold,
                        nms_iou,
                        on_error,
                        streams=[streams[i] for i in chunk],
                        details=details,
                    )
                )
                bar.update(len(chunk))
        return results[0] if single else results

    def _predict_batch(
        self,
        images: Sequence[ImageSource],
        requests: list[list[tuple[str | None, str | None, Sequence[float] | str | None]]],
        options: DecodingOptions,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        on_error: str = "raise",
        streams: Sequence[StreamCallback | None] | None = None,
        details: bool = False,
    ) -> list[dict[str, Any] | Florence2Error]:
        # each image on its own first: a bad image or input fails that image alone (on_error="return")
        outcomes: list[dict[str, Any] | Florence2Error] = []
        ready: list[tuple[int, PreparedImage | EncodedImage, list[str]]] = []
        for i, source in enumerate(images):
            try:
                image = self._prepared(source)
                prompts = [self.processor.build_prompt(t, text, region, image.size) for t, text, region in requests[i]]
                self.processor.tokenize(prompts, self.num_image_tokens)  # a prompt too long for the model
            except Florence2Error as error:
                if on_error == "raise":
                    raise
                outcomes.append(error)
                continue
            outcomes.append({})
            ready.append((i, image, prompts))
        if ready:
            answers = self._run_model(
                ready,
                [requests[i] for i, _, _ in ready],
                options,
                score_threshold,
                nms_iou,
                streams=None if streams is None else [streams[i] for i, _, _ in ready],
                details=details,
            )
            for (i, _, _), result in zip(ready, answers):
                outcomes[i] = result
        return outcomes

    def _run_model(
        self,
        ready: list[tuple[int, PreparedImage | EncodedImage, list[str]]],
        requests: list[list[tuple[str | None, str | None, Sequence[float] | str | None]]],
        options: DecodingOptions,
        score_threshold: float | None,
        nms_iou: float | None,
        streams: Sequence[StreamCallback | None] | None = None,
        details: bool = False,
    ) -> list[dict[str, Any]]:
        sizes = [image.size for _, image, _ in ready]
        results: list[dict[str, Any]] = [{} for _ in sizes]
        sequence_scores: list[dict[str, float]] = [{} for _ in sizes]
        # every (task, image) pair is one row of a single padded batch: the decoder reads its
        # weights once per step for all of them
        # requests[i]: image i's (task, text, region) list, the same tasks in the same order for all
        rows = [(i, requests[i][k][0]) for k in range(len(requests[0])) for i in range(len(sizes))]
        prompts = [ready[i][2][k] for k in range(len(requests[0])) for i in range(len(sizes))]
        input_ids, mask = self.processor.tokenize(prompts, self.num_image_tokens)
        device = self.model.device
        features = self._image_features([image for _, image, _ in ready])  # once for every task
        # no hook unless an image streams: decoding without one does no per-step Python work
        hook = _StreamHook(self.processor.tokenizer, rows, streams) if streams and any(streams) else None
        with torch.inference_mode():
            if len(rows) > len(sizes):
                features = features[torch.tensor([i for i, _ in rows], device=device)]
            memory, memory_mask = self.model.encode(features, input_ids.to(device), mask.to(device))
            out = search(self.model, memory, memory_mask, options, on_step=hook)
        sequences, logprobs = out.sequences.cpu(), out.token_logprobs.cpu()
        texts = self.processor.batch_decode(sequences)
        if hook is not None:
            hook.finish([clean_text(text) for text in texts])
        if details:
            generation = _generation_details(
                out, texts, mask.sum(1) + self.num_image_tokens, options, set() if hook is None else hook.stopped_rows
            )
            per_image: list[dict[str, Any]] = [{} for _ in sizes]
        for row, ((i, task), answer) in enumerate(zip(rows, texts)):
            scores = TokenScores.from_generation(self.processor.tokenizer, sequences[row], logprobs[row])
            parsed = self.processor.post_process_generation(answer, task, sizes[i], scores=scores)
            key = next(iter(parsed))
            results[i][key] = filter_result(parsed[key], score_threshold, nms_iou)
            if details:
                per_image[i][key] = generation[row]
            sequence_scores[i][key] = sequence_score(
                sequences[row],
                logprobs[row],
                eos_token_id=options.eos_token_id,
                pad_token_id=options.pad_token_id,
                forced_eos_at=options.total_length - 1,
            )
        for result, seq in zip(results, sequence_scores):
            result["sequence_scores"] = seq
        if details:
            for result, generated in zip(results, per_image):
                result["generation"] = generated
        return results


class _RowText:
    """One row's answer text as its ids arrive: each call gives what the new id added, so that the
    pieces join to the final text.

    The growing id list is decoded whole each time (multi-token characters and merges come out
    right) and the new suffix is given, less a tail a later id may still change: an incomplete
    UTF-8 character (decoded as U+FFFD) and, for a tokenizer that cleans up spaces (``" ."`` ->
    ``"."``), everything from the last space on (every clean-up pattern starts with a space).
    """

    def __init__(self, tokenizer: Florence2Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = clean_text(self.tokenizer.decode(self.ids))
        stable = text.rstrip("\ufffd")
        if getattr(self.tokenizer, "clean_up_tokenization_spaces", False):
            cut = max(stable.rfind(" "), 0)
            stable = stable[:cut]
        return self._advance(stable)

    def finish(self, text: str) -> str:
        """The rest of the final ``text`` (its last piece)."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece


class _StreamHook:
    """The decoding hook of ``predict(stream=...)``: each streaming row's new text goes to its
    image's callback after every step; a callback that returns False stops its image's rows."""

    def __init__(
        self,
        tokenizer: Florence2Tokenizer,
        rows: Sequence[tuple[int, str | None]],
        callbacks: Sequence[StreamCallback | None],
    ) -> None:
        self.rows = list(rows)  # (image, task) of each batch row
        self.callbacks = [callbacks[i] for i, _ in rows]
        self.texts = [_RowText(tokenizer) for _ in rows]
        self.running = [callback is not None for callback in self.callbacks]
        self.stopped_images: set[int] = set()
        self.stopped_rows: set[int] = set()

    def __call__(self, tokens: torch.Tensor | None, finished: torch.Tensor) -> list[bool] | None:
        ids = None if tokens is None else tokens.tolist()
        done = finished.tolist()
        for row, (image, task) in enumerate(self.rows):
            if not self.running[row]:
                continue
            piece = "" if ids is None else self.texts[row].push(ids[row])
            if self.callbacks[row](task, piece) is False:
                self.stopped_images.add(image)
            if done[row]:
                self.running[row] = False
        if not self.stopped_images:
            return None
        stop = [image in self.stopped_images for image, _ in self.rows]
        for row, stopping in enumerate(stop):
            if stopping and self.running[row]:
                self.running[row] = False
                self.stopped_rows.add(row)
        return stop

    def finish(self, texts: Sequence[str]) -> None:
        """Give each streaming row the rest of its final text (all of it after beam search)."""
        for row, ((image, task), text) in enumerate(zip(self.rows, texts)):
            callback = self.callbacks[row]
            if callback is None or image in self.stopped_images:
                continue
            piece = self.texts[row].finish(text)
            if piece:
                callback(task, piece)


def _generation_details(
    out: GenerationOutput,
    texts: Sequence[str],
    prompt_tokens: torch.Tensor,
    options: DecodingOptions,
    cancelled: set[int],
) -> list[dict[str, Any]]:
    """Per row: the answer text, the tokens read and generated, and why generation ended."""
    details = []
    for row, (ids, text) in enumerate(zip(out.sequences.tolist(), texts)):
        generated = ids[1:]  # after the decoder start token
        if options.eos_token_id in generated:
            count = generated.index(options.eos_token_id) + 1
            reason = "length" if count == options.total_length - 1 else "stop"
        else:
            count = sum(1 for token in generated if token != options.pad_token_id)
            reason = "length"
        if row in cancelled:
            reason = "cancelled"
        details.append(
            {
                "text": clean_text(text),
                "prompt_tokens": int(prompt_tokens[row]),
                "completion_tokens": count,
                "finish_reason": reason,
            }
        )
    return details


def _several_regions(region: Any) -> bool:
    """True for a list of per-image regions, False for one region (a box or a loc-token string)."""
    return (
        isinstance(region, (list, tuple))
        and len(region) > 0
        and all(r is None or isinstance(r, (str, list, tuple)) for r in region)
    )


def _per_image(value: Any, count: int, single: bool, name: str, per_image: bool) -> list[Any]:
    """``value`` for each of ``count`` images: a per-image list as it is, anything else repeated."""
    if not per_image:
        return [value] * count
    if single:
        raise TaskError(f"a list of {name}s needs a list of images (one {name} per image)")
    if len(value) != count:
        raise TaskError(f"{len(value)} {name}s for {count} images: give one {name} per image")
    return list(value)
