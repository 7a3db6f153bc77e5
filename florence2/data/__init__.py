"""Data for florence2: the synthetic world the embedded model is trained on, and dataset formats."""

from florence2.data.synthetic import (
    AnnotationError,
    SyntheticWorld,
    WorldConfig,
    generate_scene,
    read_split,
    validate_record,
    write_split,
)

__all__ = [
    "AnnotationError",
    "SyntheticWorld",
    "WorldConfig",
    "generate_scene",
    "read_split",
    "validate_record",
    "write_split",
]
