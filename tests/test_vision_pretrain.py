"""Dense vision pre-training: per-token targets from a scene's annotations, and the pre-training loop."""

import argparse
import json

import numpy as np
import pytest
import torch

from florence2 import Florence2Processor, ImageProcessor
from florence2.data.synthetic import SyntheticWorld, WorldConfig
from florence2.model.florence2 import Florence2Model
from florence2.tokenizer import train_bpe_tokenizer
from florence2.train.cli import add_train_parser
from florence2.train.vision_pretrain import (
    IGNORE,
    pretrain_vision,
    token_boxes,
    token_classes,
    token_colors,
    token_targets,
)
from tests.checkpoints import tiny_config

CATEGORIES = ("circle", "square", "star")
SQUARE, STAR, TEXT, BACKGROUND = 1, 2, 3, 4


def _square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _record(objects, texts=(), colors=(), text_colors=()):
    """objects: (category, polygon); colors / text_colors, when given, one per object / text."""
    record = {
        "width": 64,
        "height": 64,
        "objects": [{"category": c, "polygon": p} for c, p in objects],
        "texts": [{"quad": q} for q in texts],
    }
    for item, color in [*zip(record["objects"], colors), *zip(record["texts"], text_colors)]:
        item["color"] = color
    return record


def test_token_classes_are_categories_then_text_then_background():
    assert token_classes(CATEGORIES) == ["circle", "square", "star", "text", "background"]


def test_a_token_takes_the_class_covering_it():
    # 4x4 tokens of 16 px: the square fills token (row 0, col 0) and a quarter of token (0, 1)
    record = _record([("square", _square(0, 0, 20, 16))], texts=[_square(32, 48, 64, 64)])
    targets = token_targets(record, (4, 4), CATEGORIES)
    expected = np.full((4, 4), BACKGROUND)
    expected[0, :2] = SQUARE
    expected[3, 2:] = TEXT
    np.testing.assert_array_equal(targets, expected)


def test_coverage_below_the_threshold_is_background():
    # 1 px of a 16 px token: 1/16 < 0.1
    targets = token_targets(_record([("square", _square(0, 0, 17, 16))]), (4, 4), CATEGORIES)
    assert targets[0, 0] == SQUARE and targets[0, 1] == BACKGROUND


def test_a_later_shape_hides_an_earlier_one_and_text_lies_on_top():
    record = _record(
        [("square", _square(0, 0, 32, 32)), ("star", _square(16, 16, 32, 32))], texts=[_square(0, 0, 16, 16)]
    )
    targets = token_targets(record, (4, 4), CATEGORIES)
    assert targets[1, 1] == STAR and targets[0, 1] == SQUARE and targets[0, 0] == TEXT


def test_targets_follow_the_grid_not_the_scene_size():
    record = _record([("square", _square(0, 0, 32, 64))])  # the left half
    targets = token_targets(record, (2, 8), CATEGORIES)
    assert targets.shape == (2, 8)
    assert (targets[:, :4] == SQUARE).all() and (targets[:, 4:] == BACKGROUND).all()


def test_unknown_categories_are_left_as_background_but_hide_what_lies_below():
    targets = token_targets(_record([("arrow", _square(0, 0, 64, 64))]), (4, 4), CATEGORIES)
    assert (targets == BACKGROUND).all()
    record = _record([("star", _square(0, 0, 64, 64)), ("arrow", _square(0, 0, 32, 64))])
    targets = token_targets(record, (4, 4), CATEGORIES)
    assert (targets[:, :2] == BACKGROUND).all() and (targets[:, 2:] == STAR).all()


COLORS = ("red", "green", "blue")


def test_a_token_takes_the_colour_covering_it_and_background_is_ignored():
    record = _record(
        [("square", _square(0, 0, 32, 32)), ("star", _square(16, 16, 32, 32))],
        texts=[_square(48, 48, 64, 64)],
        colors=["red", "blue"],
        text_colors=["green"],
    )
    colors = token_colors(record, (4, 4), COLORS)
    expected = np.full((4, 4), IGNORE)
    expected[:2, :2] = 0  # red square
    expected[1, 1] = 2  # the blue star hides it
    expected[3, 3] = 1  # green text
    np.testing.assert_array_equal(colors, expected)


