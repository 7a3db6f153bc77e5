"""Training: the trainer (AdamW, warm-up + cosine, accumulation, DDP, exact resume) and its CLI.

Needs only the core dependencies; ``tqdm`` (the ``progress`` extra) draws a progress bar when present.
"""

from florence2.train.distributed import DistInfo, cleanup_distributed, setup_distributed
from florence2.train.plot import plot_metrics
from florence2.train.trainer import (
    TrainConfig,
    Trainer,
    collate,
    indexed_source,
    lr_at,
    make_loss_eval,
    param_groups,
)

__all__ = [
    "DistInfo",
    "TrainConfig",
    "Trainer",
    "cleanup_distributed",
    "collate",
    "indexed_source",
    "lr_at",
    "make_loss_eval",
    "param_groups",
    "plot_metrics",
    "setup_distributed",
]
