"""The embedded default model: shipped in the package, small, and answering every task."""

import json

import pytest

from florence2 import Florence2
from florence2.cli import main
from florence2.data.synthetic import read_split
from florence2.pipeline import DEFAULT_MODEL_DIR
from florence2.tasks import TASKS

EXAMPLES = DEFAULT_MODEL_DIR.parent / "examples"


@pytest.fixture(scope="module")
def embedded():
    return Florence2.from_pretrained()


@pytest.fixture(scope="module")
def example():
    """A shipped example with both shapes and text, so every task has something to find."""
    record = next(r for r in read_split(EXAMPLES) if r["objects"] and r["texts"])
    return EXAMPLES / record["image"], record


def test_shipped_assets_are_small():
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.parent.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    assert len(read_split(EXAMPLES)) >= 3


def _inside(values, width, height):
    xs, ys = values[0::2], values[1::2]
    return all(0 <= x <= width for x in xs) and all(0 <= y <= height for y in ys)


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_gives_a_well_formed_answer(embedded, example, task):
    path, record = example
    spec = TASKS[task]
    obj = record["objects"][0]
    inputs = {"none": {}, "text": {"text": obj["category"]}, "region": {"region": obj["bbox"]}}[spec.input]
    if task == "<REFERRING_EXPRESSION_SEGMENTATION>":
        inputs = {"text": obj["referring"]}
    if task == "<CAPTION_TO_PHRASE_GROUNDING>":
        inputs = {"text": record["captions"]["brief"]}
    result = embedded.predict(path, task, **inputs)[task]
    W, H = record["width"], record["height"]
    if spec.result_type == "pure_text":
        assert isinstance(result, str) and result.strip()
        assert "<loc_" not in result or task == "<OCR>"
        return
    shapes = result.get("bboxes", []) + result.get("quad_boxes", [])
    shapes += [poly for instance in result.get("polygons", []) for poly in instance]
    assert shapes, result  # something is found on an image full of objects
    assert all(_inside(s, W, H) for s in shapes)
    for key in ("labels", "bboxes_labels", "polygons_labels"):
        assert all(isinstance(label, str) for label in result.get(key, []))


def test_cli_uses_the_embedded_model_by_default(example, capsys):
    path, record = example
    assert main(["predict", str(path), "--task", "OD", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["width"] == record["width"] and out["results"]["<OD>"]["bboxes"]