def test_shapes_of_one_colour_add_up_and_unknown_colours_are_ignored():
    # two red shapes of a quarter token each in token (0, 0): half of it red; a purple one is no colour
    record = _record(
        [("square", _square(0, 0, 8, 8)), ("circle", _square(8, 8, 16, 16)), ("star", _square(16, 0, 32, 16))],
        colors=["red", "red", "purple"],
    )
    colors = token_colors(record, (4, 4), COLORS)
    assert colors[0, 0] == 0 and (colors.flatten()[1:] == IGNORE).all()


def test_a_token_gets_the_distances_to_the_edges_of_its_objects_box():
    # 4x4 tokens of 16 px; the square (4..36, 0..20) covers tokens (0, 0), (0, 1) and most of (0, 2)'s
    # left quarter; the text (40..64, 48..64) lies on top of nothing
    record = _record([("square", _square(4, 0, 36, 20))], texts=[_square(40, 48, 64, 64)])
    distances, covered = token_boxes(record, (4, 4))
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, :3] = True  # token (0, 2): 4 of 16 px wide, 16 of 16 high = 25% >= MIN_COVERAGE
    expected[1, :2] = True  # 4 px of 16 rows: 19% and 25%; token (1, 2) 4 x 4 px: 6%
    expected[3, 2:] = True
    np.testing.assert_array_equal(covered, expected)
    # token (0, 1), centre (24, 8): 20 px to the left edge, 8 up, 12 right, 12 down; in token sides
    np.testing.assert_allclose(distances[0, 1], [20 / 16, 8 / 16, 12 / 16, 12 / 16])
    # token (1, 0), centre (8, 24): below the box's bottom edge, a negative distance
    np.testing.assert_allclose(distances[1, 0], [4 / 16, 24 / 16, 28 / 16, -4 / 16])
    np.testing.assert_allclose(distances[3, 3], [(56 - 40) / 16, (56 - 48) / 16, 8 / 16, 8 / 16])
    assert (distances[~covered] == 0).all()


def test_the_object_on_top_owns_a_token_and_an_empty_scene_has_no_box_targets():
    record = _record([("square", _square(0, 0, 64, 64)), ("star", _square(16, 16, 32, 32))])
    distances, covered = token_boxes(record, (4, 4))
    assert covered.all()
    np.testing.assert_allclose(distances[1, 1], [0.5, 0.5, 0.5, 0.5])  # the star's box
    np.testing.assert_allclose(distances[0, 0], [0.5, 0.5, 3.5, 3.5])  # the square's
    distances, covered = token_boxes(_record([]), (2, 3))
    assert distances.shape == (2, 3, 4) and not covered.any()


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_bpe_tokenizer(["a red circle", "a blue square"] * 20, vocab_size=300)
    processor = Florence2Processor(tokenizer, ImageProcessor(size=(64, 64)), max_positions=128)
    world = SyntheticWorld(WorldConfig(image_size=64, text_probability=0.5), seed=3)
    return processor, world


