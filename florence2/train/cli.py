"""``florence2 train``: train on the synthetic world, from a checkpoint (``--model``) or a fresh tiny model;
``florence2 finetune``: fine-tune a checkpoint on your own datasets (:mod:`florence2.train.finetune`).

    florence2 train --out runs/tiny --steps 2000 --batch-size 32 [--tasks CAPTION=2,OD=1,...]
    florence2 train --out runs/tiny --steps 4000 --resume          # continue after an interruption
    torchrun --nproc-per-node 4 -m florence2.cli train --out runs/tiny ...   # DDP, same command

Samples come from :mod:`florence2.data.samples` (a weighted task mixture) when it is installed,
otherwise from the brief captions alone. Scene ``i`` of the world is global sample ``i``, so the
data order is fixed by ``--seed`` and survives ``--resume`` and any number of processes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from florence2.config import variant
from florence2.data.synthetic import SyntheticWorld, WorldConfig
from florence2.errors import TaskError
from florence2.image import ImageProcessor
from florence2.model.florence2 import Florence2Model
from florence2.processor import Florence2Processor
from florence2.tasks import TASKS, build_prompt, get_task
from florence2.tokenizer import train_bpe_tokenizer

_SPECIAL = re.compile(r"<[^<>]+>")
_EVAL_ITEMS = 32
_TOKENIZER_SCENES = 300


def parse_task_weights(text: str | None) -> dict[str, float] | None:
    """``"CAPTION=2,OD,OCR=0.5"`` -> ``{"<CAPTION>": 2.0, "<OD>": 1.0, "<OCR>": 0.5}``; None: every task."""
    if not text:
        return None
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        try:
            weights[get_task(name).token] = float(weight) if weight else 1.0
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad task weight {part!r}") from e
        except TaskError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return weights


def synthetic_item_fn(world: SyntheticWorld, weights: dict[str, float] | None, seed: int) -> Callable[[int], dict]:
    """``get_item(i)``: scene ``i`` of ``world`` as one training item of a task drawn from the
    mixture (seeded by ``(seed, i)``, so any item can be rebuilt on its own)."""
    try:
        from florence2.data.samples import TaskMixture
    except ImportError:  # the sample builder is optional here: captions only
        TaskMixture = None
    weights = weights or {token: 1.0 for token in TASKS}
    caption_prompt = build_prompt("<CAPTION>")

    def get_item(index: int) -> dict[str, Any]:
        image, record = world.scene(index)
        if TaskMixture is not None:
            item_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            sample = TaskMixture(weights, seed=item_seed).draw(record)
            if sample is not None:
                return {"image": image, "prompt": sample.prompt, "target": sample.target}
        return {"image": image, "prompt": caption_prompt, "target": record["captions"]["brief"]}

    return get_item


def _tokenizer_corpus(world: SyntheticWorld) -> list[str]:
    texts = [spec.prompt.replace("{input}", "") for spec in TASKS.values()]
    try:
        from florence2.data.samples import all_samples
    except ImportError:
        all_samples = None
    for index in range(_TOKENIZER_SCENES):
        _, record = world.scene(index)
        texts.extend(record["captions"].values())
        texts.extend(t["text"] for t in record["texts"])
        if all_samples is not None:
            # location and other special tokens are added to the vocabulary whole: keep them out
            texts.extend(_SPECIAL.sub(" ", s.target) for s in all_samples(record))
    return texts


def build_tiny(
    world: SyntheticWorld, image_size: int, vocab_size: int, seed: int
) -> tuple[Florence2Model, Florence2Processor]:
    """A fresh tiny model and a processor whose tokenizer is trained on the world's texts."""
    tokenizer = train_bpe_tokenizer(_tokenizer_corpus(world), vocab_size=vocab_size)
    config = variant("small", vocab_size=tokenizer.vocab_size)
    processor = Florence2Processor(
        tokenizer, ImageProcessor(size=(image_size, image_size)), config.text.max_position_embeddings
    )
    torch.manual_seed(seed)
    return Florence2Model(config).init_weights(), processor


