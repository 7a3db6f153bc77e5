"""Fine-tuning on users' datasets: data specs -> examples -> the one :class:`~florence2.train.trainer.Trainer`.

>>> from florence2.train.finetune import FinetuneConfig, finetune
>>> result = finetune(FinetuneConfig(out_dir="runs/cars", data=("coco:train.json:images/",), epochs=5,
...                                  freeze=("vision",), eval_fraction=0.1))
>>> result.checkpoint        # runs/cars/checkpoint-last: a plain native-layout checkpoint

What it does, in order:

1. loads the model (``model``; default: the embedded model), merges a PEFT ``adapter`` into it when
   given, gives ``add_words`` a token and an embedding row each (:func:`add_words`), freezes the
   ``freeze`` groups (:data:`FREEZE_GROUPS`: ``requires_grad`` off, so they are not in the
   optimizer), or puts LoRA layers on it (``lora``: everything else frozen);
2. reads every data spec with :mod:`florence2.data.formats` (``--data`` on the command line), holds
   out ``eval_fraction`` of the images (or reads ``eval_data``), and drops, with a report, examples
   whose target does not fit the decoder's positions or whose prompt does not fit beside the image
   tokens (``long_targets="error"`` raises instead): nothing is truncated;
3. trains with the trainer: a weighted, shuffled stream of examples (:class:`~florence2.data.formats.Mixture`:
   per-spec ``weight`` times per-task ``task_weights``), evaluation loss on the held-out part (and
   the synthetic evaluator's figures for synthetic data with ``synthetic_eval``), ``best/`` by
   ``best_metric``; checkpoints in the native transformers layout, LoRA merged, the source model's
   generation config kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from florence2.data.augment import random_crops
from florence2.data.formats import (
    DataSpec,
    Example,
    Mixture,
    load_data,
    parse_data_spec,
    split_held_out,
)
from florence2.errors import AnnotationError, TaskError
from florence2.model.florence2 import Florence2Model
from florence2.processor import Florence2Processor
from florence2.train.batches import by_target_length, indexed_source
from florence2.train.lora import LoRAConfig, apply_lora, load_peft_adapter, merged_model
from florence2.train.trainer import CHECKPOINT_NAME, RunSettings, TrainConfig, Trainer, make_loss_eval, resumable

# group name -> module prefixes (our names) that --freeze turns off
FREEZE_GROUPS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_tower",),
    "projector": ("multi_modal_projector",),
    "encoder": ("language_model.encoder",),
    "decoder": ("language_model.decoder",),
    "embeddings": ("language_model.shared",),
    "language": ("language_model",),
}
FINETUNE_FILE = "finetune.json"
_GENERATION_CONFIG = "generation_config.json"
_LENGTH_EXAMPLES = 5


@dataclass(frozen=True)
class FinetuneConfig(RunSettings):
    """Settings of one fine-tuning run (the ``florence2 finetune`` options): those below and the
    :class:`~florence2.train.trainer.RunSettings` (batch, optimizer, bookkeeping and loss settings),
    which the trainer is given as they are; ``seed`` also seeds the held-out split, the order of the
    examples, the crops and LoRA's initial adapters.

    out_dir: run folder (``checkpoint-last/``, ``best/``, ``metrics.jsonl``, ``finetune.json``).
    data: dataset specs, ``FORMAT:PATH[:PATH][@tasks=A+B,weight=W]`` (see :mod:`florence2.data.formats`).
    model: checkpoint folder of either layout (or a hub id); None: the embedded model.
    data_format: the format of specs without a ``FORMAT:`` prefix (default: recognised from the files).
    tasks: tasks of specs that name none (default: each format's default).
    task_weights: task -> weight multiplying how often its examples are drawn.
    steps: optimizer steps; None: ``epochs`` passes over the (weighted) training examples.
    lr: peak learning rate; None: 1e-4 with LoRA, else 1e-5.
    warmup_steps: linear warm-up; None: 5% of the steps.
    freeze: groups of :data:`FREEZE_GROUPS` to freeze (ignored with LoRA, which freezes everything else).
    lora: put LoRA layers on the model and train those only (merged on save).
    adapter: a PEFT LoRA adapter folder merged into the model before anything else.
    eval_fraction: share of the images held out for evaluation; eval_data: specs of a separate
        evaluation set instead. eval_every: steps between evaluations (default: 10 per run).
    max_eval_examples: evaluate on at most this many held-out examples (the first, in file order).
    best_metric: keep ``best/`` by this evaluation metric (default ``loss`` when evaluating).
    synthetic_eval: for ``synthetic`` data, also run :func:`florence2.eval.synthetic.evaluate_synthetic`
        on the held-out images (``od_mAP50``, ...).
    long_targets: ``"skip"`` (report and drop) or ``"error"``.
    add_words: words (new category names) to give a token of their own before training, as
        ``"arrow"`` (the row starts as the mean of the word's old pieces) or ``"arrow=cross"`` (it
        starts as ``cross``'s); see :func:`add_words`.
    crop: 0 (off), or train on random crops that keep every located region, their sides at least
        this share of the image's (:mod:`florence2.data.augment`; for tasks whose texts state no
        position or size).
    """

    out_dir: str
    data: tuple[str, ...] = ()
    model: str | None = None
    data_format: str | None = None
    tasks: tuple[str, ...] | None = None
    task_weights: Mapping[str, float] | None = None
    steps: int | None = None
    epochs: float = 3.0
    lr: float | None = None
    warmup_steps: int | None = None
    freeze: tuple[str, ...] = ()
    lora: LoRAConfig | None = None
    adapter: str | None = None
    eval_fraction: float = 0.0
    eval_data: tuple[str, ...] = ()
    eval_every: int | None = None
    eval_batch_size: int = 8
    max_eval_examples: int | None = 512
    best_metric: str | None = None
    synthetic_eval: bool = False
    long_targets: str = "skip"
    add_words: tuple[str, ...] = ()
    crop: float = 0.0
    resume: bool = False

    def __post_init__(self) -> None:
        unknown = [g for g in self.freeze if g not in FREEZE_GROUPS]
        if unknown:
            raise ValueError(f"unknown freeze group {unknown[0]!r}; groups: {', '.join(FREEZE_GROUPS)}")
        if self.long_targets not in ("skip", "error"):
            raise ValueError(f"long_targets must be 'skip' or 'error', got {self.long_targets!r}")
        if self.eval_fraction and self.eval_data:
            raise ValueError("give eval_fraction or eval_data, not both")
        super().__post_init__()
        if not 0 <= self.crop <= 1:
            raise ValueError(f"crop must lie in [0, 1] (0: off), got {self.crop}")
        if self.steps is not None and self.steps < 0 or self.epochs <= 0:
            raise ValueError("steps must be >= 0 and epochs > 0")
        if self.add_words and self.lora is not None:
            raise ValueError("add_words trains new embedding rows, which LoRA leaves frozen: use one or the other")
        for name in ("data", "eval_data", "freeze", "add_words"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def evaluating(self) -> bool:
        return bool(self.eval_fraction or self.eval_data)


@dataclass
class FinetuneResult:
    """What a run produced: the trainer (None with ``steps=0``), the examples used, notes on what
    the data adapters left out, and the checkpoint folder."""

    checkpoint: Path
    trainer: Trainer | None
    train_examples: list[Example]
    eval_examples: list[Example]
    notes: list[str] = field(default_factory=list)
    best: dict[str, Any] | None = None


# --- model -------------------------------------------------------------------------------------------


def freeze(model: Florence2Model, groups: Sequence[str]) -> list[str]:
    """Turn ``requires_grad`` off for the modules of ``groups`` (:data:`FREEZE_GROUPS`); returns the
    frozen module names. The trainer leaves frozen parameters out of its optimizer."""
    names = []
    for group in groups:
        if group not in FREEZE_GROUPS:
            raise ValueError(f"unknown freeze group {group!r}; groups: {', '.join(FREEZE_GROUPS)}")
        for prefix in FREEZE_GROUPS[group]:
            model.get_submodule(prefix).requires_grad_(False)
            names.append(prefix)
    return names


def _word_spec(spec: str) -> tuple[str, str]:
    """``"arrow=cross"`` -> ``("arrow", "cross")``; ``"arrow"`` -> ``("arrow", "arrow")``."""
    word, _, like = spec.partition("=")
    return word.strip(), like.strip() or word.strip()


@torch.no_grad()
def add_words(model: Florence2Model, processor: Florence2Processor, words: Sequence[str]) -> dict[str, int]:
    """Give each word a token of its own (:meth:`Florence2Tokenizer.add_words`) and the model an
    embedding row for it. ``words``: ``"arrow"``, whose row starts as the mean of the rows of the
    pieces it was split into (``ar``, ``row``), or ``"arrow=cross"``, whose row starts as the mean of
    the rows of ``cross`` (any text: its tokens' rows), for a new category that looks like an old
    one. Returns ``{word: id}`` for the words added (a word that already is one token is left alone).

    A model that has only ever named objects with one token each (the embedded model: ``circle``,
    ``cross``) can learn a name split in two but then repeats the pieces (``ararrowrow``) and loses
    the boxes after them; one token per name keeps its habits. Starting the row from the category the
    model mistakes the new one for also starts the boxes that follow the new name where the model
    puts that category's boxes."""
    tokenizer = processor.tokenizer
    start = {}
    for spec in words:
        word, like = _word_spec(spec)
        start[word] = tokenizer.encode(like)[1:-1]
        if not start[word]:
            raise TaskError(f"add_words: nothing to start {word!r} from in {spec!r}")
    added = tokenizer.add_words(list(start))
    if not added:
        return added
    rows = max(max(added.values()) + 1, model.language_model.shared.num_embeddings)
    model.resize_token_embeddings(rows)
    weight = model.language_model.shared.weight
    for word, token_id in added.items():
        weight[token_id] = weight[start[word]].mean(0)
    return added


def _source_folder(model: str | os.PathLike | None) -> Path:
    from florence2.pipeline import default_model_path
    from florence2.weights import resolve_checkpoint

    return default_model_path() if model is None else resolve_checkpoint(model)


def prepare_model(config: FinetuneConfig) -> tuple[Florence2Model, Florence2Processor, Path, dict[str, Any]]:
    """The model to train (adapter merged, groups frozen or LoRA applied), its processor, the
    checkpoint folder it came from and that checkpoint's decoding defaults."""
    from florence2.pipeline import Florence2

    folder = _source_folder(config.model)
    predictor = Florence2.from_pretrained(folder)
    model, processor = predictor.model, predictor.processor
    if config.adapter:
        load_peft_adapter(model, config.adapter, merge=True)
    if config.add_words:
        added = add_words(model, processor, config.add_words)
        kept = [word for word, _ in map(_word_spec, config.add_words) if word not in added]
        _say(f"new tokens: {added or 'none'}" + (f"; already one token: {kept}" if kept else ""))
    if config.lora is not None:
        torch.manual_seed(config.seed)  # the adapters' initial A: the same in every run and process
        apply_lora(model, config.lora)
    elif config.freeze:
        freeze(model, config.freeze)
    return model, processor, folder, predictor.generation_defaults


# --- data ----------------------------------------------------------------------------------------------


def _specs(texts: Sequence[str | DataSpec], default_format: str | None) -> list[DataSpec]:
    return [t if isinstance(t, DataSpec) else parse_data_spec(t, default_format) for t in texts]


def check_lengths(
    examples: Sequence[Example], processor: Florence2Processor, num_image_tokens: int, policy: str = "skip"
) -> tuple[list[Example], list[str]]:
    """Keep the examples whose target (with ``<s>``/``</s>``) fits the decoder's positions and whose
    prompt fits beside the image tokens; returns them and a report of the rest (count and the first
    few, with their sources). ``policy="error"`` raises :class:`AnnotationError` instead of dropping."""
    limit_target = processor.max_positions
    limit_prompt = processor.max_positions - num_image_tokens
    kept: list[Example] = []
    long_targets: list[tuple[Example, int]] = []
    long_prompts: list[tuple[Example, int]] = []
    tokenizer = processor.tokenizer
    for start in range(0, len(examples), 512):
        chunk = examples[start : start + 512]
        target_lengths = tokenizer([e.target for e in chunk])[1].sum(1).tolist()
        prompt_lengths = tokenizer([e.prompt for e in chunk])[1].sum(1).tolist()
        for example, n_target, n_prompt in zip(chunk, target_lengths, prompt_lengths):
            if n_target > limit_target:
                long_targets.append((example, n_target))
            elif n_prompt > limit_prompt:
                long_prompts.append((example, n_prompt))
            else:
                kept.append(example)
    report = []
    for found, what, limit in (
        (long_targets, "targets longer than the decoder's", limit_target),
        (long_prompts, f"prompts longer than the {limit_prompt} positions left beside the image tokens of", None),
    ):
        if not found:
            continue
        shown = "; ".join(f"{e.source} ({e.task or 'free prompt'}, {n} tokens)" for e, n in found[:_LENGTH_EXAMPLES])
        limit_text = f" {limit} positions" if limit is not None else f" the encoder's {processor.max_positions}"
        report.append(f"{len(found)} of {len(examples)} examples have {what}{limit_text}: {shown}")
    if report and policy == "error":
        raise AnnotationError("\n".join(report))
    return kept, [line + " (skipped)" for line in report]


def _example_weights(
    examples: Sequence[Example], spec_weights: Sequence[float], task_weights: Mapping[str, float] | None
) -> list[float]:
    from florence2.tasks import get_task

    by_task = {get_task(k).token: float(v) for k, v in (task_weights or {}).items()}
    bad = [k for k, v in by_task.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"task weights must be finite and >= 0, got {bad[0]}: {by_task[bad[0]]}")
    return [w * by_task.get(e.task, 1.0) for e, w in zip(examples, spec_weights)]


def read_examples(
    specs: Sequence[DataSpec], tasks: Sequence[str] | None, notes: list[str]
) -> tuple[list[Example], list[float]]:
    """Examples of every spec, and each one's spec weight."""
    examples: list[Example] = []
    weights: list[float] = []
    for spec in specs:
        found = load_data(spec, tasks, notes)
        counts = Counter(e.task or "free prompt" for e in found)
        notes.append(f"{spec}: {len(found)} examples ({', '.join(f'{t} {n}' for t, n in counts.items())})")
        examples.extend(found)
        weights.extend([spec.weight] * len(found))
    return examples, weights


def _summary(examples: Sequence[Example]) -> dict[str, Any]:
    return {
        "examples": len(examples),
        "images": len({e.image for e in examples}),
        "tasks": dict(Counter(e.task or "free prompt" for e in examples)),
    }


# --- evaluation ------------------------------------------------------------------------------------------


def _synthetic_eval_fn(
    specs: Sequence[DataSpec], held_images: set[str], processor: Florence2Processor, generation: dict, limit: int | None
):
    """Figures of :func:`florence2.eval.synthetic.evaluate_synthetic` on the held-out images of the
    synthetic specs, for the tasks they train that have an evaluation."""
    from florence2.data.synthetic import read_split
    from florence2.eval.synthetic import TASK_EVALS
    from florence2.pipeline import Florence2

    jobs = []
    for spec in specs:
        if spec.format != "synthetic":
            continue
        folder = Path(spec.paths[0])
        records = [r for r in read_split(folder) if str(folder / r["image"]) in held_images][:limit]
        tasks = [t for t in (spec.tasks or ("<OD>",)) if t in TASK_EVALS]
        if records and tasks:
            jobs.append((folder, records, tasks))
    if not jobs:
        return None

    def evaluate(model: Florence2Model) -> dict[str, float]:
        from florence2.eval.synthetic import evaluate_synthetic

        predictor = Florence2(model, processor, generation)
        metrics: dict[str, float] = {}
        for folder, records, tasks in jobs:
            report = evaluate_synthetic(predictor, records, folder, tasks=tasks, progress=False)
            for key, value in report.items():
                if isinstance(value, float) and key != "seconds":  # figures; counts are ints
                    metrics[key] = metrics.get(key, 0.0) + float(value) / len(jobs)
        return metrics

    return evaluate


# --- the run -------------------------------------------------------------------------------------------


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    if _is_main():
        print(message, file=sys.stderr, flush=True)


def finetune(config: FinetuneConfig, examples: Sequence[Example] | None = None) -> FinetuneResult:
    """Fine-tune per ``config`` (see the module docstring); ``examples``: training examples built in
    Python, used beside (or instead of) ``config.data``. Returns where the checkpoint is and what
    the run used. Under ``torchrun`` every process calls this; rank 0 writes."""
    if config.resume and config.steps:
        resumable(Path(config.out_dir) / CHECKPOINT_NAME)  # before any data is read: is there anything?
    model, processor, source, generation = prepare_model(config)
    n_img = model.config.num_image_tokens(processor.image_size)
    out = Path(config.out_dir)
    notes: list[str] = []

    def extra_files(folder: Path) -> None:
        # keep the source model's decoding settings (the embedded model decodes greedily)
        if (source / _GENERATION_CONFIG).is_file():
            shutil.copyfile(source / _GENERATION_CONFIG, folder / _GENERATION_CONFIG)
        info = {"source_model": str(config.model or "embedded"), "settings": _jsonable(asdict(config)), **run_info}
        (folder / FINETUNE_FILE).write_text(json.dumps(info, indent=2) + "\n")

    run_info: dict[str, Any] = {}
    if config.steps == 0:  # export only: e.g. merge a PEFT adapter into the model and save
        from florence2.weights import save_model

        folder = out / CHECKPOINT_NAME
        if _is_main():
            save_model(merged_model(model), folder, processor=processor, extra_files=extra_files)
        _say(f"checkpoint: {folder}")
        return FinetuneResult(folder, None, [], [], notes)

    specs = _specs(config.data, config.data_format)
    train, spec_weights = read_examples(specs, config.tasks, notes)
    if examples:
        train.extend(examples)
        spec_weights.extend([1.0] * len(examples))
        notes.append(f"python: {len(examples)} examples")
    if not train:
        raise ValueError("no training data: give data specs or examples")
    weight_of = {id(e): w for e, w in zip(train, spec_weights)}
    held: list[Example] = []
    if config.eval_fraction:
        train, held = split_held_out(train, config.eval_fraction, config.seed)
        if not held or not train:
            raise ValueError(f"eval_fraction {config.eval_fraction} leaves no held-out or no training image")
    elif config.eval_data:
        held, _ = read_examples(_specs(config.eval_data, config.data_format), config.tasks, notes)
    train, length_notes = check_lengths(train, processor, n_img, config.long_targets)
    notes.extend(length_notes)
    held, length_notes = check_lengths(held, processor, n_img, config.long_targets)
    notes.extend(f"held-out: {line}" for line in length_notes)
    if not train:
        raise ValueError("no training example is left after the length checks")
    held_eval = held[: config.max_eval_examples] if config.max_eval_examples else held

    weights = _example_weights(train, [weight_of.get(id(e), 1.0) for e in train], config.task_weights)
    mixture = Mixture(train, weights, seed=config.seed)
    steps = config.steps or max(1, math.ceil(config.epochs * mixture.epoch_length / config.batch_size))
    run_info.update(train=_summary(train), held_out=_summary(held), steps=steps, notes=notes)
    for line in notes:
        _say(line)
    _say(
        f"training on {len(train)} examples ({len({e.image for e in train})} images), "
        f"held out {len(held)}; {steps} steps of {config.batch_size}"
    )

    evaluations = []
    if held_eval:
        evaluations.append(make_loss_eval(held_eval, processor, batch_size=config.eval_batch_size))
    if config.synthetic_eval:
        synthetic = _synthetic_eval_fn(specs, {e.image for e in held}, processor, generation, config.max_eval_examples)
        if synthetic is None:
            raise ValueError("synthetic_eval needs synthetic data with held-out images (eval_fraction)")
        evaluations.append(lambda model, step: synthetic(model))

    def eval_fn(model: Florence2Model, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluate in evaluations:
            metrics.update(evaluate(model, step))
        return metrics

    eval_every = 0
    if evaluations:
        eval_every = config.eval_every or max(1, steps // 10)
    lr = config.lr if config.lr is not None else (1e-4 if config.lora is not None else 1e-5)
    train_config = TrainConfig(
        **config.run_settings(),
        out_dir=str(out),
        total_steps=steps,
        lr=lr,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else steps // 20,
        eval_every=eval_every,
        best_metric=(config.best_metric or "loss") if evaluations else None,
    )
    get_item = mixture.__getitem__
    if config.crop:
        get_item = random_crops(get_item, config.crop, config.seed)
    source_fn = by_target_length(indexed_source(get_item))
    trainer = Trainer(
        model, processor, source_fn, train_config, eval_fn=eval_fn if evaluations else None, extra_files=extra_files
    )
    trainer.train(resume=config.resume)
    _say(f"checkpoint: {trainer.checkpoint_dir}")
    if trainer.best is not None:
        best = trainer.best
        _say(f"best: {out / 'best'} ({best['metric']} {best['value']:.4g} at step {best['step']})")
    return FinetuneResult(trainer.checkpoint_dir, trainer, train, held, notes, trainer.best)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = [
    "FREEZE_GROUPS",
    "FinetuneConfig",
    "FinetuneResult",
    "add_words",
    "check_lengths",
    "finetune",
    "freeze",
    "prepare_model",
    "read_examples",
]
