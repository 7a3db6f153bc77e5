"""The ray engine on a local Ray (2 CPUs): the same records as the local engine, and exactly once
after the driver is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine needs the 'ray' extra")

from florence2.data.synthetic import write_split  # noqa: E402
from florence2.label import DatasetStore  # noqa: E402
from florence2.label.engine import LabelSummary  # noqa: E402
from florence2.label.ray_engine import _outcome_columns, record_batch  # noqa: E402
from florence2.label.store import Outcome  # noqa: E402
from tests.test_label import assert_same_labels, committed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """60 scenes (one of them twice under another name) and four broken files."""
    folder = tmp_path_factory.mktemp("ray-sources")
    write_split(folder, 60, seed=41)
    (folder / "annotations.jsonl").unlink()
    (folder / "world.json").unlink()
    shutil.copy(folder / "000007.png", folder / "copy-of-7.png")
    (folder / "broken-text.png").write_text("no image here")
    (folder / "broken-empty.png").write_bytes(b"")
    (folder / "broken-truncated.png").write_bytes((folder / "000001.png").read_bytes()[:300])
    (folder / "broken-postscript.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    return folder


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "florence2.cli", *args], capture_output=True, text=True, env=env, timeout=600, **kwargs
    )


def contents(folder: Path) -> tuple[dict, dict]:
    """Records by image id (every name it was found under, size, results) and failures by source
    name: what a run made, without its times and run id."""
    with DatasetStore(folder) as store:
        done = {
            r["id"]: (
                sorted(Path(s["path"]).name for s in store.sources_of(r["id"])),
                r["width"],
                r["height"],
                r["results"],
            )
            for r in store.records()
        }
        failed = {Path(r["source"]["path"]).name: (r["id"], r["error"]) for r in store.records(failed=True)}
    return done, failed


def test_the_ray_and_local_engines_make_the_same_records(sources, tmp_path):
    local = cli("label", str(sources), "--out", str(tmp_path / "local"), "--preset", "detect", "--json")
    on_ray = cli(
        "label", str(sources), "--out", str(tmp_path / "ray"), "--preset", "detect", "--json",
        "--engine", "ray", "--workers", "2", "--batch-size", "8",
    )  # fmt: skip
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr[-2000:]  # the broken files
    a, b = json.loads(local.stdout), json.loads(on_ray.stdout)
    assert (a["labeled"], a["failed"], a["duplicates"]) == (b["labeled"], b["failed"], b["duplicates"]) == (60, 4, 1)
    (local_done, local_failed), (ray_done, ray_failed) = contents(tmp_path / "local"), contents(tmp_path / "ray")
    assert local_failed == ray_failed and local_done.keys() == ray_done.keys()
    for image_id, (names, width, height, results) in local_done.items():
        assert (names, width, height) == ray_done[image_id][:3]
        # another batch composition may round coordinates and scores differently in the last bits
        assert_same_labels(results, ray_done[image_id][3])
    with DatasetStore(tmp_path / "ray") as store:
        assert store.runs()[0]["settings"] == DatasetStore(tmp_path / "local").runs()[0]["settings"]


def test_one_image_under_two_names_in_one_block_of_two_workers_batches_is_labeled_once(tmp_path):
    """Ray may hand the driver two workers' batches as one block: the same image labeled under two
    names by two workers then arrives together, and is recorded once with both names."""

    def labeled(name: str) -> Outcome:
        source = {"path": f"/photos/{name}"}
        results = {"<OD>": {"bboxes": [[1.0, 2.0, 3.0, 4.0]], "labels": ["cat"], "scores": [0.5]}}
        return Outcome(f"/photos/{name}", source, "1", "same-bytes", 10, 10, results, seconds=0.1)

    first = _outcome_columns([labeled("a.png")], Counter())
    second = _outcome_columns([labeled("b.png"), labeled("c.png")], Counter({("<OD>", "small"): 2}))
    block = {name: np.concatenate([first[name], second[name]]) for name in first}
    summary = LabelSummary(dataset=str(tmp_path), run=1, resumed=False, total=3)
    with DatasetStore(tmp_path / "ds", create=True) as store:
        run, _ = store.run_for({"model": "test"})
        outcomes, drops = record_batch(store, run, block, summary, retry_failed=False)
        assert (summary.labeled, summary.duplicates, summary.failed) == (1, 2, 0)
        assert [o.alias_only for o in outcomes] == [False, True, True] and drops == {("<OD>", "small"): 2}
        assert store.counts(run) == {"images": 1, "failed": 0}
        names = [s["path"] for s in store.sources_of("same-bytes")]
        assert names == ["/photos/a.png", "/photos/b.png", "/photos/c.png"]
        # the next block meets it as labeled
        again = _outcome_columns([labeled("d.png")], Counter())
        record_batch(store, run, again, summary, retry_failed=False)
        assert (summary.labeled, summary.duplicates) == (1, 3) and store.counts(run)["images"] == 1


def test_killing_the_ray_driver_then_the_same_command_labels_every_image_once(sources, tmp_path):
    out = tmp_path / "ds"
    command = ["label", str(sources), "--out", str(out), "--preset", "detect", "--engine", "ray", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "florence2.cli", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the driver and the local Ray it started, killed together
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and committed(out) < 12:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < committed(out) < 65
    result = cli(*command, "--json")
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["skipped"] > 0 and summary["labeled"] < 60
    with DatasetStore(out) as store:
        records = list(store.records())
        assert len(records) == len({r["id"] for r in records}) == 60
        assert store.counts() == {"images": 60, "failed": 4}
        assert store.db.execute("SELECT count(*) FROM records").fetchone()[0] == 64


def test_tiles_on_ray_label_as_they_do_locally(tmp_path):
    from florence2.data.synthetic import WorldConfig, generate_mosaic

    rng = np.random.default_rng(5)
    for k in range(3):  # two 2 x 2 mosaics and a scene: auto gives them 4, 4 and no crops
        generate_mosaic(rng, 2 if k < 2 else 1, WorldConfig(image_size=128))[0].save(tmp_path / f"{k}.png")
    args = ["label", str(tmp_path), "--preset", "detect", "--tiles", "auto", "--json", "--batch-size", "2"]
    local = cli(*args, "--out", str(tmp_path / "local"))
    on_ray = cli(*args, "--out", str(tmp_path / "ray"), "--engine", "ray")
    assert local.returncode == on_ray.returncode == 0, on_ray.stderr[-2000:]
    assert json.loads(local.stdout)["labeled"] == json.loads(on_ray.stdout)["labeled"] == 3
    (local_done, _), (ray_done, _) = contents(tmp_path / "local"), contents(tmp_path / "ray")
    assert local_done.keys() == ray_done.keys()
    for image_id, (names, width, height, results) in local_done.items():
        assert (names, width, height) == ray_done[image_id][:3]
        assert_same_labels(results, ray_done[image_id][3])
    assert sum(len(done[3]["<OD>"]["bboxes"]) for done in local_done.values()) > 3 * 4  # the crops' boxes
    with DatasetStore(tmp_path / "ray") as store:
        assert store.runs()[0]["settings"]["tiles"] == "auto"
