import copy
import functools
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from florence2.data import samples as samples_module
from florence2.data.samples import (
    OCR_LINE_SEPARATOR,
    TARGET_BUILDERS,
    Sample,
    TaskMixture,
    all_samples,
    build_samples,
    describe_object,
)
from florence2.data.synthetic import SyntheticWorld, WorldConfig, validate_record
from florence2.errors import AnnotationError, TaskError
from florence2.parsing import post_process_generation
from florence2.tasks import TASKS, build_prompt

CAPTION_KEYS = {"<CAPTION>": "brief", "<DETAILED_CAPTION>": "detailed", "<MORE_DETAILED_CAPTION>": "more_detailed"}
WORLDS = (
    (WorldConfig(image_size=256), 0, 30),
    (WorldConfig(image_size=256, min_objects=1, max_objects=1), 1, 30),
    (WorldConfig(image_size=256, min_objects=4, max_objects=4, text_probability=0.8), 2, 30),
    (WorldConfig(image_size=256, min_objects=0, max_objects=0), 3, 8),
)


@functools.lru_cache(maxsize=1)
def synthetic_records() -> tuple[dict, ...]:
    return tuple(SyntheticWorld(config, seed).scene(i)[1] for config, seed, count in WORLDS for i in range(count))


@pytest.fixture(scope="module")
def records() -> tuple[dict, ...]:
    found = synthetic_records()
    # The round trips below must meet every case: with and without texts, objects, repeated categories.
    assert any(r["texts"] for r in found) and any(not r["texts"] for r in found)
    assert any(not r["objects"] for r in found) and any(len(r["objects"]) == 1 for r in found)
    assert any(len({o["category"] for o in r["objects"]}) < len(r["objects"]) for r in found)
    return found


def size_of(record: dict) -> tuple[int, int]:
    return record["width"], record["height"]


def parse(sample: Sample, record: dict):
    return post_process_generation(sample.target, sample.task, size_of(record))[sample.task]


