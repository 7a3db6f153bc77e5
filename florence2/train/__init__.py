"""Training: the trainer (AdamW, warm-up + cosine, accumulation, DDP, exact resume), LoRA, fine-tuning
on users' datasets (:mod:`florence2.train.finetune`) and their CLIs.

Needs only the core dependencies; ``tqdm`` (the ``progress`` extra) draws a progress bar when present.
"""

from florence2.train.batches import collate, indexed_source
from florence2.train.distributed import DistInfo, cleanup_distributed, setup_distributed
from florence2.train.lora import LoRAConfig, apply_lora, load_peft_adapter, merge_lora, merged_model, save_peft_adapter
from florence2.train.plot import plot_metrics
from florence2.train.trainer import TrainConfig, Trainer, lr_at, make_loss_eval, param_groups

__all__ = [
    "DistInfo",
    "LoRAConfig",
    "TrainConfig",
    "Trainer",
    "apply_lora",
    "cleanup_distributed",
    "collate",
    "indexed_source",
    "load_peft_adapter",
    "lr_at",
    "make_loss_eval",
    "merge_lora",
    "merged_model",
    "param_groups",
    "plot_metrics",
    "save_peft_adapter",
    "setup_distributed",
]
