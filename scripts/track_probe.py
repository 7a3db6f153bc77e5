"""Do the tracks of ``florence2 dataset export --format mot`` follow the objects? Synthetic clips with
known identities, labeled by a model, scored with CLEAR-MOT counts.

    python scripts/track_probe.py [--model FOLDER] [--clips 10] [--frames 20] [--speed 1.0]
        [--seed 4242] [--out runs/track-probe]

Each clip is one scene of the synthetic world (128 px) seen by a camera that pans ``--speed`` pixels
a frame in a random direction (the edge it uncovers repeats the border), written as an MP4 at 5 frames
a second (PyAV), labeled frame by frame with ``--preset detect`` (the embedded model without
``--model``) and exported with ``--format mot`` under several tracking settings. Scoring, per frame:
a box matches a true object of its category at IoU >= 0.5, greedily, highest IoU first; an identity
switch is a matched object whose track differs from the one it last matched. MOTA = 1 - (misses +
false boxes + switches) / true boxes; "tracks/object": the distinct tracks that matched each object.
The "no linking" row gives every box a track of its own, for comparison; "any label" links boxes
whatever their labels and names each track by its boxes' most common label (a box matches an object
when its track's label is the object's category).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from florence2.data.synthetic import WorldConfig, generate_scene
from florence2.label import label
from florence2.label.export import export_dataset
from florence2.scoring import box_iou

# (track IoU, gap, by label); the export's default is 0.3, 2, by label
SETTINGS = [(0.5, 0, True), (0.3, 2, True), (0.1, 4, True), (0.3, 2, False)]


def make_clip(path: Path, rng: np.random.Generator, frames: int, speed: float) -> dict[int, list[tuple]]:
    """Write one panning clip; returns per frame its true ``(object id, category, box)``."""
    import av

    image, record = generate_scene(rng, WorldConfig(image_size=128))
    pixels = np.asarray(image.convert("RGB"))
    size, margin = pixels.shape[0], int(np.ceil(speed * frames)) + 1
    padded = np.pad(pixels, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    angle = rng.uniform(0, 2 * np.pi)
    truth = {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = size, size, "yuv420p", 4_000_000
        for k in range(frames):
            dx, dy = round(k * speed * np.cos(angle)), round(k * speed * np.sin(angle))
            frame = padded[margin - dy : margin - dy + size, margin - dx : margin - dx + size]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            truth[k] = []
            for obj in record["objects"]:
                x0, y0, x1, y1 = obj["bbox"]
                box = [min(max(v, 0.0), float(size)) for v in (x0 + dx, y0 + dy, x1 + dx, y1 + dy)]
                if (box[2] - box[0]) * (box[3] - box[1]) >= 0.5 * (x1 - x0) * (y1 - y0):  # mostly in view
                    truth[k].append((obj["id"], obj["category"], box))
        container.mux(stream.encode())
    return truth


def score(truth: dict[int, list[tuple]], lines: list[list[float]], labels: dict[int, str]) -> dict[str, float]:
    """CLEAR-MOT counts of one clip's MOT lines against its true objects."""
    predicted = defaultdict(list)
    for line in lines:
        predicted[int(line[0]) - 1].append((int(line[1]), line[2:6]))
    counts = {"objects": 0, "misses": 0, "false": 0, "switches": 0}
    last, seen = {}, defaultdict(set)
    for k, objects in sorted(truth.items()):
        boxes = predicted.get(k, [])
        counts["objects"] += len(objects)
        pairs = []
        if objects and boxes:
            xyxy = [[x, y, x + w, y + h] for _, (x, y, w, h) in boxes]
            overlap = box_iou([box for _, _, box in objects], xyxy)
            pairs = sorted(
                (-overlap[o, b], o, b)
                for o, (_, category, _) in enumerate(objects)
                for b, (track, _) in enumerate(boxes)
                if overlap[o, b] >= 0.5 and labels[track] == category
            )
        used_o, used_b = set(), set()
        for _, o, b in pairs:
            if o in used_o or b in used_b:
                continue
            used_o.add(o)
            used_b.add(b)
            identity, track = objects[o][0], boxes[b][0]
            counts["switches"] += identity in last and last[identity] != track
            last[identity] = track
            seen[identity].add(track)
        counts["misses"] += len(objects) - len(used_o)
        counts["false"] += len(boxes) - len(used_b)
    counts["tracks_per_object"] = sum(len(t) for t in seen.values()) / max(1, len(seen))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a checkpoint folder (default: the embedded model)")
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--speed", type=float, default=1.0, help="camera pan, pixels a frame")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--out", help="keep the clips, dataset and exports here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        out = Path(args.out or temporary)
        (out / "clips").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        truth = {}
        for c in range(args.clips):
            path = (out / "clips" / f"clip{c:03d}.mp4").absolute()
            truth[str(path)] = make_clip(path, rng, args.frames, args.speed)
        summary = label(out / "clips", out / "dataset", model=args.model, preset="detect", video_stride=1)
        seconds, failed = summary.seconds, summary.failed
        print(f"labeled {summary.labeled} frames of {args.clips} clips in {seconds:.1f} s ({failed} failed)")
        print("| tracking | MOTA | misses | false boxes | switches | tracks/object |\n|---|---:|---:|---:|---:|---:|")
        rows = {}
        for iou, gap, by_label in SETTINGS:
            folder = out / f"mot-{iou}-{gap}-{'label' if by_label else 'any'}"
            options = {"track_iou": iou, "track_gap": gap, "track_by_label": by_label}
            export_dataset(out / "dataset", folder, "mot", images="none", **options)
            document = json.loads((folder / "tracks.json").read_text())
            per_frame, linked = defaultdict(float), defaultdict(float)
            for video in document["videos"]:
                text = (folder / video["file"]).read_text()
                lines = [[float(v) for v in line.split(",")] for line in text.splitlines()]
                labels = {t["id"]: t["label"] for t in video["tracks"]}
                for key, value in score(truth[video["video"]], lines, labels).items():
                    linked[key] += value
                if not by_label:
                    continue
                # the same boxes (each labeled as found), every one a track of its own
                alone = [[line[0], n + 1, *line[2:]] for n, line in enumerate(lines)]
                alone_labels = {n + 1: labels[int(line[1])] for n, line in enumerate(lines)}
                for key, value in score(truth[video["video"]], alone, alone_labels).items():
                    per_frame[key] += value
            rows.setdefault("no linking (a track a box)", per_frame)
            rows[f"iou {iou}, gap {gap}" + ("" if by_label else ", any label")] = linked
        for name, total in rows.items():
            mota = 1 - (total["misses"] + total["false"] + total["switches"]) / total["objects"]
            print(
                f"| {name} | {mota:.3f} | {int(total['misses'])} | {int(total['false'])} | "
                f"{int(total['switches'])} | {total['tracks_per_object'] / args.clips:.2f} |"
            )
        print(f"{int(total['objects'])} true boxes; speed {args.speed} px a frame; seed {args.seed}")


if __name__ == "__main__":
    main()
