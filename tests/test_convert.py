import contextlib
import copy
import io
import json
import sys
import types

import numpy as np
import pytest

from florence2 import convert
from florence2.convert import (
    category_key,
    decode_rle,
    encode_rle,
    extract_regions,
    rasterize_polygons,
    region_masks,
    to_coco_detections,
    to_supervision,
)
from florence2.eval import metrics

try:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:
    mask_utils = None
needs_coco = pytest.mark.skipif(mask_utils is None, reason="needs pycocotools (the eval extra)")


def square(x0, y0, side):
    return [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]


OD = {"bboxes": [[0, 0, 10, 10], [5, 5, 25, 15]], "labels": ["Car", "wheel"], "scores": [0.9, 0.4]}
OVD = {
    "bboxes": [[0, 0, 4, 4]],
    "bboxes_labels": ["cat"],
    "bboxes_scores": [0.7],
    "polygons": [[square(10, 10, 5)]],
    "polygons_labels": ["dog"],
    "polygons_scores": [0.2],
}
RES = {"polygons": [[square(2, 2, 4), square(10, 2, 2)]], "labels": [""], "scores": [0.5]}
OCR = {"quad_boxes": [[1, 1, 9, 1, 9, 4, 1, 4]], "labels": ["HELLO"], "scores": [0.8]}


# --------------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------------


def test_extract_regions_of_every_result_kind():
    od = extract_regions(OD)
    np.testing.assert_allclose(od.boxes, OD["bboxes"])
    assert od.labels == ["Car", "wheel"] and od.scores.tolist() == [0.9, 0.4] and od.has_scores
    assert od.polygons == [None, None] and len(od) == 2

    ovd = extract_regions(OVD)  # boxes first, then polygons (their bounds)
    np.testing.assert_allclose(ovd.boxes, [[0, 0, 4, 4], [10, 10, 15, 15]])
    assert ovd.labels == ["cat", "dog"] and ovd.scores.tolist() == [0.7, 0.2]
    assert ovd.polygons[0] is None and ovd.polygons[1] == [square(10, 10, 5)]

    res = extract_regions(RES)  # one instance of two polygons
    np.testing.assert_allclose(res.boxes, [[2, 2, 12, 6]])
    assert res.labels == [""] and len(res.polygons[0]) == 2

    ocr = extract_regions(OCR)
    np.testing.assert_allclose(ocr.boxes, [[1, 1, 9, 4]])
    assert ocr.polygons == [[OCR["quad_boxes"][0]]]


def test_extract_regions_scores_fall_back_to_one_and_can_be_forced():
    plain = extract_regions({"bboxes": OD["bboxes"], "labels": OD["labels"]})
    assert plain.scores.tolist() == [1.0, 1.0] and not plain.has_scores
    forced = extract_regions(OD, unit_scores=True)
    assert forced.scores.tolist() == [1.0, 1.0] and forced.has_scores  # the result had scores
    proposals = extract_regions({"bboxes": [[0, 0, 1, 1]]})  # no labels at all: region proposals
    assert proposals.labels == [""]


def test_extract_regions_unwraps_predict_dicts():
    whole = {"<OD>": OD, "sequence_scores": {"<OD>": 0.8}}
    assert extract_regions(whole).labels == ["Car", "wheel"]
    several = {"<OD>": OD, "<OCR_WITH_REGION>": OCR, "sequence_scores": {}}
    with pytest.raises(ValueError, match="several tasks"):
        extract_regions(several)
    assert extract_regions(several, task="ocr_with_region").labels == ["HELLO"]


def test_extract_regions_errors():
    with pytest.raises(ValueError, match="not a region result"):
        extract_regions({"<CAPTION>": "a car"})
    with pytest.raises(ValueError, match="2 scores for 1 regions"):
        extract_regions({"bboxes": [[0, 0, 1, 1]], "labels": ["a"], "scores": [0.1, 0.2]})
    with pytest.raises(ValueError, match="labels"):
        extract_regions({"bboxes": [[0, 0, 1, 1]], "labels": ["a", "b"]})


