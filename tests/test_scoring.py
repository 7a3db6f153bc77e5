"""Confidence scores from token probabilities, and filtering by score."""

import math

import numpy as np
import pytest

from florence2 import Florence2
from florence2.data.synthetic import WorldConfig, read_split, write_split
from florence2.eval.metrics import coco_detection_map
from florence2.image import load_image
from florence2.parsing import post_process_generation
from florence2.scoring import TokenScores, box_iou, filter_result, nms, sequence_score
from florence2.tokenizer import train_bpe_tokenizer

CORPUS = ["a red car and a blue dog", "the text HELLO 42", "café naïve ☃ snow"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def locs(*bins):
    return "".join(f"<loc_{b}>" for b in bins)


def generated(tokenizer, answer):
    """Ids as the decoder produces them: decoder start </s>, then <s> answer </s>."""
    return [tokenizer.eos_token_id, *tokenizer.encode(answer)]


def test_token_offsets_tile_the_decoded_text(tokenizer):
    for answer in ["car" + locs(1, 2, 3, 4), "café ☃ naïve" + locs(5, 6, 7, 8), "HELLO 42"]:
        ids = generated(tokenizer, answer)
        text = tokenizer.decode(ids)
        offsets = tokenizer.token_offsets(ids)
        assert len(offsets) == len(ids)
        assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))  # contiguous, in order
        for token, (start, end) in zip(ids, offsets):
            if tokenizer.id_to_token(token).startswith("<loc_"):
                assert text[start:end] == tokenizer.id_to_token(token)


def test_box_scores_are_geometric_means_of_label_and_own_location_tokens(tokenizer):
    answer = "car" + locs(1, 2, 3, 4) + locs(5, 6, 7, 8) + "dog" + locs(9, 10, 11, 12)
    ids = generated(tokenizer, answer)
    rng = np.random.default_rng(0)
    logprobs = -rng.uniform(0.01, 3.0, size=len(ids))
    tokens = [tokenizer.id_to_token(i) for i in ids]
    scores = TokenScores.from_generation(tokenizer, ids, logprobs)
    result = post_process_generation(tokenizer.decode(ids), "<OD>", (1000, 1000), scores=scores)["<OD>"]
    assert result["labels"] == ["car", "car", "dog"]

    def at(names):
        return [tokens.index(n) for n in names]

    dog_start = tokens.index("<loc_8>") + 1
    car_text = [i for i in range(2, tokens.index("<loc_1>"))]
    dog_text = [i for i in range(dog_start, tokens.index("<loc_9>"))]
    expected = [
        math.exp(np.mean(logprobs[car_text + at(["<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>"])])),
        math.exp(np.mean(logprobs[car_text + at(["<loc_5>", "<loc_6>", "<loc_7>", "<loc_8>"])])),
        math.exp(np.mean(logprobs[dog_text + at(["<loc_9>", "<loc_10>", "<loc_11>", "<loc_12>"])])),
    ]
    assert result["scores"] == pytest.approx(expected)

    # a more probable box scores higher; the other boxes do not move
    better = logprobs.copy()
    better[tokens.index("<loc_6>")] = 0.0
    again = post_process_generation(
        tokenizer.decode(ids), "<OD>", (1000, 1000), scores=TokenScores.from_generation(tokenizer, ids, better)
    )["<OD>"]["scores"]
    assert again[1] > result["scores"][1]
    assert again[0] == pytest.approx(result["scores"][0]) and again[2] == pytest.approx(result["scores"][2])


@pytest.mark.parametrize(
    "task, answer, shapes_key, scores_key",
    [
        ("<OCR_WITH_REGION>", "HELLO" + locs(*range(8)) + "42" + locs(*range(10, 18)), "quad_boxes", "scores"),
        ("<REFERRING_EXPRESSION_SEGMENTATION>", locs(1, 2, 30, 2, 30, 40), "polygons", "scores"),
        ("<OPEN_VOCABULARY_DETECTION>", "a red car" + locs(1, 2, 3, 4), "bboxes", "bboxes_scores"),
        (
            "<OPEN_VOCABULARY_DETECTION>",
            "car<poly>" + locs(1, 2, 30, 2, 30, 40) + "</poly>",
            "polygons",
            "polygons_scores",
        ),
        ("<REGION_PROPOSAL>", locs(1, 2, 3, 4, 5, 6, 7, 8), "bboxes", "scores"),
    ],
)
def test_every_region_kind_gets_scores_in_unit_range(tokenizer, task, answer, shapes_key, scores_key):
    ids = generated(tokenizer, answer)
    logprobs = -np.linspace(0.1, 2.0, len(ids))
    scores = TokenScores.from_generation(tokenizer, ids, logprobs)
    result = post_process_generation(tokenizer.decode(ids), task, (100, 100), scores=scores)[task]
    assert len(result[scores_key]) == len(result[shapes_key]) > 0
    assert all(0.0 < s < 1.0 for s in result[scores_key])
    # without scores the official format is unchanged
    plain = post_process_generation(tokenizer.decode(ids), task, (100, 100))[task]
    assert not any(key.endswith("scores") for key in plain)
    assert {k: v for k, v in result.items() if not k.endswith("scores")} == plain


