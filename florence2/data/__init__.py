"""Data for florence2: the synthetic world the embedded model is trained on, task samples, and the
dataset formats that fine-tuning and the benchmarks read and write (:mod:`florence2.data.formats`)."""

from florence2.data.samples import Sample, TaskMixture, all_samples, build_samples
from florence2.data.synthetic import (
    SyntheticWorld,
    WorldConfig,
    generate_scene,
    read_split,
    validate_record,
    write_split,
)
from florence2.errors import AnnotationError

__all__ = [
    "AnnotationError",
    "Sample",
    "SyntheticWorld",
    "TaskMixture",
    "WorldConfig",
    "all_samples",
    "build_samples",
    "generate_scene",
    "read_split",
    "validate_record",
    "write_split",
]