def test_rasterizer_has_one_home():
    assert metrics.rasterize_polygons is convert.rasterize_polygons


def test_region_masks():
    masks = region_masks(extract_regions(OVD), (20, 20))
    assert masks.shape == (2, 20, 20) and masks.dtype == bool
    assert masks[0].sum() == 16 and masks[0][:4, :4].all()  # a box region is filled
    assert masks[1].sum() == 25 and masks[1][10:15, 10:15].all()
    res = region_masks(extract_regions(RES), (20, 20))
    assert res[0].sum() == 16 + 4  # the union of the instance's polygons


# --------------------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------------------


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((4, 6), dtype=bool)
    yield np.ones((3, 5), dtype=bool)
    corner = np.zeros((5, 7), dtype=bool)
    corner[0, 0] = True  # a mask starting with a set pixel: RLE starts with a zero-length run
    yield corner
    yield rng.random((13, 11)) > 0.5
    yield rasterize_polygons(square(3.2, 4.7, 20), (40, 30))


def test_uncompressed_rle_round_trip_and_known_counts():
    mask = np.zeros((3, 2), dtype=bool)
    mask[1:, 1] = True  # column-major: 0 0 0 0 1 1
    assert encode_rle(mask, compressed=False) == {"size": [3, 2], "counts": [4, 2]}
    mask[0, 0] = True  # 1 0 0 0 1 1
    assert encode_rle(mask, compressed=False) == {"size": [3, 2], "counts": [0, 1, 3, 2]}
    for m in _masks():
        rle = encode_rle(m, compressed=False)
        assert sum(rle["counts"]) == m.size
        np.testing.assert_array_equal(decode_rle(rle), m)
        json.dumps(rle)
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [2, 2], "counts": [1, 1]})


@needs_coco
def test_rle_matches_pycocotools():
    for m in _masks():
        compressed = encode_rle(m)
        assert isinstance(compressed["counts"], str)
        reference = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert compressed["counts"] == reference["counts"].decode("ascii")
        np.testing.assert_array_equal(decode_rle(compressed), m)
        # pycocotools reads our uncompressed counts as the same mask
        uncompressed = encode_rle(m, compressed=False)
        from_ours = mask_utils.frPyObjects(uncompressed, *uncompressed["size"])
        np.testing.assert_array_equal(mask_utils.decode(from_ours).astype(bool), m)
        assert int(mask_utils.area(reference)) == int(m.sum())


def test_compressed_rle_needs_pycocotools(monkeypatch):
    monkeypatch.setattr(convert, "_pycocotools_mask", lambda: None)
    mask = np.eye(3, dtype=bool)
    assert isinstance(encode_rle(mask)["counts"], list)  # falls back to uncompressed
    with pytest.raises(ImportError, match="pycocotools"):
        encode_rle(mask, compressed=True)
    with pytest.raises(ImportError, match="pycocotools"):
        decode_rle({"size": [3, 3], "counts": "abc"})


# --------------------------------------------------------------------------------------------------
# COCO detections
# --------------------------------------------------------------------------------------------------


def test_to_coco_detections_with_a_given_mapping():
    results = [OD, {"<OD>": {"bboxes": [[1, 2, 3, 5]], "labels": ["  TRUCK "], "scores": [0.3]}}]
    coco = to_coco_detections(results, [7, 8], {"car": 3, "truck": 8})
    assert coco.detections == [
        {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9},
        {"image_id": 8, "category_id": 8, "bbox": [1.0, 2.0, 2.0, 3.0], "score": 0.3},
    ]
    assert coco.unmatched == {"wheel": 1} and coco.category_ids == {"car": 3, "truck": 8}
    # a names list numbers from 1; COCO's categories list is read as is
    assert to_coco_detections([OD], [1], ["wheel", "car"]).detections[0]["category_id"] == 2
    categories = [{"id": 5, "name": "wheel"}, {"id": 9, "name": "car"}]
    assert [d["category_id"] for d in to_coco_detections([OD], [1], categories).detections] == [9, 5]


