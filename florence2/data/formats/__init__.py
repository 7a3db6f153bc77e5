"""Dataset formats: annotation files in common layouts -> training examples for the trainer, and the
standard benchmarks' files -> evaluation samples.

Every adapter validates its input and raises :class:`~florence2.errors.AnnotationError` naming the
file, the line (or the JSON element) and the field at fault. Targets are written by the sample
builders of :mod:`florence2.data.samples` (the formats the released models answer in) with the one
quantizer of :mod:`florence2.coords`: an adapter only turns its files into annotation records.

==============  =========================================  ===========================================
format          paths                                      tasks (default first)
==============  =========================================  ===========================================
``coco``        ``ANNOTATIONS.json[:IMAGES]``              ``<OD>``, ``<OPEN_VOCABULARY_DETECTION>``
                                                           (one sample per category of an image),
                                                           ``<REGION_PROPOSAL>``, ``<REGION_TO_CATEGORY>``,
                                                           ``<REGION_TO_SEGMENTATION>``
``yolo``        ``DIR`` (``images/``, ``labels/``,         as ``coco``
                ``data.yaml`` or ``classes.txt``)
``jsonl``       ``FILE.jsonl[:IMAGES]``: ``image``,        the task token the prefix holds, or a free
                ``prefix``, ``suffix``                     prompt
``captions``    ``DIR`` (images + same-named ``.txt``),    ``<CAPTION>``, ``<DETAILED_CAPTION>``,
                ``FILE.csv[:IMAGES]``, ``FILE.jsonl``      ``<MORE_DETAILED_CAPTION>``
``refcoco``     ``REFS(.p|.json):INSTANCES.json[:IMAGES]`` ``<CAPTION_TO_PHRASE_GROUNDING>``,
                                                           ``<REFERRING_EXPRESSION_SEGMENTATION>``,
                                                           ``<OPEN_VOCABULARY_DETECTION>``,
                                                           ``<REGION_TO_SEGMENTATION>``,
                                                           ``<REGION_TO_DESCRIPTION>``
``refexp``      ``FILE.jsonl[:IMAGES]``: ``image``,        as ``refcoco``
                ``expression``, ``bbox``, ``polygon``
``ocr``         ``FILE.jsonl[:IMAGES]``: ``image``,        ``<OCR_WITH_REGION>``, ``<OCR>``,
                ``texts`` (``text``, ``quad``)             ``<REGION_TO_OCR>``
``labels``      ``FILE.jsonl[:IMAGES]``: ``id``,           each task of the results that the sample
                ``image``, ``width``, ``height``,          builders serve (see
                ``results`` (a labeled dataset's export)   :mod:`~florence2.data.formats.labels`)
``synthetic``   ``DIR`` (:func:`~florence2.data.write_split`) any task
==============  =========================================  ===========================================

Conventions: boxes in files are pixels of the image as :func:`florence2.image.load_image` returns it
(EXIF orientation applied): COCO ``bbox`` is ``[x, y, width, height]``, every other box is XYXY
``[x0, y0, x1, y1]``; YOLO labels are ``class cx cy w h`` (or ``class x1 y1 x2 y2 ...`` polygons)
normalised to [0, 1]. Coordinates up to 1% (plus one pixel) outside the image are clipped to it;
further out is an error. Relative image paths are resolved against ``IMAGES`` (default: the folder
of the annotation file). COCO crowd annotations (``iscrowd: 1``) are left out; an object with several
polygons keeps its largest one (the targets hold one polygon per object); images without objects give
no detection sample. What an adapter leaves out is written to ``notes`` (when given), never silently.

Modules: one per format family, each with its reader(s) and, where there is one, its writer beside
them: :mod:`~florence2.data.formats.coco`, :mod:`~florence2.data.formats.yolo`,
:mod:`~florence2.data.formats.jsonl`, :mod:`~florence2.data.formats.captions`,
:mod:`~florence2.data.formats.referring` (``refcoco``, ``refexp``), :mod:`~florence2.data.formats.ocr`,
:mod:`~florence2.data.formats.labels`,
:mod:`~florence2.data.formats.synthetic`, :mod:`~florence2.data.formats.flickr30k` (a benchmark only);
:mod:`~florence2.data.formats.registry` (:data:`FORMATS`, the formats by name: where a format is
added), :mod:`~florence2.data.formats.detect`, :mod:`~florence2.data.formats.spec` (``--data``),
:mod:`~florence2.data.formats.mixture`, and the shared :mod:`~florence2.data.formats.validate` and
:mod:`~florence2.data.formats.records`. A file read both for fine-tuning and for a benchmark (COCO
instances, RefCOCO refs) is parsed and checked by one function, whichever it is read for.

On the command line a dataset is ``FORMAT:PATH[:PATH...][@OPTION=VALUE,...]`` (:func:`parse_data_spec`),
e.g. ``coco:instances.json:images/@tasks=OD+OPEN_VOCABULARY_DETECTION,weight=2``. Options: ``tasks``
(task names joined by ``+``), ``weight`` (how often each of its examples is drawn, relative to
others: 2 is as if the data were there twice), ``split`` (``refcoco``: the refs' split; ``yolo``:
the sub-folder of ``images/``), ``min_score`` (``labels``: drop regions scoring below it). Without
``FORMAT:`` the format is recognised from the files.
"""