def test_pretraining_trains_the_vision_tower_only_and_learns(setup):
    processor, world = setup
    torch.manual_seed(0)
    model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pretrain_vision(model, processor, world, steps=1, batch_size=8, lr=3e-3, progress=False)
    stats = pretrain_vision(model, processor, world, steps=40, batch_size=8, lr=3e-3, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_tower.") for k in changed)
    assert any(k.startswith("vision_tower.convs.0.") for k in changed)
    assert set(stats) == {"steps", "loss", "token_accuracy", "object_token_accuracy", "seconds"}
    assert stats["steps"] == 40 and 0.0 <= stats["object_token_accuracy"] <= 1.0
    # the first step's loss is near log(classes); after 40 steps it is far lower
    assert first["loss"] > 1.0 and stats["loss"] < 0.6 * first["loss"]


@pytest.mark.parametrize(("head", "figure"), [("colors", "color_token_accuracy"), ("boxes", "box_error_px")])
def test_colour_and_box_targets_add_a_head_that_learns(setup, head, figure):
    processor, world = setup
    torch.manual_seed(0)
    model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
    first = pretrain_vision(model, processor, world, steps=1, batch_size=8, progress=False, **{head: 1.0})
    stats = pretrain_vision(model, processor, world, steps=40, batch_size=8, progress=False, **{head: 1.0})
    assert set(stats) == {"steps", "loss", "token_accuracy", "object_token_accuracy", figure, "seconds"}
    assert stats["loss"] < 0.6 * first["loss"]
    if head == "colors":
        assert first["loss"] > 3.0  # near log(classes) + log(colours) at first
        assert stats[figure] > 1.5 / len(world.config.colors)
    else:
        assert 0 < stats[figure] < first[figure]  # edge error in pixels


def test_colour_targets_change_what_the_tower_learns(setup):
    processor, world = setup
    towers = []
    for colors in (0.0, 1.0):
        torch.manual_seed(0)
        model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
        pretrain_vision(model, processor, world, steps=2, batch_size=4, progress=False, colors=colors)
        towers.append(model.vision_tower.state_dict())
    assert not all(torch.equal(towers[0][k], towers[1][k]) for k in towers[0])


def test_pretraining_is_deterministic(setup):
    processor, world = setup
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size)).init_weights()
        pretrain_vision(model, processor, world, steps=2, batch_size=4, progress=False, seed=5)
        weights.append(model.vision_tower.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pretraining_refuses_bad_settings(setup):
    processor, world = setup
    model = Florence2Model(tiny_config(vocab_size=processor.tokenizer.vocab_size))
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_vision(model, processor, world, steps=0)
    with pytest.raises(ValueError, match="colors >= 0"):
        pretrain_vision(model, processor, world, steps=1, colors=-1.0)
    with pytest.raises(ValueError, match="boxes >= 0"):
        pretrain_vision(model, processor, world, steps=1, boxes=-1.0)


def _train_args(*extra):
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    return parser.parse_args(["train", *extra])


def test_cli_pretrains_a_fresh_model_and_records_the_figures(tmp_path):
    common = ["--out", str(tmp_path), "--batch-size", "2", "--image-size", "64", "--scene-size", "64"]
    common += ["--vocab-size", "300", "--tasks", "OD", "--no-progress", "--steps", "1"]
    args = _train_args(*common, "--vision-pretrain-steps", "3")
    assert args.func(args) == 0
    figures = json.loads((tmp_path / "vision_pretrain.json").read_text())
    assert figures["steps"] == 3 and figures["lr"] == 3e-3


def test_cli_colour_and_box_targets_are_recorded_and_need_pretraining(tmp_path):
    common = ["--out", str(tmp_path), "--batch-size", "2", "--image-size", "64", "--scene-size", "64"]
    common += ["--vocab-size", "300", "--tasks", "OD", "--no-progress", "--steps", "1"]
    args = _train_args(
        *common, "--vision-pretrain-steps", "2", "--vision-pretrain-colors", "0.5", "--vision-pretrain-boxes", "0.5"
    )
    assert args.func(args) == 0
    figures = json.loads((tmp_path / "vision_pretrain.json").read_text())
    assert "color_token_accuracy" in figures and "box_error_px" in figures
    for flag in ("--vision-pretrain-colors", "--vision-pretrain-boxes"):
        args = _train_args(*common, flag, "1")
        with pytest.raises(SystemExit, match=f"{flag} needs --vision-pretrain-steps"):
            args.func(args)


def test_cli_refuses_pretraining_a_given_checkpoint(tmp_path):
    args = _train_args("--out", str(tmp_path), "--model", str(tmp_path), "--vision-pretrain-steps", "3")
    with pytest.raises(SystemExit, match="fresh model"):
        args.func(args)
