"""The predictor and the CLI on a random-weight checkpoint built here (tokenizer trained on the fly)."""

import json

import pytest
import torch
from PIL import Image

from florence2 import Florence2, Florence2Processor, ImageLoadError, ImageProcessor, TaskError
from florence2.cli import main
from florence2.errors import RegionError
from florence2.generation import generate
from florence2.tasks import TASKS
from florence2.tokenizer import train_bpe_tokenizer
from tests.checkpoints import random_model, tiny_config

CORPUS = [spec.prompt for spec in TASKS.values()] + ["a red circle and a blue square", "the text HELLO 42"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = train_bpe_tokenizer(CORPUS * 20, vocab_size=320)
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_positions=256), std=0.2)
    processor = Florence2Processor(tokenizer, ImageProcessor(size=(64, 64)), max_positions=256)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    Florence2(model, processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Florence2.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, size in enumerate([(80, 60), (64, 64), (50, 90)]):
        path = folder / f"img{i}.png"
        Image.new("RGB", size, (40 * i, 120, 200)).save(path)
        paths.append(path)
    return paths


TASK_INPUTS = {"text": dict(text="a red circle"), "region": dict(region=[5, 5, 40, 30]), "none": {}}


def assert_same_result(a, b, scores=False):
    """Equal answers; scores equal up to float rounding (batched rows may round differently)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_result(a[key], b[key], scores or key.endswith("scores"))
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_result(x, y, scores)
    elif scores:
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    else:
        assert a == b


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_gives_a_well_formed_result(predictor, images, task):
    spec = TASKS[task]
    result = predictor.predict(images[0], task, max_new_tokens=12, **TASK_INPUTS[spec.input])
    assert list(result) == [task, "sequence_scores"]
    assert list(result["sequence_scores"]) == [task] and 0.0 < result["sequence_scores"][task] <= 1.0
    value = result[task]
    if spec.result_type == "pure_text":
        assert isinstance(value, str)
    else:
        assert isinstance(value, dict)
        lists = [v for v in value.values()]
        assert all(isinstance(v, list) for v in lists)
        for shapes, scores in (("bboxes", "scores"), ("quad_boxes", "scores"), ("polygons", "scores")):
            if shapes in value and "labels" in value:
                assert len(value[scores]) == len(value[shapes])
                assert all(0.0 <= s <= 1.0 for s in value[scores])


def test_batch_equals_one_at_a_time(predictor, images):
    batch = predictor.predict(images, "<OD>", max_new_tokens=15, batch_size=3)
    single = [predictor.predict(p, "<OD>", max_new_tokens=15) for p in images]
    for a, b in zip(batch, single):
        assert_same_result(a, b)


def test_save_and_reload_gives_the_same_predictions(predictor, images, tmp_path):
    predictor.save_pretrained(tmp_path / "again")
    again = Florence2.from_pretrained(tmp_path / "again")
    assert again.predict(images[1], "<CAPTION>", max_new_tokens=10) == predictor.predict(
        images[1], "<CAPTION>", max_new_tokens=10
    )


def test_input_errors(predictor, images):
    with pytest.raises(TaskError, match="unknown task"):
        predictor.predict(images[0], "<NOT_A_TASK>")
    with pytest.raises(TaskError, match="takes no input"):
        predictor.predict(images[0], "<OD>", text="extra")
    with pytest.raises(TaskError, match="only .* fit"):
        predictor.predict(images[0], "<CAPTION_TO_PHRASE_GROUNDING>", text="red circle " * 200)


def test_generate_returns_ids_starting_with_the_decoder_start(predictor, images):
    pv = predictor.processor.image_processor(images[:2])
    ids, mask = predictor.processor.tokenizer(["What does the image describe?", "Hi"])
    out = generate(predictor.model, pv, ids, attention_mask=mask, max_new_tokens=5)
    assert out.shape[0] == 2 and bool((out[:, 0] == 2).all())
    assert out.dtype == torch.long


def test_cli_predict_writes_json_and_annotated_image(checkpoint, images, tmp_path, capsys):
    out_png = tmp_path / "drawn.png"
    code = main(
        [
            "predict",
            str(images[0]),
            "--task",
            "OD",
            "--model",
            str(checkpoint),
            "--json",
            "--draw",
            str(out_png),
            "--max-new-tokens",
            "12",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["image"] == str(images[0]) and record["width"] == 80 and "<OD>" in record["results"]
    assert Image.open(out_png).size == (80, 60)


def test_cli_folder_several_tasks_and_a_bad_image(checkpoint, images, tmp_path, capsys):
    (images[0].parent / "broken.png").write_bytes(b"not an image")
    code = main(
        [
            "predict",
            str(images[0].parent),
            "--task",
            "CAPTION",
            "--task",
            "REGION_PROPOSAL",
            "--model",
            str(checkpoint),
            "--json",
            "--draw",
            str(tmp_path / "drawn"),
            "--max-new-tokens",
            "8",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    tasks = {"<CAPTION>", "<REGION_PROPOSAL>", "sequence_scores"}
    assert len(lines) == 3 and all(set(r["results"]) == tasks for r in lines)
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 6
    (images[0].parent / "broken.png").unlink()


def test_cli_tasks_lists_every_task(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == list(TASKS)


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--task", "NOPE"])
    assert "unknown task" in capsys.readouterr().err


def test_several_tasks_share_one_vision_encoding(predictor, images, monkeypatch):
    calls = []
    original = predictor.model.encode_image
    monkeypatch.setattr(predictor.model, "encode_image", lambda px: calls.append(px.shape[0]) or original(px))
    tasks = ["<CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", "<REGION_TO_CATEGORY>"]
    both = predictor.predict(images[:2], tasks, text="a red circle", region=[5, 5, 40, 30], max_new_tokens=10)
    assert calls == [2]  # one batched vision pass for four tasks
    monkeypatch.undo()
    for image, merged in zip(images[:2], both):
        assert list(merged) == [*tasks, "sequence_scores"]
        for task in tasks:
            spec = TASKS[task]
            alone = predictor.predict(image, task, max_new_tokens=10, **TASK_INPUTS[spec.input])
            assert_same_result(merged[task], alone[task])
            assert merged["sequence_scores"][task] == pytest.approx(alone["sequence_scores"][task], rel=1e-4)


def test_one_text_and_region_per_image_equals_separate_calls(predictor, images):
    texts = ["a red circle", "the text HELLO 42", "a blue square"]
    regions = [[5, 5, 40, 30], None, "<loc_10><loc_20><loc_300><loc_400>"]
    together = predictor.predict(
        images,
        ["<CAPTION_TO_PHRASE_GROUNDING>", "<REGION_TO_CATEGORY>"],
        text=texts,
        region=[r or [1, 1, 20, 20] for r in regions],
        max_new_tokens=10,
    )
    for image, text, region, merged in zip(images, texts, regions, together):
        alone = predictor.predict(image, "<CAPTION_TO_PHRASE_GROUNDING>", text=text, max_new_tokens=10)
        assert_same_result(merged["<CAPTION_TO_PHRASE_GROUNDING>"], alone["<CAPTION_TO_PHRASE_GROUNDING>"])
        alone = predictor.predict(image, "<REGION_TO_CATEGORY>", region=region or [1, 1, 20, 20], max_new_tokens=10)
        assert merged["<REGION_TO_CATEGORY>"] == alone["<REGION_TO_CATEGORY>"]


def test_per_image_inputs_must_match_the_images(predictor, images):
    with pytest.raises(TaskError, match="2 texts for 3 images"):
        predictor.predict(images, "<CAPTION_TO_PHRASE_GROUNDING>", text=["a", "b"])
    with pytest.raises(TaskError, match="needs a list of images"):
        predictor.predict(images[0], "<CAPTION_TO_PHRASE_GROUNDING>", text=["a"])
    with pytest.raises(TaskError, match="1 regions for 3 images"):
        predictor.predict(images, "<REGION_TO_CATEGORY>", region=[[1, 1, 5, 5]])


def test_with_on_error_return_a_bad_image_or_input_fails_alone(predictor, images, tmp_path):
    eps = tmp_path / "page.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    sources = [images[0], eps, images[1], empty, images[2]]
    texts = ["a red circle", "a red circle", "a bad \ud800 text", "a red circle", "a blue square"]
    got = predictor.predict(sources, "<OPEN_VOCABULARY_DETECTION>", text=texts, on_error="return", batch_size=8)
    assert isinstance(got[1], ImageLoadError) and "EPS" in str(got[1])
    assert isinstance(got[2], TaskError) and "not valid Unicode" in str(got[2])
    assert isinstance(got[3], ImageLoadError) and "empty" in str(got[3])
    # the good images are answered from one batch, exactly as a call with only them answers them
    clean = predictor.predict([sources[0], sources[4]], "<OPEN_VOCABULARY_DETECTION>", text=[texts[0], texts[4]])
    assert_same_result([got[0], got[4]], clean)
    with pytest.raises(TaskError, match="not valid Unicode"):  # the default still raises
        predictor.predict(sources[2], "<OPEN_VOCABULARY_DETECTION>", text=texts[2])


def test_a_region_outside_the_image_is_an_error_not_clamped(predictor, images):
    with pytest.raises(RegionError, match="outside the 80x60 image"):
        predictor.predict(images[0], "<REGION_TO_CATEGORY>", region=[0, 0, 81, 10])
    got = predictor.predict(images[:2], "<REGION_TO_CATEGORY>", region=[0, 0, 60, 61], on_error="return")
    assert isinstance(got[0], RegionError) and isinstance(got[1], dict)


def test_prepared_images_give_the_same_results(predictor, images):
    prepared = [predictor.processor.image_processor.prepare(path) for path in images]
    assert prepared[0].size == (80, 60)
    for task in ("<OD>", "<CAPTION>"):
        assert_same_result(predictor.predict(prepared, task), predictor.predict(images, task))


def test_encoded_images_skip_the_vision_tower_with_the_same_results(predictor, images, tmp_path, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    encoded = predictor.encode_images([images[0], broken, images[2]], on_error="return")
    assert isinstance(encoded[1], ImageLoadError) and encoded[0].size == (80, 60)
    calls = []
    real = predictor.model.encode_image
    monkeypatch.setattr(predictor.model, "encode_image", lambda pixels: calls.append(len(pixels)) or real(pixels))
    good = [encoded[0], encoded[2]]
    for task, text in (("<OD>", None), ("<CAPTION_TO_PHRASE_GROUNDING>", "a red circle")):
        assert_same_result(
            predictor.predict(good, task, text=text), predictor.predict([images[0], images[2]], task, text=text)
        )
    mixed = predictor.predict([encoded[0], images[1]], "<OD>")
    assert calls == [2, 2, 1]  # only the images given as files went through the tower
    assert_same_result(mixed, predictor.predict([images[0], images[1]], "<OD>"))