from florence2.data.formats.captions import (
    CAPTION_TASKS,
    CaptionData,
    read_caption_references,
    read_captions,
    write_caption_references,
)
from florence2.data.formats.coco import (
    DETECTION_TASKS,
    CocoDetectionData,
    coco_instances,
    parse_coco,
    read_coco,
    read_coco_detection,
    write_coco,
)
from florence2.data.formats.detect import detect_format
from florence2.data.formats.flickr30k import read_flickr30k, write_flickr30k
from florence2.data.formats.jsonl import read_jsonl
from florence2.data.formats.labels import LABEL_TASKS, read_labels
from florence2.data.formats.mixture import Mixture, held_out_names, split_held_out
from florence2.data.formats.ocr import OCR_TASKS, read_ocr, read_ocr_references, write_ocr_references
from florence2.data.formats.records import BenchmarkSample, Example
from florence2.data.formats.referring import (
    REFERRING_TASKS,
    read_refcoco,
    read_refcoco_expressions,
    read_refexp,
    read_refs,
    write_refcoco,
)
from florence2.data.formats.registry import FORMATS, DataFormat
from florence2.data.formats.spec import DataSpec, load_data, parse_data_spec
from florence2.data.formats.synthetic import read_synthetic
from florence2.data.formats.validate import image_size
from florence2.data.formats.yolo import read_yolo

__all__ = [
    "CAPTION_TASKS",
    "DETECTION_TASKS",
    "FORMATS",
    "LABEL_TASKS",
    "OCR_TASKS",
    "REFERRING_TASKS",
    "BenchmarkSample",
    "CaptionData",
    "CocoDetectionData",
    "DataFormat",
    "DataSpec",
    "Example",
    "Mixture",
    "coco_instances",
    "detect_format",
    "held_out_names",
    "image_size",
    "load_data",
    "parse_coco",
    "parse_data_spec",
    "read_caption_references",
    "read_captions",
    "read_coco",
    "read_coco_detection",
    "read_flickr30k",
    "read_jsonl",
    "read_labels",
    "read_ocr",
    "read_ocr_references",
    "read_refcoco",
    "read_refcoco_expressions",
    "read_refexp",
    "read_refs",
    "read_synthetic",
    "read_yolo",
    "split_held_out",
    "write_caption_references",
    "write_coco",
    "write_flickr30k",
    "write_ocr_references",
    "write_refcoco",
]