def test_to_coco_detections_builds_a_mapping_and_forces_scores():
    coco = to_coco_detections([OD, OVD], [1, 2], unit_scores=True)
    assert coco.category_ids == {"car": 1, "cat": 2, "dog": 3, "wheel": 4}
    assert [d["score"] for d in coco.detections] == [1.0] * 4
    assert not coco.unmatched
    assert category_key(" Traffic\tLight ") == "traffic light"
    with pytest.raises(ValueError, match="image ids"):
        to_coco_detections([OD], [1, 2])
    with pytest.raises(ValueError, match="image size"):
        to_coco_detections([OD], [1], segmentation=True)


@needs_coco
def test_coco_segmentation_results_load_and_score_in_pycocotools():
    """Perfect polygon predictions of two objects through our RLE give segm AP 1 in COCOeval."""
    gt = {
        "images": [{"id": 1, "width": 40, "height": 30, "file_name": "a.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
             "segmentation": [square(2, 2, 10)], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 5, 8, 8], "area": 64,
             "segmentation": [square(20, 5, 8)], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "tile"}],
    }  # fmt: skip
    result = {
        "polygons": [[square(2, 2, 10)], [square(20, 5, 8)]],
        "labels": ["box", "tile"],
        "scores": [0.9, 0.8],
    }
    coco = to_coco_detections([result], [1], gt["categories"], segmentation=True, image_sizes=[(40, 30)])
    assert [d["bbox"] for d in coco.detections] == [[2.0, 2.0, 10.0, 10.0], [20.0, 5.0, 8.0, 8.0]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(coco.detections))
        assert [a["area"] for a in coco_dt.dataset["annotations"]] == [100, 64]
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
    assert metrics.coco_evaluate(gt, coco.detections, "segm")["AP"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# supervision
# --------------------------------------------------------------------------------------------------


class _FakeDetections:
    def __init__(self, xyxy, mask=None, confidence=None, class_id=None, data=None):
        self.xyxy, self.mask, self.confidence, self.class_id, self.data = xyxy, mask, confidence, class_id, data


@pytest.fixture
def fake_supervision(monkeypatch):
    module = types.ModuleType("supervision")
    module.Detections = _FakeDetections
    monkeypatch.setitem(sys.modules, "supervision", module)
    return module


def test_to_supervision_fields(fake_supervision):
    d = to_supervision(OD)
    np.testing.assert_allclose(d.xyxy, OD["bboxes"])
    assert d.xyxy.dtype == np.float32 and d.mask is None
    np.testing.assert_allclose(d.confidence, [0.9, 0.4])
    assert d.class_id.tolist() == [0, 1] and d.data["class_name"].tolist() == ["Car", "wheel"]
    # with classes: ids index them (case-insensitively), other labels are dropped
    d = to_supervision(OD, classes=["wheel", "car"])
    assert d.class_id.tolist() == [1, 0]
    d = to_supervision(OD, classes=["wheel"])
    assert d.class_id.tolist() == [0] and d.xyxy.shape == (1, 4) and d.confidence.tolist() == pytest.approx([0.4])
    # polygons give masks when the image size is known; box regions of the same result are filled
    d = to_supervision({"<OPEN_VOCABULARY_DETECTION>": OVD}, image_size=(20, 20))
    assert d.mask.shape == (2, 20, 20) and d.mask[1].sum() == 25
    d = to_supervision({"bboxes": [], "labels": []})
    assert d.xyxy.shape == (0, 4) and d.class_id.shape == (0,)


def test_to_supervision_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import fails
    with pytest.raises(ImportError, match=r"florence2\[supervision\]"):
        to_supervision(OD)


def test_to_supervision_real_package():
    sv = pytest.importorskip("supervision")
    d = to_supervision(RES, image_size=(20, 20))
    assert isinstance(d, sv.Detections) and len(d) == 1
    assert d.mask.shape == (1, 20, 20) and d.data["class_name"].tolist() == [""]
