"""The data engine: label folders, archives and videos into a scored, searchable, resumable dataset.

>>> from florence2.label import label, DatasetStore
>>> summary = label(["photos/"], "my-dataset", preset="fld")
>>> with DatasetStore("my-dataset") as store:
...     store.stats()["images"], store.search("red car")[:3]

``florence2 label`` and ``florence2 dataset stats|export|search`` are the same on the command line.
Modules: :mod:`~florence2.label.sources` (where images come from), :mod:`~florence2.label.engine`
(the run), :mod:`~florence2.label.filters` (what is dropped, and why), :mod:`~florence2.label.store`
(the SQLite dataset), :mod:`~florence2.label.export` (COCO, YOLO, JSONL, captions, Parquet, Label
Studio, MOT), :mod:`~florence2.label.tta` (extra views, fused), :mod:`~florence2.label.tiles`
(full-resolution crops for small objects), :mod:`~florence2.label.tracks` (video boxes linked into
tracks), :mod:`~florence2.label.ray_engine` (the same runs on a Ray cluster).
"""

from florence2.label.api import label
from florence2.label.engine import PRESETS, LabelSummary, Plan
from florence2.label.filters import Filters
from florence2.label.store import DatasetError, DatasetStore

__all__ = ["PRESETS", "DatasetError", "DatasetStore", "Filters", "LabelSummary", "Plan", "label"]