def _pretrain_vision(
    args: argparse.Namespace, model: Florence2Model, processor: Florence2Processor, world: SyntheticWorld, out: Path
) -> None:
    """Dense pre-training of a fresh model's vision tower on the device the training will use; the
    figures go to OUT/vision_pretrain.json. Under torchrun every rank does the same work (DDP then
    starts every rank from rank 0's weights), and rank 0 reports."""
    from florence2.train.distributed import setup_distributed
    from florence2.train.vision_pretrain import pretrain_vision

    dist_info = setup_distributed(args.device)
    model.to(dist_info.device)
    stats = pretrain_vision(
        model,
        processor,
        world,
        steps=args.vision_pretrain_steps,
        batch_size=args.batch_size,
        lr=args.vision_pretrain_lr,
        seed=args.seed,
        progress=args.progress and dist_info.is_main,
        colors=args.vision_pretrain_colors,
        boxes=args.vision_pretrain_boxes,
    )
    if not dist_info.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "vision_pretrain.json").write_text(json.dumps({**stats, "lr": args.vision_pretrain_lr}, indent=2) + "\n")
    colors = f", colour-token accuracy {stats['color_token_accuracy']:.2f}" if "color_token_accuracy" in stats else ""
    colors += f", box-edge error {stats['box_error_px']:.1f} px" if "box_error_px" in stats else ""
    print(
        f"vision pre-training: {stats['steps']} steps in {stats['seconds']:.0f} s, loss {stats['loss']:.3f}, "
        f"object-token accuracy {stats['object_token_accuracy']:.2f}{colors}",
        file=sys.stderr,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from florence2.pipeline import Florence2
    from florence2.train.batches import by_target_length, indexed_source
    from florence2.train.distributed import cleanup_distributed
    from florence2.train.trainer import CHECKPOINT_NAME, TrainConfig, Trainer, make_loss_eval, resumable

    out = Path(args.out)
    if args.vision_pretrain_steps < 0:
        raise SystemExit("--vision-pretrain-steps must be >= 0")
    if args.vision_pretrain_steps and args.model:
        raise SystemExit("--vision-pretrain-steps pre-trains a fresh model's vision tower: leave out --model")
    for flag in ("colors", "boxes"):
        if getattr(args, f"vision_pretrain_{flag}") and not args.vision_pretrain_steps:
            raise SystemExit(f"--vision-pretrain-{flag} needs --vision-pretrain-steps")
    world = SyntheticWorld(
        WorldConfig(image_size=args.scene_size, min_objects=args.min_objects, max_objects=args.max_objects),
        seed=args.seed,
    )
    if args.resume:
        # architecture and tokenizer as saved; the trainer restores weights and optimizer state
        predictor = Florence2.from_pretrained(resumable(out / CHECKPOINT_NAME))
        model, processor = predictor.model, predictor.processor
    elif args.model:
        predictor = Florence2.from_pretrained(args.model)
        model, processor = predictor.model, predictor.processor
    else:
        model, processor = build_tiny(world, args.image_size, args.vocab_size, args.seed)
        if args.vision_pretrain_steps:
            _pretrain_vision(args, model, processor, world, out)
    if args.freeze_vision:
        model.vision_tower.requires_grad_(False)
    lr = args.lr if args.lr is not None else (1e-5 if args.model else 1e-3)  # fine-tuning vs from scratch
    config = TrainConfig(
        **_run_settings(args),
        out_dir=str(out),
        total_steps=args.steps,
        lr=lr,
        warmup_steps=args.warmup if args.warmup is not None else args.steps // 20,
        eval_every=args.eval_every,
    )
    get_item = synthetic_item_fn(world, args.tasks, args.seed)
    eval_fn = None
    if args.eval_every:
        eval_seed = args.seed + 1 if args.eval_seed is None else args.eval_seed
        held_out = SyntheticWorld(world.config, seed=eval_seed)
        eval_items = [synthetic_item_fn(held_out, args.tasks, eval_seed)(i) for i in range(_EVAL_ITEMS)]
        eval_fn = make_loss_eval(eval_items, processor, batch_size=min(args.batch_size, 16))
    trainer = Trainer(model, processor, by_target_length(indexed_source(get_item)), config, eval_fn=eval_fn)
    try:
        trainer.train(resume=args.resume, stop_at=args.stop_at)
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        print(f"checkpoint: {trainer.checkpoint_dir}", file=sys.stderr)
    return 0


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~florence2.train.trainer.RunSettings` that ``train`` and ``finetune`` both take
    from their options."""
    return {
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "weight_decay": args.weight_decay,
        "clip_norm": args.clip_norm if args.clip_norm > 0 else None,
        "loc_sigma": args.loc_sigma,
        "loc_jitter": args.loc_jitter,
        "loc_weight": args.loc_weight,
        "save_every": args.save_every,
        "log_every": args.log_every,
        "seed": args.seed,
        "device": args.device,
        "progress": args.progress,
    }


def _add_optimizer_options(parser: argparse.ArgumentParser, batch_size: int, lr_help: str, warmup_help: str) -> None:
    """The options ``train`` and ``finetune`` share: batch, optimizer, schedule and location targets."""
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"global batch over all processes (default {batch_size})"
    )
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--lr", type=float, help=f"peak learning rate ({lr_help})")
    parser.add_argument("--warmup", type=int, help=f"linear warm-up steps ({warmup_help})")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip-norm", type=float, default=1.0, help="gradient norm clip; 0 turns it off")
    parser.add_argument(
        "--loc-sigma",
        type=float,
        default=0.0,
        help="train location tokens towards a Gaussian over the bins, std in bins (0: one-hot targets)",
    )
    parser.add_argument(
        "--loc-weight",
        type=float,
        default=1.0,
        help="weight of the location tokens' loss against the other tokens' (default 1: the same)",
    )
    parser.add_argument(
        "--loc-jitter",
        type=int,
        default=0,
        metavar="BINS",
        help="move the location tokens the decoder reads (not the targets) by up to this many bins at random, "
        "so it keeps its place after its own imprecise boxes (0: off)",
    )


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``florence2`` command's subparsers; ``args.func`` is :func:`cmd_train`."""
    p = subparsers.add_parser("train", help="train on the synthetic world (1 process or torchrun)")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, metrics.png, checkpoint-last/")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--model", help="start from this checkpoint (either public layout)")
    init.add_argument("--config", choices=["tiny"], default="tiny", help="a fresh model of this size (default)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in all (default 1000)")
    _add_optimizer_options(p, 16, "default 1e-3 fresh, 1e-5 with --model", "default steps / 20")
    p.add_argument("--eval-every", type=int, default=0, help="held-out loss every N steps (0: never)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last if it exists")
    p.add_argument("--stop-at", type=int, help="save and stop after this step (the schedule still spans --steps)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data order, the init and dropout")
    p.add_argument(
        "--eval-seed", type=int, help="world seed of the held-out loss (default: --seed + 1); fix it across stages"
    )
    p.add_argument("--tasks", type=parse_task_weights, help="task weights, e.g. CAPTION=2,OD=1 (default: all, 1)")
    p.add_argument("--scene-size", type=int, default=128, help="synthetic scene side, pixels")
    p.add_argument("--min-objects", type=int, default=1, help="fewest shapes per synthetic scene")
    p.add_argument("--max-objects", type=int, default=4, help="most shapes per synthetic scene")
    p.add_argument("--image-size", type=int, default=128, help="model input side of a fresh model, pixels")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary of a fresh model's tokenizer")
    p.add_argument("--freeze-vision", action="store_true", help="train the language side only")
    p.add_argument(
        "--vision-pretrain-steps",
        type=int,
        default=0,
        help="first train a fresh model's vision tower alone for this many steps to name what covers each "
        "image token (shape category, text, background); default 0",
    )
    p.add_argument("--vision-pretrain-lr", type=float, default=3e-3, help="peak LR of that pre-training")
    p.add_argument(
        "--vision-pretrain-colors",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="that pre-training also names the colour of what covers each token (a second head), its loss "
        "weighted so; default 0 (off)",
    )
    p.add_argument(
        "--vision-pretrain-boxes",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="that pre-training also regresses, per covered token, the distances to its shape's or text's box "
        "edges (a third head, L1 loss weighted so); default 0 (off)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_train)
    return p


# --- florence2 finetune ------------------------------------------------------------------------------


def _task_list(text: str) -> list[str]:
    try:
        return [get_task(name).token for name in text.split(",") if name.strip()]
    except TaskError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _groups(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def cmd_finetune(args: argparse.Namespace) -> int:
    from florence2.train.distributed import cleanup_distributed
    from florence2.train.finetune import FinetuneConfig, finetune
    from florence2.train.lora import LoRAConfig

    if not args.data and args.steps != 0:
        print("error: give at least one --data (or --steps 0 to only merge --adapter and save)", file=sys.stderr)
        return 2
    try:
        lora = None
        if args.lora:
            targets = tuple(_groups(args.lora_targets))
            lora = LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout, targets, args.lora_rslora)
        config = FinetuneConfig(
            **_run_settings(args),
            out_dir=args.out,
            data=tuple(args.data or ()),
            model=args.model,
            data_format=args.data_format,
            tasks=tuple(t for group in args.task for t in group) if args.task else None,
            task_weights=args.task_weights,
            steps=args.steps,
            epochs=args.epochs,
            lr=args.lr,
            warmup_steps=args.warmup,
            freeze=tuple(_groups(args.freeze or "")),
            lora=lora,
            adapter=args.adapter,
            gradient_checkpointing=args.gradient_checkpointing,
            mixed_precision=args.mixed_precision,
            eval_fraction=args.eval_fraction,
            eval_data=tuple(args.eval_data or ()),
            eval_every=args.eval_every,
            max_eval_examples=args.max_eval_examples or None,
            best_metric=args.best_metric,
            synthetic_eval=args.synthetic_eval,
            long_targets=args.long_targets,
            anchor_decay=args.anchor_decay,
            distill=args.distill,
            add_words=tuple(_groups(args.add_words or "")),
            crop=args.crop,
            resume=args.resume,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        finetune(config)
    finally:
        cleanup_distributed()
    return 0


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finetune`` to the ``florence2`` command's subparsers; ``args.func`` is :func:`cmd_finetune`."""
    from florence2.data.formats import FORMATS
    from florence2.train.finetune import FREEZE_GROUPS
    from florence2.train.lora import TARGET_GROUPS

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint on your datasets (1 process or torchrun)",
        description="Datasets: FORMAT:PATH[:PATH][@tasks=A+B,weight=W,split=S] with FORMAT one of "
        + ", ".join(f"{f.name} ({f.usage})" for f in FORMATS.values())
        + ". See docs/finetuning.md.",
    )
    p.add_argument("--out", required=True, help="run folder: checkpoint-last/, best/, metrics.jsonl")
    p.add_argument("--model", help="checkpoint folder (either layout) or hub id; default: the embedded model")
    p.add_argument("--data", action="append", metavar="SPEC", help="a dataset (repeatable): FORMAT:PATH[:PATH][@...]")
    p.add_argument("--data-format", choices=sorted(FORMATS), help="format of --data without a FORMAT: prefix")
    p.add_argument("--task", action="append", type=_task_list, help="tasks of --data naming none (repeatable)")
    p.add_argument("--task-weights", type=parse_task_weights, help="e.g. OD=2,CAPTION=1: how often each task is drawn")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (0: only merge --adapter and save)")
    length.add_argument("--epochs", type=float, default=3.0, help="passes over the training examples (default 3)")
    _add_optimizer_options(p, 8, "default 1e-5; 1e-4 with --lora", "default 5%% of the steps")
    p.add_argument("--freeze", help=f"frozen groups, comma-separated: {', '.join(FREEZE_GROUPS)}")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only; merged into the weights on save")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument(
        "--lora-targets",
        default="language",
        help=f"comma-separated groups ({', '.join(TARGET_GROUPS)}) or layer names (q_proj, fc2, ...)",
    )
    p.add_argument(
        "--lora-rslora", action="store_true", help="scale adapters by alpha/sqrt(rank) instead of alpha/rank"
    )
    p.add_argument("--adapter", help="a PEFT LoRA adapter folder to merge into --model first")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory")
    p.add_argument("--mixed-precision", choices=["bf16", "fp16", "no"], default="bf16", help="on CUDA; CPU is fp32")
    evaluation = p.add_mutually_exclusive_group()
    evaluation.add_argument("--eval-fraction", type=float, default=0.0, help="share of the images held out")
    evaluation.add_argument("--eval-data", action="append", metavar="SPEC", help="a separate evaluation dataset")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: 10 per run)")
    p.add_argument("--max-eval-examples", type=int, default=512, help="evaluate on at most this many (0: all)")
    p.add_argument("--best-metric", help="keep best/ by this evaluation metric (default: loss)")
    p.add_argument("--synthetic-eval", action="store_true", help="synthetic data: also evaluate od_mAP50 etc.")
    p.add_argument("--long-targets", choices=["skip", "error"], default="skip", help="targets that do not fit")
    p.add_argument(
        "--crop",
        type=float,
        default=0.0,
        metavar="MIN_SCALE",
        help="train on random crops that keep every located region, sides >= MIN_SCALE of the image's "
        "(0: off); for tasks whose texts state no position or size, e.g. OD",
    )
    p.add_argument(
        "--anchor-decay",
        type=float,
        default=0.0,
        help="after each step pull the weights towards the starting checkpoint's by lr x this (L2-SP; 0: off)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x the KL divergence to the starting model's predictions on the targets' coordinates and "
        "known words, so it forgets less (0: off)",
    )
    p.add_argument(
        "--add-words",
        metavar="WORD[=LIKE],...",
        help="give these words (new category names) a token of their own, its embedding starting from the word's "
        "pieces or from LIKE, e.g. arrow=cross (not with --lora)",
    )
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seeds the data order, the held-out split and dropout")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last if it exists")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_finetune)
    return p
