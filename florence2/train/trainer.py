"""The training loop: AdamW, warm-up + cosine LR, gradient accumulation and clipping, DDP, exact resume.

>>> trainer = Trainer(model, processor, source, TrainConfig(out_dir="runs/tiny", total_steps=1000))
>>> trainer.train(resume=True)       # continues from runs/tiny/checkpoint-last if it exists

Data comes from ``source(step, rank, world_size, batch_size_per_rank) -> list[item]``, a pure
function of its arguments: each item is ``{"image": PIL image or path, "prompt": str, "target": str}``
(or an object with those attributes). Rank r takes items ``[r*b, (r+1)*b)`` of the step's global batch
(:func:`florence2.train.batches.indexed_source` builds such a source from ``get_item(global_index)``), so

* resuming is continuing from a step number: no data-loader state to save;
* N processes with the same global batch see exactly the items one process sees.

The loss is the cross-entropy summed over every target token of the global batch (all ranks, all
accumulation micro-steps) divided by the number of those tokens, so 1 process, N processes and any
accumulation split compute the same loss and gradient. Dropout is seeded per (seed, step, rank,
micro-step), so a resumed run draws the same masks as an uninterrupted one. The other losses the
settings can choose are in :mod:`florence2.train.losses`.

Output folder::

    metrics.jsonl          one JSON object per logged step: step, loss, lr, grad_norm, samples_per_s,
                           elapsed, and eval/<name> for each metric of eval_fn
    metrics.png            curves of the above
    train_config.json      the TrainConfig, and the optimizer's trainable and the model's total
                           parameter counts
    checkpoint-last/       native transformers layout (config, model.safetensors, tokenizer,
                           preprocessor) + trainer_state.pt, replaced atomically at each save; with
                           LoRA layers the weights are merged (a plain checkpoint) and the adapter
                           is also written in PEFT's format to adapter/ (adapter_config.json,
                           adapter_model.safetensors)
    best/                  with ``best_metric``: the checkpoint with the best evaluation so far
                           (no trainer state) and best.json (step, metric, value)

Frozen parameters (``requires_grad=False``) are left out of the optimizer; LoRA layers
(:mod:`florence2.train.lora`) train their adapters only and are merged on save.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from florence2.coords import NUM_BINS
from florence2.errors import CheckpointError
from florence2.model.florence2 import Florence2Model, shift_right
from florence2.processor import Florence2Processor
from florence2.progress import ProgressBar, progress_bar
from florence2.train.batches import IGNORE_INDEX, Item, TrainSource, collate
from florence2.train.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed
from florence2.train.lora import count_parameters, has_lora, lora_layers, lora_state, merged_model, save_peft_adapter
from florence2.train.losses import distillation_loss, jitter_locations, location_smoothed_loss
from florence2.train.plot import plot_metrics
from florence2.weights import recover_interrupted_save

EvalFn = Callable[[Florence2Model, int], dict[str, float]]

CHECKPOINT_NAME = "checkpoint-last"
BEST_NAME = "best"
BEST_FILE = "best.json"
ADAPTER_DIR = "adapter"
TRAINER_STATE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The settings :class:`TrainConfig` and the fine-tuning config
    (:class:`florence2.train.finetune.FinetuneConfig`) share, with one meaning in both.

    batch_size: the global batch, summed over ranks and accumulation micro-steps; it must divide by
        ``world_size * grad_accum``.
    min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio`` (see :func:`lr_at`).
    clip_norm: clip the global gradient norm to this (None: no clipping; the norm is still logged).
    save_every, log_every: in optimizer steps; with save_every 0 saves happen only at the end. The
        last step always saves.
    mixed_precision: ``"bf16"`` or ``"fp16"`` autocast on CUDA (fp16 with a dynamic loss scale), or
        ``"no"``; the CPU always runs in float32.
    gradient_checkpointing: recompute activations in the backward pass (less memory, same numbers).
    device: None: ``cuda:LOCAL_RANK`` when available, else CPU.
    progress: a progress bar on rank 0 (``tqdm``, when installed; else one line per logged step).
    loc_sigma: 0 trains every token with plain cross-entropy. Above 0, a target ``<loc_k>`` is
        trained towards a Gaussian over the location bins centred on k with this standard deviation
        (in bins), so that a prediction a few bins off is rewarded over one far off; see
        :func:`~florence2.train.losses.location_smoothed_loss`. The logged loss is then that
        cross-entropy.
    loc_weight: weight of the location tokens' cross-entropy against the other tokens' (1: the same);
        below 1 a fine-tuning run learns labels with less pull on coordinates the model already
        places. The logged loss is then the weighted mean.
    anchor_decay: after each optimizer step, pull every trained parameter towards its value when
        training started: ``p -= lr * anchor_decay * (p - p_start)`` (decoupled, as AdamW's weight
        decay is towards 0; "L2-SP"). Fine-tuning on a small set then forgets less of what the
        starting checkpoint knew; 0 turns it off. The starting values are one more copy of the
        trained parameters in memory, kept in the trainer state so that a resumed run pulls towards
        the same point.
    loc_jitter: move each location token of the decoder's *input* (the teacher-forced previous
        tokens, not the targets) by a random whole number of bins in ``[-loc_jitter, loc_jitter]``
        (clamped to the grid). A model decoding on its own sees its own imprecise boxes before the
        next object; trained only on exact ones it can end the list early or lose its place, the
        failure mode Pix2Seq's sequence augmentation addresses. 0 turns it off.
    distill: weight of a distillation term ("learning without forgetting"): the KL divergence from
        the starting model's next-token distribution to the trained model's, at the target
        positions the starting model already gets right (elsewhere, e.g. at a new label, the
        cross-entropy alone teaches); see :func:`~florence2.train.losses.distillation_loss`. The
        starting model is a frozen copy of the model given to the :class:`Trainer` (on ``resume``,
        give the same starting checkpoint), run once more per micro-batch without gradients. 0 turns
        it off; the logged loss is then cross-entropy + ``distill`` x KL.
    """

    batch_size: int = 8
    grad_accum: int = 1
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0
    save_every: int = 0
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    device: str | None = None
    progress: bool = True
    loc_sigma: float = 0.0
    loc_weight: float = 1.0
    anchor_decay: float = 0.0
    loc_jitter: int = 0
    distill: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loc_sigma", "loc_weight", "anchor_decay", "distill"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.loc_jitter < NUM_BINS:
            raise ValueError(f"loc_jitter must lie in [0, {NUM_BINS}), got {self.loc_jitter}")

    def run_settings(self) -> dict[str, Any]:
        """The :class:`RunSettings` fields of this config, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}


@dataclass(frozen=True)
class TrainConfig(RunSettings):
    """Optimisation and bookkeeping settings: those below and the :class:`RunSettings`.

    warmup_steps, total_steps: the LR rises linearly over the warm-up, then follows a cosine from
        ``lr`` down to ``lr * min_lr_ratio`` at ``total_steps`` (see :func:`lr_at`).
    eval_every: in optimizer steps; 0 turns evaluation off. The last step evaluates when
        eval_every > 0.
    max_target_length: targets are cut to this many tokens (None: the decoder's position limit), with
        a warning; :mod:`florence2.train.finetune` filters long targets out before they get here.
    best_metric: an ``eval_fn`` metric (``"loss"`` or ``"eval/loss"``); after each evaluation that
        improves it the model is saved to ``out_dir/best``. best_mode: ``"min"``, ``"max"`` or
        ``"auto"`` (min for names holding loss, cer, wer or error; max otherwise).
    """

    out_dir: str = "runs/florence2"
    total_steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    eval_every: int = 0
    max_target_length: int | None = None
    best_metric: str | None = None
    best_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("total_steps, batch_size and grad_accum must be positive")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must divide by grad_accum {self.grad_accum}")
        if min(self.eval_every, self.save_every, self.warmup_steps) < 0 or self.log_every < 1:
            raise ValueError("eval_every, save_every and warmup_steps must be >= 0 and log_every >= 1")
        if self.mixed_precision not in ("bf16", "fp16", "no"):
            raise ValueError(f"mixed_precision must be 'bf16', 'fp16' or 'no', got {self.mixed_precision!r}")
        if self.best_mode not in ("auto", "min", "max"):
            raise ValueError(f"best_mode must be 'auto', 'min' or 'max', got {self.best_mode!r}")
        super().__post_init__()
        if self.best_metric is not None and self.eval_every == 0:
            raise ValueError("best_metric needs evaluations: set eval_every > 0")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def best_is_min(self) -> bool:
        if self.best_mode != "auto":
            return self.best_mode == "min"
        return any(word in (self.best_metric or "").lower() for word in ("loss", "cer", "wer", "error"))


# --- optimisation --------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and conv kernels; none on biases, LayerNorm and
    embeddings (token, position). Parameters with ``requires_grad=False`` (frozen) are left out."""
    exempt = {
        id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm)) for p in m.parameters(False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in exempt or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio`` at ``total_steps``. A pure function
    of the step, so the schedule has no state to save."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seed(seed: int, step: int, rank: int, micro_step: int) -> int:
    """The torch seed of one micro-step's random draws (dropout, drop path)."""
    return int(np.random.SeedSequence([seed, step, rank, micro_step]).generate_state(1)[0])


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the trainer ---------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on items from ``train_source`` (see the module docstring).

    Under ``torchrun`` (RANK / WORLD_SIZE set) it opens the process group and wraps the model in
    DistributedDataParallel; rank 0 alone logs, plots and saves. ``eval_fn(model, step) -> dict``
    runs on every rank with the unwrapped model in eval mode under ``torch.no_grad`` (a rank may
    evaluate a shard and all-reduce); rank 0's numbers are logged as ``eval/<name>``.
    """

    def __init__(
        self,
        model: Florence2Model,
        processor: Florence2Processor,
        train_source: TrainSource,
        config: TrainConfig,
        eval_fn: EvalFn | None = None,
        extra_files: Callable[[Path], None] | None = None,
    ) -> None:
        """``extra_files(folder)`` adds files to every checkpoint folder written (``checkpoint-last``
        and ``best``) before it is moved into place, e.g. a generation config to keep."""
        self.config = config
        self.processor = processor
        self.train_source = train_source
        self.eval_fn = eval_fn
        self.extra_files = extra_files
        self.dist: DistInfo = setup_distributed(config.device)
        world = self.dist.world_size
        if config.batch_size % (world * config.grad_accum):
            raise ValueError(
                f"batch_size {config.batch_size} must divide by world_size {world} x grad_accum {config.grad_accum}"
            )
        self.batch_size_per_rank = config.batch_size // world
        self.micro_batch_size = self.batch_size_per_rank // config.grad_accum
        self.device = self.dist.device
        if config.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        self.model = model.to(self.device).train()
        self.num_image_tokens = model.config.num_image_tokens(processor.image_size)
        self.wrapped: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # depthwise conv kernels (C, 1, k, k) get gradients whose stride differs from DDP's bucket
            # only along the size-1 axis: the same memory layout, so the warning is noise
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=device_ids)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("every parameter is frozen: nothing to train")
        self.optimizer = torch.optim.AdamW(
            param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps
        )
        self.num_trainable = count_parameters(p for g in self.optimizer.param_groups for p in g["params"])
        # the starting point of anchor_decay (from the checkpoint on resume)
        self.anchors = [p.detach().clone() for p in self.params] if config.anchor_decay > 0 else None
        # the starting model that distill keeps the trained one close to
        self.teacher: Florence2Model | None = None
        if config.distill > 0:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_parameters = count_parameters(model.parameters())
        self.autocast = self.device.type == "cuda" and config.mixed_precision != "no"
        self.autocast_dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
        # fp16 gradients underflow without a loss scale; bf16 and fp32 need none (the scaler is a no-op)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast and config.mixed_precision == "fp16")
        self.best: dict[str, Any] | None = None  # {"metric", "value", "step"} of the best evaluation
        self.first_loc_id = processor.tokenizer.loc_token_id(0)
        self.start_id, self.pad_id = model.config.text.decoder_start_token_id, model.config.text.pad_token_id
        if processor.tokenizer.loc_token_id(NUM_BINS - 1) != self.first_loc_id + NUM_BINS - 1:
            raise ValueError("the tokenizer's location tokens are not consecutive ids")
        if self.dist.is_main:
            share = 100.0 * self.num_trainable / max(self.num_parameters, 1)
            counts = f"{self.num_trainable:,} of {self.num_parameters:,} ({share:.2f}%)"
            print(f"trainable parameters in the optimizer: {counts}", file=sys.stderr, flush=True)
        self.out_dir = Path(config.out_dir)
        self.step = 0  # optimizer steps done
        self.history: list[dict[str, Any]] = []  # records logged by this process
        self._window: list[float] = []  # losses since the last log line
        self._window_start = 0  # step of the previous log line
        self._elapsed_before = 0.0  # seconds spent before a resume
        self._run_start = self._window_time = time.perf_counter()

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    # --- one step ---

    def train_step(self, step: int) -> dict[str, float]:
        """Run optimizer step ``step`` (0-based); returns the global mean token loss, lr and grad norm."""
        cfg, dist_info = self.config, self.dist
        items = list(self.train_source(step, dist_info.rank, dist_info.world_size, self.batch_size_per_rank))
        if len(items) != self.batch_size_per_rank:
            raise ValueError(
                f"train_source gave {len(items)} items for step {step}, expected {self.batch_size_per_rank}"
            )
        m = self.micro_batch_size
        batches = [
            collate(items[i * m : (i + 1) * m], self.processor, self.num_image_tokens, cfg.max_target_length)
            for i in range(cfg.grad_accum)
        ]
        local_tokens = torch.stack([(b["labels"] != IGNORE_INDEX).sum() for b in batches]).to(self.device)
        if bool((local_tokens == 0).any()):
            raise ValueError(f"a micro-batch of step {step} has no target tokens")
        total_tokens = all_reduce_sum(local_tokens.sum().double())
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        # else the model's own cross-entropy
        own_loss = cfg.loc_sigma > 0 or cfg.loc_weight != 1 or self.teacher is not None or cfg.loc_jitter > 0
        for i, batch in enumerate(batches):
            torch.manual_seed(step_seed(cfg.seed, step, dist_info.rank, i))
            last = i == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not dist_info.enabled else self.wrapped.no_sync()
            with sync:
                inputs = {k: v.to(self.device) for k, v in batch.items()}
                if own_loss:  # the model is given no labels: its own cross-entropy is not needed
                    labels = inputs.pop("labels")
                    inputs["decoder_input_ids"] = shift_right(labels, self.start_id, self.pad_id)
                    if cfg.loc_jitter:
                        inputs["decoder_input_ids"] = jitter_locations(
                            inputs["decoder_input_ids"], self.first_loc_id, NUM_BINS, cfg.loc_jitter
                        )
                with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
                    out = self.wrapped(**inputs)
                loss = out.loss
                if own_loss:
                    loss = location_smoothed_loss(
                        out.logits, labels, self.first_loc_id, NUM_BINS, cfg.loc_sigma, cfg.loc_weight
                    )
                if self.teacher is not None:
                    with torch.no_grad(), torch.autocast(self.device.type, self.autocast_dtype, self.autocast):
                        teacher_logits = self.teacher(**inputs).logits
                    kl = distillation_loss(out.logits, teacher_logits, labels, self.first_loc_id, NUM_BINS)
                    loss = loss + cfg.distill * kl
                # the model's loss is the mean over this micro-batch's tokens: back to a sum, then
                # over the global token count; DDP averages gradients over ranks, hence * world_size
                token_loss_sum = loss * local_tokens[i]
                self.scaler.scale(token_loss_sum * (dist_info.world_size / total_tokens.float())).backward()
            loss_sum += token_loss_sum.detach().double()
        max_norm = cfg.clip_norm if cfg.clip_norm is not None else float("inf")
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.scaler.step(self.optimizer)  # skipped when an fp16 gradient overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.anchors is not None:
            with torch.no_grad():
                for param, anchor in zip(self.params, self.anchors):
                    param.lerp_(anchor, lr * cfg.anchor_decay)
        loss = all_reduce_sum(loss_sum) / total_tokens
        return {"loss": float(loss), "lr": lr, "grad_norm": float(grad_norm)}

    # --- the loop ---

    def train(self, resume: bool | str = False, stop_at: int | None = None) -> list[dict[str, Any]]:
        """Train up to ``config.total_steps``. ``resume``: True continues from ``out_dir/checkpoint-last``,
        a path from that checkpoint folder; either is a :class:`CheckpointError` (naming the file)
        when there is nothing to resume or its trainer state cannot be read.
        ``stop_at``: save and stop after this step, leaving the schedule as for ``total_steps`` (a later
        ``resume`` continues, e.g. with other data for a curriculum).
        Returns the records logged by this call (the same global numbers on every rank)."""
        cfg, main = self.config, self.dist.is_main
        if resume:
            folder = resumable(self.checkpoint_dir if resume is True else Path(resume))
            self.load_checkpoint(folder)
            if main:
                print(f"resuming from {folder} at step {self.step} of {cfg.total_steps}", file=sys.stderr, flush=True)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            info = {
                **dataclasses.asdict(cfg),
                "trainable_parameters": self.num_trainable,
                "total_parameters": self.num_parameters,
            }
            (self.out_dir / "train_config.json").write_text(json.dumps(info, indent=2) + "\n")
            self._truncate_metrics(self.step)
        self._run_start = self._window_time = time.perf_counter()
        self._window_start = self.step
        end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
        showing = main and cfg.progress
        with progress_bar(cfg.total_steps, enabled=showing, unit="step", initial=self.step) as bar:
            for step in range(self.step, end):
                stats = self.train_step(step)
                self.step = done = step + 1
                self._window.append(stats["loss"])
                last = done == cfg.total_steps
                record = self._log_record(done, stats) if done % cfg.log_every == 0 or last else {}
                evaluated = cfg.eval_every > 0 and (done % cfg.eval_every == 0 or last)
                if evaluated:
                    metrics = self.evaluate(done)
                    record = {"step": done, **record, **{f"eval/{k}": v for k, v in metrics.items()}}
                    self._update_best(done, metrics)
                if record:
                    self.history.append(record)
                    if main:
                        if showing:
                            _show_record(bar, record)
                        self._append_metrics(record)
                saving = (cfg.save_every > 0 and done % cfg.save_every == 0) or last or done == end
                if saving:
                    self.save_checkpoint()
                if main and (evaluated or saving):
                    self.plot()
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
                bar.update()
        return self.history

    def _update_best(self, step: int, metrics: dict[str, float]) -> None:
        """Save ``best/`` when the chosen metric improved. Every rank takes the same decision from
        the same numbers and meets the same barrier; rank 0 writes."""
        name = self.config.best_metric
        if name is None:
            return
        key = name.removeprefix("eval/")
        if key not in metrics:
            raise KeyError(f"best_metric {name!r} is not among the evaluation's metrics: {sorted(metrics)}")
        value = float(metrics[key])
        improved = math.isfinite(value) and (
            self.best is None or (value < self.best["value"] if self.config.best_is_min else value > self.best["value"])
        )
        if improved:
            self.best = {"metric": f"eval/{key}", "value": value, "step": step}
            if self.dist.is_main:
                best = dict(self.best)

                def files(tmp: Path) -> None:
                    (tmp / BEST_FILE).write_text(json.dumps(best, indent=2) + "\n")

                self._save_model(self.out_dir / BEST_NAME, files)
        barrier()

    def _elapsed(self) -> float:
        """Training seconds, those before a resume included."""
        return self._elapsed_before + time.perf_counter() - self._run_start

    def _log_record(self, done: int, stats: dict[str, float]) -> dict[str, Any]:
        """The log line of step ``done``: mean loss and throughput since the previous line."""
        now = time.perf_counter()
        samples = (done - self._window_start) * self.config.batch_size
        record = {
            "step": done,
            "loss": sum(self._window) / len(self._window),
            "lr": stats["lr"],
            "grad_norm": stats["grad_norm"],
            "samples_per_s": samples / max(now - self._window_time, 1e-9),
            "elapsed": self._elapsed(),
        }
        self._window, self._window_time, self._window_start = [], now, done
        return record

    def evaluate(self, step: int) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.eval_fn(self.model, step)
        finally:
            self.model.train()
        return {k: float(v) for k, v in metrics.items()}

    # --- files ---

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines past ``step``: steps a crashed run logged after its last checkpoint."""
        path = self.out_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.out_dir / METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def plot(self) -> Path:
        return plot_metrics(self.read_metrics(), self.out_dir / PLOT_FILE)

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            # the LR is a pure function of the step (lr_at); these settings reproduce it
            "scheduler": {
                "schedule": "linear_warmup_cosine",
                "lr": self.config.lr,
                "warmup_steps": self.config.warmup_steps,
                "total_steps": self.config.total_steps,
                "min_lr_ratio": self.config.min_lr_ratio,
            },
            "rng": _rng_state(),
            "loss_window": list(self._window),
            "elapsed": self._elapsed(),
            "best": self.best,
            "scaler": self.scaler.state_dict(),
            # LoRA adapters are merged into model.safetensors; resuming needs them apart
            "lora": {k: v.cpu() for k, v in lora_state(self.model).items()},
            "anchors": None if self.anchors is None else [a.cpu() for a in self.anchors],
            "teacher_fingerprint": None if self.teacher is None else _fingerprint(self.teacher),
            "world_size": self.dist.world_size,
            "config": json.loads(json.dumps(dataclasses.asdict(self.config))),
        }

    def save_checkpoint(self, folder: str | Path | None = None) -> Path:
        """Rank 0 writes the model (native transformers layout), tokenizer, preprocessor config and
        ``trainer_state.pt`` into a temporary folder that then replaces ``folder`` in one rename."""
        folder = Path(folder) if folder is not None else self.checkpoint_dir
        if self.dist.is_main:
            state = self.trainer_state()
            self._save_model(folder, lambda tmp: torch.save(state, tmp / TRAINER_STATE))
        barrier()
        return folder

    def _save_model(self, folder: Path, files: Callable[[Path], None]) -> None:
        """The model (LoRA merged) with the processor, PEFT adapter files when there are LoRA
        layers, ``self.extra_files`` and ``files``, written atomically into ``folder``."""
        from florence2.weights import save_model

        def extra(tmp: Path) -> None:
            if has_lora(self.model):
                # in a subfolder: with peft installed, transformers would take an adapter_config.json
                # beside config.json for an adapter to put on some other base model
                save_peft_adapter(self.model, tmp / ADAPTER_DIR)
            if self.extra_files is not None:
                self.extra_files(tmp)
            files(tmp)

        save_model(merged_model(self.model), folder, processor=self.processor, extra_files=extra)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore weights, optimizer, step, loss window and RNG states from a checkpoint folder."""
        from florence2.weights import convert_state_dict, load_state_dict_strict, read_weights

        folder = Path(folder)
        try:
            state = torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
            step, rng = int(state["step"]), state["rng"]
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in many ways
            raise CheckpointError(
                f"cannot resume from {folder / TRAINER_STATE}: the file is truncated or corrupt "
                f"({type(error).__name__}: {error})"
            ) from error
        weights = convert_state_dict(read_weights(folder))
        if has_lora(self.model):
            # the file holds merged weights; the frozen base stays as loaded, the adapters come back
            current = self.model.state_dict()
            for name in lora_layers(self.model):
                weights[f"{name}.weight"] = current[f"{name}.weight"]
            weights.update(state.get("lora", {}))
        load_state_dict_strict(self.model, weights)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.anchors is not None:
            anchors = state.get("anchors")
            if anchors is None or len(anchors) != len(self.anchors):
                raise ValueError(f"{folder / TRAINER_STATE}: no anchor_decay starting point to resume from")
            for mine, saved in zip(self.anchors, anchors):
                mine.copy_(saved)
        if self.teacher is not None:
            saved = state.get("teacher_fingerprint")
            mine = _fingerprint(self.teacher)
            if saved is None or len(saved) != len(mine) or not all(map(math.isclose, saved, mine)):
                raise ValueError(
                    f"{folder}: this run distils from another starting model than the one given now; "
                    "resume from the same starting checkpoint"
                )
        self.best = state.get("best")
        self.step = step
        self._window = list(state.get("loss_window", []))
        self._elapsed_before = float(state.get("elapsed", 0.0))
        _set_rng_state(rng)


def resumable(folder: str | Path) -> Path:
    """``folder`` if a run can resume from it (a save interrupted between its renames is put back
    first); else a :class:`CheckpointError` that says what is missing."""
    folder = Path(folder)
    recover_interrupted_save(folder)
    if not (folder / TRAINER_STATE).is_file():
        raise CheckpointError(
            f"nothing to resume: {folder / TRAINER_STATE} does not exist (leave out --resume to start a new run)"
        )
    return folder


def _fingerprint(model: nn.Module) -> list[float]:
    """Per-tensor sums of a model's weights: tells whether a resumed run distils from the same start."""
    return [float(p.detach().double().sum()) for p in model.parameters()]


def _show_record(bar: ProgressBar, record: dict[str, Any]) -> None:
    """Without a drawn bar print every record; with one only evaluation results (the bar shows the loss)."""
    if bar.drawn and not any(k.startswith("eval/") for k in record):
        return
    bar.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))


def make_loss_eval(
    items: Sequence[Item], processor: Florence2Processor, batch_size: int = 8, name: str = "loss"
) -> EvalFn:
    """An ``eval_fn`` giving the mean token cross-entropy of the model on fixed ``items``."""

    def eval_fn(model: Florence2Model, step: int) -> dict[str, float]:
        n_img = model.config.num_image_tokens(processor.image_size)
        total, tokens = 0.0, 0
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], processor, n_img)
            count = int((batch["labels"] != IGNORE_INDEX).sum())
            out = model(**{k: v.to(model.device) for k, v in batch.items()})
            total += float(out.loss) * count
            tokens += count
        return {name: total / max(tokens, 1)}

    return eval_fn
