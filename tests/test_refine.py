"""The refinement loop on the embedded model, with tiny settings: rounds are runs of the dataset,
labels are measured against ground truth the loop never reads, an interrupted loop continues."""

from __future__ import annotations

import json

import pytest

from florence2.cli import main
from florence2.data.synthetic import write_split
from florence2.label import DatasetStore
from florence2.refine import RefineConfig, precision_recall, refine


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine-scenes")
    write_split(folder, 12, seed=61)
    return folder


def test_precision_and_recall_match_boxes_of_the_right_category_once():
    truth = {"a": [{"category": "car", "bbox": [0, 0, 10, 10]}, {"category": "bus", "bbox": [20, 20, 30, 30]}]}
    found = {"a": [([0, 0, 10, 10], "car"), ([1, 1, 10, 10], "car"), ([20, 20, 30, 30], "car")]}
    assert precision_recall(found, truth) == {"precision": 0.3333, "recall": 0.5, "f1": 0.4, "boxes": 3}


def test_two_rounds_label_keep_fine_tune_and_measure(scenes, tmp_path):
    config = RefineConfig(
        out=str(tmp_path / "run"),
        images=(str(scenes),),
        rounds=1,
        steps=2,
        batch_size=4,
        eval_images=6,
        eval_tasks=("<OD>",),
        quality_images=12,
    )
    rounds = refine(config)
    assert [r["round"] for r in rounds] == [0, 1]
    first = rounds[1]
    assert first["labeled_images"] == 12 and first["threshold"] > 0
    assert set(first["kept"]) == set(first["plain"]) == {"precision", "recall", "f1", "boxes"}
    assert first["kept"]["boxes"] == first["kept_regions"]  # the kept labels are what was trained on
    assert "od_mAP50" in rounds[0]["eval"] and "od_mAP50" in first["eval"]
    assert (tmp_path / "run" / "report.png").is_file()
    # one more round continues from round 1's model; round 1 is not done again
    more = refine(RefineConfig(**{**config.__dict__, "rounds": 2}))
    assert [r["round"] for r in more] == [0, 1, 2] and more[1] == first
    assert more[2]["model"].endswith("round-2/train/checkpoint-last")
    with DatasetStore(tmp_path / "run" / "dataset") as store:
        runs = store.runs()
        assert len(runs) == 2 and runs[0]["settings"]["model"] != runs[1]["settings"]["model"]
        assert store.counts(2) == {"images": 12, "failed": 0}
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["rounds"]) == 3


def test_the_command_refuses_a_run_folder_with_other_settings(scenes, tmp_path, capsys):
    argv = ["engine", "refine", "--images", str(scenes), "--out", str(tmp_path / "run"), "--rounds", "1"]
    argv += ["--steps", "1", "--batch-size", "2", "--tta", "none"]
    assert main(argv) == 0
    assert main([*argv[:-2], "--threshold", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_keep_images_keeps_an_image_s_boxes_only_when_all_reach_the_threshold(scenes, tmp_path):
    config = RefineConfig(
        out=str(tmp_path / "run"),
        images=(str(scenes),),
        rounds=1,
        steps=1,
        batch_size=2,
        keep="images",
        quality_images=12,
    )
    first = refine(config)[1]
    threshold = first["threshold"]
    with DatasetStore(tmp_path / "run" / "dataset") as store:
        fused = {r["id"]: r["results"]["<OD>"]["scores"] for r in store.records(1)}
    agreed = {i for i, scores in fused.items() if scores and min(scores) >= threshold}
    lines = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "labels" / "labels.jsonl").open()]
    with_boxes = {line["id"] for line in lines if "<OD>" in line["results"]}
    assert with_boxes == agreed  # all of an image's boxes, or none of them
    assert first["dropped_images"] == 12 - len(agreed) > 0
    assert first["kept_regions"] == sum(len(fused[i]) for i in agreed) == first["kept"]["boxes"]
    with pytest.raises(ValueError, match="keep must be"):
        RefineConfig(out="x", images=("y",), keep="boxes")


def test_a_round_killed_while_writing_its_labels_writes_them_again(scenes, tmp_path, monkeypatch):
    import florence2.refine as refine_module

    config = RefineConfig(
        out=str(tmp_path / "run"), images=(str(scenes),), rounds=1, steps=1, batch_size=2, keep="images"
    )

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the export, before the doubtful images' boxes go

    monkeypatch.setattr(refine_module, "_drop_boxes", killed)
    with pytest.raises(KeyboardInterrupt):
        refine(config)
    monkeypatch.undo()
    first = refine(config)[1]
    lines = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "labels" / "labels.jsonl").open()]
    boxes = [s for line in lines for s in line["results"].get("<OD>", {}).get("scores", [])]
    assert boxes and min(boxes) >= first["threshold"] and first["dropped_images"] > 0