def assert_within_half_bin(parsed, annotated, size) -> None:
    """Dequantized bin centres lie within half a bin of the annotation on each axis."""
    parsed, annotated = np.asarray(parsed, dtype=float), np.asarray(annotated, dtype=float)
    assert parsed.shape == annotated.shape
    half_bin = np.tile([size[0] / 2000, size[1] / 2000], annotated.shape[-1] // 2)
    assert np.all(np.abs(parsed - annotated) <= half_bin + 1e-9), (parsed, annotated)


def assert_same_shapes(parsed: list[tuple[str, list]], expected: list[tuple[str, list]], size) -> None:
    """Parsed (label, coords) pairs match the annotation one to one (any order): equal labels, coordinates
    within half a bin."""
    assert len(parsed) == len(expected)
    left = list(expected)
    half_bin = np.array([size[0] / 2000, size[1] / 2000])
    for label, coords in parsed:
        for i, (want_label, want) in enumerate(left):
            if want_label == label and len(want) == len(coords):
                diff = np.abs(np.asarray(coords) - np.asarray(want)).reshape(-1, 2)
                if np.all(diff <= half_bin + 1e-9):
                    del left[i]
                    break
        else:
            raise AssertionError(f"{label!r} {coords} matches nothing in {left}")


def reading_key(bbox, size) -> tuple[int, int]:
    """The documented reading order: quantized top edge, then quantized left edge."""
    return min(math.floor(bbox[1] * 1000 / size[1]), 999), min(math.floor(bbox[0] * 1000 / size[0]), 999)


def description(obj: dict) -> str:
    return re.sub(r"^(a|an) ", "", obj["brief"])


def test_every_task_has_a_builder():
    for spec in TASKS.values():
        assert spec.token in TARGET_BUILDERS or spec.result_type in TARGET_BUILDERS, spec.token


# --------------------------------------------------------------------------------------------------
# A literal record on a non-square image: 1000 x 500, so x bins are whole pixels and y bins half pixels
# --------------------------------------------------------------------------------------------------

CAR, WHEEL_L, WHEEL_R = (
    "<loc_50><loc_200><loc_950><loc_840>",
    "<loc_100><loc_600><loc_200><loc_900>",
    "<loc_700><loc_620><loc_800><loc_920>",
)
POLY_L = "<loc_150><loc_600><loc_200><loc_750><loc_150><loc_900><loc_100><loc_750>"
POLY_CAR = "<loc_50><loc_200><loc_950><loc_200><loc_950><loc_840><loc_50><loc_840>"
POLY_R = "<loc_750><loc_620><loc_800><loc_770><loc_750><loc_920><loc_700><loc_770>"
STOP = "<loc_400><loc_100><loc_600><loc_100><loc_600><loc_180><loc_400><loc_180>"
EXIT = "<loc_10><loc_940><loc_90><loc_940><loc_90><loc_991><loc_10><loc_991>"


def literal_record() -> dict:
    record = {
        "image": "car.png",
        "width": 1000,
        "height": 500,
        "objects": [
            {
                "id": 0,
                "category": "wheel",
                "color": "black",
                "size": "small",
                "brief": "a black wheel",
                "referring": "the left wheel",
                "bbox": [100.2, 300.4, 200.9, 450.0],
                "polygon": [150.0, 300.4, 200.9, 375.0, 150.0, 450.0, 100.2, 375.0],
            },
            {
                "id": 1,
                "category": "car",
                "color": "green",
                "size": "large",
                "brief": "a green car",
                "referring": "the green car",
                "bbox": [50.0, 100.0, 950.0, 420.0],
                "polygon": [50.0, 100.0, 950.0, 100.0, 950.0, 420.0, 50.0, 420.0],
            },
            {
                "id": 2,
                "category": "wheel",
                "color": "black",
                "size": "small",
                "brief": "a black wheel",
                "referring": "the right wheel",
                "bbox": [700.0, 310.0, 800.0, 460.0],
                "polygon": [750.0, 310.0, 800.0, 385.0, 750.0, 460.0, 700.0, 385.0],
            },
        ],
        "texts": [  # deliberately not in reading order
            {
                "text": "EXIT",
                "quad": [10.0, 470.0, 90.0, 470.0, 90.0, 495.5, 10.0, 495.5],
                "bbox": [10, 470, 90, 495.5],
            },
            {"text": "STOP", "quad": [400.0, 50.0, 600.0, 50.0, 600.0, 90.0, 400.0, 90.0], "bbox": [400, 50, 600, 90]},
        ],
        "captions": {
            "brief": "A green car and two black wheels.",
            "detailed": "A green car with two black wheels, under a STOP sign.",
            "more_detailed": "The image shows a green car. Its two wheels are black.",
        },
        "phrases": [
            {"phrase": "A green car", "object_ids": [1], "start": 0, "end": 11},
            {"phrase": "two black wheels", "object_ids": [0, 2], "start": 16, "end": 32},
        ],
    }
    validate_record(record)
    return record


LITERAL_SAMPLES = {
    "<CAPTION>": [("What does the image describe?", "A green car and two black wheels.")],
    "<DETAILED_CAPTION>": [
        ("Describe in detail what is shown in the image.", "A green car with two black wheels, under a STOP sign.")
    ],
    "<MORE_DETAILED_CAPTION>": [
        (
            "Describe with a paragraph what is shown in the image.",
            "The image shows a green car. Its two wheels are black.",
        )
    ],
    "<OCR>": [("What is the text in the image?", "STOP\nEXIT")],
    "<OCR_WITH_REGION>": [("What is the text in the image, with regions?", f"STOP{STOP}EXIT{EXIT}")],
    "<OD>": [("Locate the objects with category name in the image.", f"car{CAR}wheel{WHEEL_L}{WHEEL_R}")],
    "<DENSE_REGION_CAPTION>": [
        ("Locate the objects in the image, with their descriptions.", f"green car{CAR}black wheel{WHEEL_L}{WHEEL_R}")
    ],
    "<REGION_PROPOSAL>": [("Locate the region proposals in the image.", f"{CAR}{WHEEL_L}{WHEEL_R}")],
    "<CAPTION_TO_PHRASE_GROUNDING>": [
        (
            "Locate the phrases in the caption: A green car and two black wheels.",
            f"A green car{CAR}two black wheels{WHEEL_L}{WHEEL_R}",
        )
    ],
    "<REFERRING_EXPRESSION_SEGMENTATION>": [
        ("Locate the left wheel in the image with mask", POLY_L),
        ("Locate the green car in the image with mask", POLY_CAR),
        ("Locate the right wheel in the image with mask", POLY_R),
    ],
    "<REGION_TO_SEGMENTATION>": [
        (f"What is the polygon mask of region {WHEEL_L}", POLY_L),
        (f"What is the polygon mask of region {CAR}", POLY_CAR),
        (f"What is the polygon mask of region {WHEEL_R}", POLY_R),
    ],
    "<OPEN_VOCABULARY_DETECTION>": [
        ("Locate car in the image.", f"car{CAR}"),
        ("Locate wheel in the image.", f"wheel{WHEEL_L}wheel{WHEEL_R}"),
    ],
    "<REGION_TO_CATEGORY>": [
        (f"What is the region {WHEEL_L}?", "wheel"),
        (f"What is the region {CAR}?", "car"),
        (f"What is the region {WHEEL_R}?", "wheel"),
    ],
    "<REGION_TO_DESCRIPTION>": [
        (f"What does the region {WHEEL_L} describe?", "black wheel"),
        (f"What does the region {CAR} describe?", "green car"),
        (f"What does the region {WHEEL_R} describe?", "black wheel"),
    ],
    "<REGION_TO_OCR>": [
        ("What text is in the region <loc_10><loc_940><loc_90><loc_991>?", "EXIT"),
        ("What text is in the region <loc_400><loc_100><loc_600><loc_180>?", "STOP"),
    ],
}


def test_literal_targets_cover_the_registry():
    assert set(LITERAL_SAMPLES) == set(TASKS)


@pytest.mark.parametrize("task", list(LITERAL_SAMPLES))
def test_literal_targets(task):
    got = build_samples(literal_record(), task)
    assert [(s.prompt, s.target) for s in got] == LITERAL_SAMPLES[task]
    assert all(s.task == task and s.image == "car.png" for s in got)


def test_task_names_are_canonicalized():
    assert build_samples(literal_record(), "od") == build_samples(literal_record(), "<OD>")


def test_open_vocabulary_and_query_with_rng():
    record = literal_record()
    got = build_samples(record, "<OPEN_VOCABULARY_DETECTION>", np.random.default_rng(0))
    assert [(s.prompt, s.target) for s in got[:2]] == LITERAL_SAMPLES["<OPEN_VOCABULARY_DETECTION>"]
    assert len(got) == 3
    assert (got[2].prompt, got[2].target) in {
        ("Locate car<and>wheel in the image.", f"car{CAR}wheel{WHEEL_L}wheel{WHEEL_R}"),
        ("Locate wheel<and>car in the image.", f"wheel{WHEEL_L}wheel{WHEEL_R}car{CAR}"),
    }
    result = parse(got[2], record)
    assert sorted(result["bboxes_labels"]) == ["car", "wheel", "wheel"] and result["polygons"] == []


def test_banned_and_empty_phrases_are_left_out():
    record = literal_record()
    record["captions"]["brief"] = "it is a car."
    record["phrases"] = [{"phrase": "it", "object_ids": [1], "start": 0, "end": 2}]
    assert build_samples(record, "<CAPTION_TO_PHRASE_GROUNDING>") == []
    record["phrases"].append({"phrase": "a car", "object_ids": [1], "start": 6, "end": 11})
    (sample,) = build_samples(record, "<CAPTION_TO_PHRASE_GROUNDING>")
    assert sample.target == f"a car{CAR}"


def test_missing_annotations_give_no_samples():
    record = literal_record()
    record["texts"] = []
    for task in ("<OCR>", "<OCR_WITH_REGION>", "<REGION_TO_OCR>"):
        assert build_samples(record, task) == []
    record["objects"], record["phrases"] = [], []
    for task in TASKS:
        assert bool(build_samples(record, task)) == (task in CAPTION_KEYS), task
    record = literal_record()
    del record["objects"][1]["referring"]
    assert len(build_samples(record, "<REFERRING_EXPRESSION_SEGMENTATION>")) == 2


def test_labels_are_normalized_and_checked():
    record = literal_record()
    record["objects"][1]["brief"] = "  a  green\ncar "
    assert build_samples(record, "<REGION_TO_DESCRIPTION>")[1].target == "green car"
    record["texts"][0]["text"] = "a<b"
    with pytest.raises(AnnotationError, match="without '<'"):
        build_samples(record, "<OCR_WITH_REGION>")


def test_describe_object():
    assert describe_object({"brief": "a large red circle"}) == "large red circle"
    assert describe_object({"brief": "an orange star"}) == "orange star"
    assert describe_object({"brief": "Another star"}) == "Another star"


def test_unknown_task_and_missing_builder(monkeypatch):
    with pytest.raises(TaskError, match="unknown task"):
        build_samples(literal_record(), "<FOO>")
    monkeypatch.setattr(samples_module, "TARGET_BUILDERS", {})
    with pytest.raises(TaskError, match="no sample builder"):
        build_samples(literal_record(), "<OD>")


def test_ocr_separator_is_kept_by_the_parser():
    assert OCR_LINE_SEPARATOR.strip() == ""
    record = literal_record()
    (sample,) = build_samples(record, "<OCR>")
    assert parse(sample, record).split(OCR_LINE_SEPARATOR) == ["STOP", "EXIT"]


# --------------------------------------------------------------------------------------------------
# Round trips on synthetic records: parsing a target gives the annotation back within half a bin
# --------------------------------------------------------------------------------------------------


def test_round_trip_captions(records):
    for record in records:
        for task, key in CAPTION_KEYS.items():
            (sample,) = build_samples(record, task)
            assert sample.prompt == build_prompt(task)
            assert parse(sample, record) == record["captions"][key]


@pytest.mark.parametrize(
    "task, label",
    [
        ("<OD>", lambda o: o["category"]),
        ("<DENSE_REGION_CAPTION>", description),
        ("<REGION_PROPOSAL>", lambda o: ""),
    ],
)
def test_round_trip_boxes(records, task, label):
    for record in records:
        size, objects = size_of(record), record["objects"]
        got = build_samples(record, task)
        if not objects:
            assert got == []
            continue
        (sample,) = got
        assert sample.prompt == build_prompt(task)
        result = parse(sample, record)
        assert_same_shapes(
            list(zip(result["labels"], result["bboxes"])), [(label(o), o["bbox"]) for o in objects], size
        )
        # Reading order within each label; labels in the order of their first box, each label once.
        groups = defaultdict(list)
        for name, box in zip(result["labels"], result["bboxes"]):
            groups[name].append(reading_key(box, size))
        assert all(keys == sorted(keys) for keys in groups.values())
        assert [keys[0] for keys in groups.values()] == sorted(keys[0] for keys in groups.values())
        if task != "<REGION_PROPOSAL>":
            assert sample.target.count("<loc_") == 4 * len(objects)
            assert len(re.findall(r"[^<>]+(?=<loc_)", sample.target)) == len(groups)


def test_round_trip_phrase_grounding(records):
    task = "<CAPTION_TO_PHRASE_GROUNDING>"
    for record in records:
        size, by_id = size_of(record), {o["id"]: o for o in record["objects"]}
        got = build_samples(record, task)
        if not record["phrases"]:
            assert got == []
            continue
        (sample,) = got
        assert sample.prompt == build_prompt(task, text=record["captions"]["brief"])
        result = parse(sample, record)
        phrases = sorted(record["phrases"], key=lambda p: p["start"])
        expected = [(p["phrase"], by_id[i]["bbox"]) for p in phrases for i in p["object_ids"]]
        assert_same_shapes(list(zip(result["labels"], result["bboxes"])), expected, size)
        assert list(dict.fromkeys(result["labels"])) == [p["phrase"] for p in phrases]


@pytest.mark.parametrize("task", ["<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>"])
def test_round_trip_polygons(records, task):
    for record in records:
        size = size_of(record)
        if task == "<REGION_TO_SEGMENTATION>":
            prompts = [build_prompt(task, region=o["bbox"], image_size=size) for o in record["objects"]]
        else:
            prompts = [build_prompt(task, text=o["referring"]) for o in record["objects"]]
        expected = defaultdict(list)
        for prompt, obj in zip(prompts, record["objects"]):
            expected[prompt].append(obj["polygon"])
        got = build_samples(record, task)
        assert len(got) == len(record["objects"])
        for sample in got:
            result = parse(sample, record)
            assert result["labels"] == [""]
            (polygons,) = result["polygons"]
            (polygon,) = polygons
            assert any(len(polygon) == len(want) for want in expected[sample.prompt])
            want = next(w for w in expected[sample.prompt] if len(w) == len(polygon))
            assert_within_half_bin(polygon, want, size)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_round_trip_open_vocabulary(records, seed):
    task = "<OPEN_VOCABULARY_DETECTION>"
    rng = None if seed is None else np.random.default_rng(seed)
    for record in records:
        size, categories = size_of(record), {o["category"] for o in record["objects"]}
        got = build_samples(record, task, rng)
        singles = [s for s in got if "<and>" not in s.prompt]
        assert sorted(s.prompt for s in singles) == sorted(build_prompt(task, text=c) for c in categories)
        assert len(got) == len(categories) + (rng is not None and len(categories) >= 2)
        for sample in got:
            names = re.fullmatch(r"Locate (.+) in the image\.", sample.prompt).group(1).split("<and>")
            assert len(set(names)) == len(names) and set(names) <= categories and len(names) <= 3
            result = parse(sample, record)
            assert result["polygons"] == [] and result["polygons_labels"] == []
            expected = [(n, o["bbox"]) for n in names for o in record["objects"] if o["category"] == n]
            assert_same_shapes(list(zip(result["bboxes_labels"], result["bboxes"])), expected, size)
            assert list(dict.fromkeys(result["bboxes_labels"])) == names


@pytest.mark.parametrize(
    "task, key, answer",
    [
        ("<REGION_TO_CATEGORY>", "objects", lambda o: o["category"]),
        ("<REGION_TO_DESCRIPTION>", "objects", description),
        ("<REGION_TO_OCR>", "texts", lambda t: t["text"]),
    ],
)
def test_round_trip_region_to_text(records, task, key, answer):
    for record in records:
        expected = defaultdict(list)
        for item in record[key]:
            expected[build_prompt(task, region=item["bbox"], image_size=size_of(record))].append(answer(item))
        got = build_samples(record, task)
        assert len(got) == len(record[key])
        assert Counter(s.prompt for s in got) == Counter({p: len(v) for p, v in expected.items()})
        for sample in got:
            assert parse(sample, record) in expected[sample.prompt]


def test_round_trip_ocr(records):
    for record in records:
        size = size_of(record)
        texts = sorted(record["texts"], key=lambda t: reading_key(t["bbox"], size))
        plain, with_region = build_samples(record, "<OCR>"), build_samples(record, "<OCR_WITH_REGION>")
        if not texts:
            assert plain == [] and with_region == []
            continue
        assert parse(plain[0], record) == OCR_LINE_SEPARATOR.join(t["text"] for t in texts)
        result = parse(with_region[0], record)
        assert result["labels"] == [t["text"] for t in texts]
        assert len(result["quad_boxes"]) == len(texts)
        for quad, text in zip(result["quad_boxes"], texts):
            assert_within_half_bin(quad, text["quad"], size)


def test_all_samples_covers_every_task_and_has_no_sequence_tokens(records):
    for record in records[:40]:
        got = all_samples(record, rng=np.random.default_rng(0))
        by_task = defaultdict(list)
        for sample in got:
            assert not re.search(r"<s>|</s>|<pad>", sample.target + sample.prompt)
            assert sample.target == sample.target.strip() and sample.image == record["image"]
            by_task[sample.task].append(sample)
        assert list(by_task) == [t for t in TASKS if by_task[t]]  # registry order
        for task in TASKS:
            assert by_task[task] == build_samples(record, task, np.random.default_rng(0)) or task == (
                "<OPEN_VOCABULARY_DETECTION>"  # the shared rng is further along there
            )
    assert all_samples(literal_record(), tasks=["<OD>", "ocr"]) == (
        build_samples(literal_record(), "<OD>") + build_samples(literal_record(), "<OCR>")
    )


# --------------------------------------------------------------------------------------------------
# Determinism and the task mixture
# --------------------------------------------------------------------------------------------------


def test_seeded_rng_is_deterministic(records):
    for record in records[:30]:
        assert all_samples(record, rng=np.random.default_rng(5)) == all_samples(record, rng=np.random.default_rng(5))
        assert all_samples(record) == all_samples(record)
    queries = {
        s.prompt
        for seed in range(20)
        for s in build_samples(records[2], "<OPEN_VOCABULARY_DETECTION>", np.random.default_rng(seed))
        if "<and>" in s.prompt
    }
    assert len(queries) > 1  # the rng does vary the combined query


def test_mixture_is_seeded(records):
    weights = {task: 1.0 for task in TASKS}
    draws = [[TaskMixture(weights, seed=seed).draw(r) for r in records] for seed in (3, 3, 4)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert all(isinstance(s, Sample) for s in draws[0])
    # A stream of draws from one mixture is also reproducible.
    a, b = TaskMixture(weights, seed=9), TaskMixture(weights, seed=9)
    assert [a.draw(r) for r in records for _ in range(3)] == [b.draw(r) for r in records for _ in range(3)]


def test_mixture_skips_tasks_without_samples():
    record = literal_record()
    record["texts"] = []
    mixture = TaskMixture({"<OCR>": 100.0, "region_to_ocr": 100.0, "<OD>": 1.0}, seed=0)
    assert {mixture.draw(record).task for _ in range(50)} == {"<OD>"}
    assert TaskMixture({"<OCR>": 1.0}).draw(record) is None


def test_mixture_follows_weights():
    record = literal_record()
    mixture = TaskMixture({"caption": 3.0, "<OD>": 1.0, "<OCR>": 0.0}, seed=1)
    assert mixture.tasks == ("<CAPTION>", "<OD>")
    assert mixture.probabilities == {"<CAPTION>": 0.75, "<OD>": 0.25}
    counts = Counter(mixture.draw(record).task for _ in range(2000))
    assert 0.71 < counts["<CAPTION>"] / 2000 < 0.79
    # Region tasks pick among their samples.
    mixture = TaskMixture({"<REGION_TO_CATEGORY>": 1.0}, seed=2)
    assert {mixture.draw(record).target for _ in range(50)} == {"car", "wheel"}


def test_mixture_rejects_bad_weights():
    with pytest.raises(ValueError, match=">= 0"):
        TaskMixture({"<OD>": -1.0})
    with pytest.raises(ValueError, match=">= 0"):
        TaskMixture({"<OD>": float("nan")})
    with pytest.raises(ValueError, match="positive weight"):
        TaskMixture({"<OD>": 0.0})
    with pytest.raises(TaskError):
        TaskMixture({"<FOO>": 1.0})


def test_records_are_not_modified(records):
    record = copy.deepcopy(records[0])
    all_samples(record, rng=np.random.default_rng(0))
    assert record == records[0]