def test_sequence_score_leaves_out_forced_and_padding_tokens():
    ids = [2, 0, 50, 51, 2, 1, 1]
    logprobs = [0.0, -5.0, -0.2, -0.4, -0.6, 0.0, 0.0]
    assert sequence_score(ids, logprobs, eos_token_id=2, pad_token_id=1) == pytest.approx(math.exp(-0.4))
    # an EOS forced at the length limit does not count
    assert sequence_score(ids[:5], logprobs[:5], eos_token_id=2, pad_token_id=1, forced_eos_at=4) == pytest.approx(
        math.exp(-0.3)
    )


def test_filter_result_thresholds_and_suppresses_per_label():
    result = {
        "bboxes": [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]],
        "labels": ["car", "car", "dog", "car"],
        "scores": [0.5, 0.9, 0.4, 0.05],
    }
    assert filter_result(result) == result
    kept = filter_result(result, score_threshold=0.1, nms_iou=0.5)
    assert kept == {"bboxes": [[1, 1, 11, 11], [0, 0, 10, 10]], "labels": ["car", "dog"], "scores": [0.9, 0.4]}
    assert filter_result("a caption", score_threshold=0.5) == "a caption"
    ovd = {
        "bboxes": [[0, 0, 5, 5]],
        "bboxes_labels": ["x"],
        "bboxes_scores": [0.2],
        "polygons": [],
        "polygons_labels": [],
    }
    assert filter_result(ovd, score_threshold=0.3)["bboxes"] == []


def test_nms_and_iou():
    assert box_iou([0, 0, 10, 10], [[0, 0, 10, 10], [5, 0, 15, 10]])[0] == pytest.approx([1.0, 1 / 3])
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]]
    assert nms(boxes, [0.3, 0.2, 0.9], None, iou=0.5) == [2, 1]
    assert nms(boxes, [0.3, 0.2, 0.9], None, iou=0.2) == [2]
    assert nms(boxes, [0.3, 0.2, 0.9], ["a", "a", "b"], iou=0.2) == [2, 0]


def test_predict_applies_threshold_and_rejects_bad_values(tmp_path):
    f2 = Florence2.from_pretrained()
    write_split(tmp_path, 2, seed=5, config=WorldConfig(image_size=128))
    image = load_image(tmp_path / read_split(tmp_path)[0]["image"])
    everything = f2.predict(image, "<OD>")["<OD>"]
    cut = sorted(everything["scores"])[len(everything["scores"]) // 2] if everything["scores"] else 0.5
    kept = f2.predict(image, "<OD>", score_threshold=cut)["<OD>"]
    assert all(s >= cut for s in kept["scores"])
    assert len(kept["bboxes"]) == sum(s >= cut for s in everything["scores"])
    with pytest.raises(ValueError, match="score_threshold"):
        f2.predict(image, "<OD>", score_threshold=1.5)


def test_real_scores_rank_detections_better_than_constant_scores(tmp_path):
    """On the embedded model's held-out synthetic scenes, mAP with token scores beats mAP with every
    score set to 1.0 (the figure every other Florence-2 pipeline reports)."""
    write_split(tmp_path, 60, seed=777, config=WorldConfig(image_size=128))
    records = read_split(tmp_path)
    f2 = Florence2.from_pretrained()
    results = f2.predict([load_image(tmp_path / r["image"]) for r in records], "<OD>", batch_size=16)
    scored = [r["<OD>"] for r in results]
    constant = [{**r, "scores": [1.0] * len(r["bboxes"])} for r in scored]
    real, ones = coco_detection_map(records, scored), coco_detection_map(records, constant)
    assert real["mAP50"] > ones["mAP50"] and real["mAP"] > ones["mAP"]
