"""Video tracks: boxes of sampled frames linked by overlap into objects, exported as MOTChallenge
files that tracking tools read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from florence2.errors import Florence2Error
from florence2.label import DatasetStore
from florence2.label.export import ExportError, export_dataset, export_records
from florence2.label.store import Outcome
from florence2.label.tracks import link_tracks

OD = "<OD>"


def moved(box: list[float], dx: float, dy: float = 0.0) -> list[float]:
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


# --- linking ---------------------------------------------------------------------------------------------


def test_two_moving_objects_keep_their_ids_and_a_new_one_gets_the_next():
    car, dog = [0.0, 0.0, 40.0, 20.0], [100.0, 100.0, 130.0, 140.0]
    frames = [
        [(car, "car"), (dog, "dog")],
        [(moved(dog, -5, 3), "dog"), (moved(car, 8), "car")],  # listed the other way round
        [(moved(car, 16), "car"), (moved(dog, -10, 6), "dog"), ([200.0, 0.0, 220.0, 30.0], "car")],
    ]
    assert link_tracks(frames) == [[1, 2], [2, 1], [1, 2, 3]]


def test_a_box_continues_only_a_track_of_its_label():
    box = [10.0, 10.0, 50.0, 50.0]
    assert link_tracks([[(box, "cat")], [(box, "dog")], [(box, "cat")]], max_gap=0) == [[1], [2], [3]]
    assert link_tracks([[(box, "cat")], [(box, "dog")], [(box, "cat")]], max_gap=1) == [[1], [2], [1]]
    assert link_tracks([[(box, "cat")], [(box, "dog")], [(box, "cat")]], max_gap=0, by_label=False) == [[1]] * 3


@pytest.mark.parametrize(("max_gap", "returns_as"), [(0, 2), (1, 2), (2, 1), (5, 1)])
def test_an_object_hidden_for_two_frames_keeps_its_id_when_the_gap_allows(max_gap, returns_as):
    person = [10.0, 10.0, 30.0, 60.0]
    frames = [[(person, "person")], [(moved(person, 2), "person")], [], [], [(moved(person, 5), "person")]]
    assert link_tracks(frames, max_gap=max_gap) == [[1], [1], [], [], [returns_as]]


def test_the_closest_box_continues_a_track_and_the_other_starts_one():
    track = [0.0, 0.0, 100.0, 100.0]
    near, far = [5.0, 0.0, 105.0, 100.0], [40.0, 0.0, 140.0, 100.0]  # IoU 0.90 and 0.43
    assert link_tracks([[(track, "car")], [(far, "car"), (near, "car")]]) == [[1], [2, 1]]
    assert link_tracks([[(track, "car")], [(far, "car"), (near, "car")]], iou=0.95) == [[1], [2, 3]]
    # the track follows its last box: it moves on with the object
    steps = [[(moved(track, 40 * k), "car")] for k in range(6)]  # each step overlaps the last by 0.43
    assert link_tracks(steps) == [[1]] * 6 and link_tracks(steps, iou=0.5) == [[k + 1] for k in range(6)]


def test_two_tracks_competing_for_one_box_the_better_overlap_wins():
    a, b = [0.0, 0.0, 50.0, 50.0], [30.0, 0.0, 80.0, 50.0]
    box = [26.0, 0.0, 76.0, 50.0]  # IoU with b 0.85, with a 0.32
    assert link_tracks([[(a, "x"), (b, "x")], [(box, "x")]]) == [[1, 2], [2]]


@pytest.mark.parametrize("iou", [0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_tracking_iou_is_refused(iou):
    with pytest.raises(Florence2Error, match="tracking IoU"):
        link_tracks([], iou=iou)


@pytest.mark.parametrize("gap", [-1, 1.5, "2", None])
def test_bad_tracking_gap_is_refused(gap):
    with pytest.raises(Florence2Error, match="tracking gap"):
        link_tracks([], max_gap=gap)


# --- the mot export --------------------------------------------------------------------------------------


def frame_record(video: str, frame: int, boxes: list[list[float]], labels: list[str], scores=None) -> dict:
    scores = [0.8] * len(boxes) if scores is None else scores
    return {
        "id": f"{Path(video).parent.name}-{Path(video).stem}-{frame}",
        "source": {"video": video, "frame": frame, "time": frame / 10},
        "width": 320,
        "height": 240,
        "results": {OD: {"bboxes": boxes, "labels": labels, "scores": scores}},
    }


def read_mot(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in path.read_text().splitlines()]


def test_each_video_becomes_a_mot_file_of_linked_boxes_and_tracks_json_says_what_they_are(tmp_path):
    car, dog = [10.0, 20.0, 60.0, 50.0], [200.0, 100.0, 240.0, 180.0]
    records = [
        frame_record("/v/street.mp4", 20, [moved(car, 10)], ["car"], [0.7]),  # the store's order is no time order
        frame_record("/v/street.mp4", 0, [car, dog], ["car", "dog"], [0.9, 0.5]),
        frame_record("/v/street.mp4", 10, [dog, moved(car, 5)], ["dog", "car"], [0.6, None]),
        frame_record("/w/street.mp4", 0, [car], ["car"]),  # another video of the same name
        {**frame_record("/v/photo.mp4", 0, [car], ["car"]), "source": {"path": "/v/photo.jpg"}},
    ]
    summary = export_records(records, tmp_path / "mot", "mot", images="none")
    files = sorted(p.name for p in (tmp_path / "mot").iterdir())
    assert len(files) == 3 and "tracks.json" in files and "street.txt" not in files
    tracks = json.loads((tmp_path / "mot" / "tracks.json").read_text())
    assert (tracks["task"], tracks["iou"], tracks["max_gap"], tracks["labels"]) == (OD, 0.3, 2, ["car", "dog"])
    first, second = tracks["videos"]
    assert (first["video"], second["video"]) == ("/v/street.mp4", "/w/street.mp4")
    assert first["sequence"].startswith("street-") and first["sequence"] != second["sequence"]
    assert read_mot(tmp_path / "mot" / first["file"]) == [
        [1, 1, 10, 20, 50, 30, 0.9, -1, -1, -1],
        [1, 2, 200, 100, 40, 80, 0.5, -1, -1, -1],
        [11, 2, 200, 100, 40, 80, 0.6, -1, -1, -1],
        [11, 1, 15, 20, 50, 30, -1, -1, -1, -1],
        [21, 1, 20, 20, 50, 30, 0.7, -1, -1, -1],
    ]
    assert first["frames"] == 3 and first["tracks"] == [
        {"id": 1, "label": "car", "first_frame": 0, "last_frame": 20, "frames": 3, "mean_score": 0.8},
        {"id": 2, "label": "dog", "first_frame": 0, "last_frame": 10, "frames": 2, "mean_score": 0.55},
    ]
    assert read_mot(tmp_path / "mot" / second["file"]) == [[1, 1, 10, 20, 50, 30, 0.8, -1, -1, -1]]
    assert summary["skipped"] == [{"id": "v-photo-0", "reason": "no video frame"}]
    assert summary["splits"]["train"] == {"images": 4, "regions": 6} and summary["image_files"] == 0


def test_with_any_label_a_renamed_object_stays_one_track_named_by_vote(tmp_path):
    car = [10.0, 10.0, 60.0, 40.0]
    names = ["truck", "car", "car", "truck", "car"]
    records = [frame_record("/v/a.mp4", k, [moved(car, k)], [name]) for k, name in enumerate(names)]
    export_records(records, tmp_path / "by-label", "mot", images="none")
    export_records(records, tmp_path / "any", "mot", images="none", track_by_label=False)
    by_label = json.loads((tmp_path / "by-label" / "tracks.json").read_text())
    assert [(t["label"], t["frames"]) for t in by_label["videos"][0]["tracks"]] == [("truck", 2), ("car", 3)]
    anyway = json.loads((tmp_path / "any" / "tracks.json").read_text())
    assert anyway["by_label"] is False and by_label["by_label"] is True
    assert [(t["label"], t["frames"]) for t in anyway["videos"][0]["tracks"]] == [("car", 5)]
    assert {line[1] for line in read_mot(tmp_path / "any" / "a.txt")} == {1}


def test_mot_settings_and_splits_are_checked(tmp_path):
    records = [frame_record("/v/a.mp4", 0, [[0.0, 0.0, 5.0, 5.0]], ["x"])]
    with pytest.raises(ExportError, match="takes no val split"):
        export_records(records, tmp_path / "a", "mot", images="none", val_fraction=0.2)
    with pytest.raises(ExportError, match="tracking IoU"):
        export_records(records, tmp_path / "b", "mot", images="none", track_iou=0.0)
    with pytest.raises(ExportError, match="tracking gap"):
        export_records(records, tmp_path / "c", "mot", images="none", track_gap=-1)
    with pytest.raises(ExportError, match="no record holds a box task"):
        export_records([{**records[0], "results": {"<CAPTION>": "x"}}], tmp_path / "d", "mot", images="none")
    export_records(records, tmp_path / "e", "mot", images="none", track_iou=0.9, track_gap=0)
    assert json.loads((tmp_path / "e" / "tracks.json").read_text())["iou"] == 0.9


def test_a_video_named_dot_dot_writes_inside_the_export(tmp_path):
    records = [frame_record("/v/...mp4", 0, [[0.0, 0.0, 5.0, 5.0]], ["x"]), frame_record("/v/..mp4", 1, [], [])]
    summary = export_records(records, tmp_path / "out" / "mot", "mot", images="copy")
    assert [s["reason"].split(" (")[0] for s in summary["skipped"]] == ["its image cannot be read"] * 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mot"]
    sequences = [v["sequence"] for v in json.loads((tmp_path / "out" / "mot" / "tracks.json").read_text())["videos"]]
    assert len(set(sequences)) == 2 and all(s.startswith("video-") for s in sequences)


def test_frames_are_written_as_a_mot_sequence_and_identical_frames_are_placed_by_every_name(tmp_path, capsys):
    from tests.test_label_export import write_video

    video = str(write_video(tmp_path / "clip.mp4", frames=6, size=(32, 24)))
    box = [2.0, 2.0, 20.0, 20.0]

    def outcome(frame: int, image_id: str, aliases=()) -> Outcome:
        results = {OD: {"bboxes": [moved(box, frame)], "labels": ["blob"], "scores": [0.5]}}
        source = {"video": video, "frame": frame, "time": frame / 5}
        names = [(f"{video}@{k}", {"video": video, "frame": k, "time": k / 5}, "s") for k in aliases]
        return Outcome(f"{video}@{frame}", source, "s", image_id, 32, 24, results, aliases=names)

    with DatasetStore(tmp_path / "ds", create=True) as store:
        run, _ = store.run_for({"model": "test"})
        store.commit(run, [outcome(0, "a"), outcome(2, "b", aliases=[4])], Counter())  # frame 4 looks like 2
    summary = export_dataset(tmp_path / "ds", tmp_path / "mot", "mot", images="copy")
    lines = read_mot(tmp_path / "mot" / "clip.txt")
    assert [(line[0], line[1], line[2]) for line in lines] == [(1, 1, 2), (3, 1, 4), (5, 1, 4)]
    frames = sorted((tmp_path / "mot" / "clip" / "img1").iterdir())
    assert [p.name for p in frames] == ["000001.png", "000003.png", "000005.png"]
    assert all(Image.open(p).size == (32, 24) for p in frames) and summary["image_files"] == 3
    assert sorted(summary["files"]) == ["clip.txt", "tracks.json"]
    # the command, with stricter tracking: the 2-pixel step no longer continues the track
    from florence2.cli import main

    argv = ["dataset", "export", str(tmp_path / "ds"), "--format", "mot", "--images", "none"]
    assert main([*argv, "--out", str(tmp_path / "strict"), "--track-iou", "0.99", "--track-gap", "0"]) == 0
    assert [line[1] for line in read_mot(tmp_path / "strict" / "clip.txt")] == [1, 2, 2]
    assert main([*argv, "--out", str(tmp_path / "any"), "--track-any-label"]) == 0
    assert json.loads((tmp_path / "any" / "tracks.json").read_text())["by_label"] is False
    assert main([*argv, "--out", str(tmp_path / "bad"), "--track-iou", "2"]) != 0
    assert "tracking IoU must be in (0, 1], got 2.0" in capsys.readouterr().err
