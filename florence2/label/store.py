"""The dataset store: one folder per dataset, one SQLite database in it (``dataset.sqlite``).

SQLite, because it is in Python's standard library, is one file that any tool can open, and gives
what labeling needs: a transaction per batch (``kill -9`` at any moment loses at most the batch in
flight, never half of one), full-text search (FTS5) and plain SQL for statistics. It runs in WAL
mode with ``synchronous=FULL``: a committed batch survives a crash of the process and of the machine.

Tables:

* ``runs``: one per labeling configuration (model and its fingerprint, tasks, decoding, filters):
  its settings as JSON, and their signature. Labeling again with the same settings continues the
  same run; other settings need ``new_run``.
* ``images``: one row per distinct image, keyed by its content id (SHA-256 of the file's bytes, or
  of a video frame's pixels), with its size.
* ``sources``: every name an image was found under (a path, an archive member, a video frame) ->
  its image id and the file's stamp (size and modification time), so a rerun skips finished
  sources without reading them. The same image under two names is labeled once.
* ``records``: per run and image: ``done`` with the results (official format, scores, JSON) or
  ``failed`` with the error; the source it was labeled from, seconds, time.
* ``regions``: every box, quad and polygon of every record (task, label, score, bounding box), for
  statistics and for showing the regions a search matched.
* ``texts``: FTS5 index of captions, region labels and OCR text.
* ``drops``: regions dropped by the filters, per run, task and reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from florence2.errors import Florence2Error
from florence2.scoring import bounding_box, region_groups

DATABASE_NAME = "dataset.sqlite"
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    signature TEXT NOT NULL,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    width INTEGER,
    height INTEGER
);
CREATE TABLE IF NOT EXISTS sources (
    key TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    source TEXT NOT NULL,
    stamp TEXT
);
CREATE INDEX IF NOT EXISTS sources_image ON sources (image_id);
CREATE TABLE IF NOT EXISTS records (
    run INTEGER NOT NULL REFERENCES runs (id),
    image_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    source_key TEXT NOT NULL,
    results TEXT,
    error TEXT,
    seconds REAL,
    created REAL NOT NULL,
    PRIMARY KEY (run, image_id)
);
CREATE TABLE IF NOT EXISTS regions (
    run INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    task TEXT NOT NULL,
    label TEXT NOT NULL,
    score REAL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL
);
CREATE INDEX IF NOT EXISTS regions_image ON regions (run, image_id);
CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5 (
    text, run UNINDEXED, image_id UNINDEXED, task UNINDEXED, kind UNINDEXED, tokenize = 'porter unicode61'
);
CREATE TABLE IF NOT EXISTS drops (
    run INTEGER NOT NULL,
    task TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run, task, reason)
);
"""

# tasks whose answer is one text, and what kind of text it is for search
_TEXT_KINDS = {"<OCR>": "ocr", "<REGION_TO_OCR>": "ocr"}
_OCR_REGION_TASKS = ("<OCR_WITH_REGION>",)


class DatasetError(Florence2Error):
    """A dataset folder that cannot be used as asked (missing, another format, other settings)."""


@dataclass
class Outcome:
    """One labeled (or failed) image, ready to be written."""

    key: str  # the source's key
    source: dict[str, Any]
    stamp: str | None
    image_id: str
    width: int | None = None
    height: int | None = None
    results: dict[str, Any] | None = None  # None: failed
    error: str | None = None
    seconds: float = 0.0
    aliases: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)  # other names, same image
    alias_only: bool = False  # the run has this image already: only record these names


def content_id(data: bytes) -> str:
    """The id of an image: SHA-256 of its bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


def signature(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    """NaN and infinities (a score of a degenerate answer) become None, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class DatasetStore:
    """A dataset folder's database. Use as a context manager, or call ``close``."""

    def __init__(self, folder: str | os.PathLike, *, create: bool = False) -> None:
        self.folder = Path(folder)
        path = self.folder / DATABASE_NAME
        if not path.is_file():
            if not create:
                raise DatasetError(f"{self.folder} is not a dataset (no {DATABASE_NAME}); label into it first")
            if self.folder.exists() and not self.folder.is_dir():
                raise DatasetError(f"{self.folder} exists and is not a folder")
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self.db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as error:
            raise DatasetError(f"{path} is not a dataset database: {error}") from error

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DatasetError(f"{self.folder}: dataset schema {row[0]}, this version reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> DatasetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, created, signature, settings FROM runs ORDER BY id").fetchall()
        return [{"id": i, "created": c, "signature": s, "settings": json.loads(st)} for i, c, s, st in rows]

    def run_for(self, settings: Mapping[str, Any], *, new_run: bool = False) -> tuple[int, bool]:
        """The run to label into with these settings: the run that has exactly them (resumed), else
        a new one when the dataset has none yet or ``new_run``; returns ``(run id, resumed)``.

        Raises:
            DatasetError: the dataset was labeled with other settings and ``new_run`` is not set;
                the message names the settings that differ.
        """
        wanted = signature(settings)
        runs = self.runs()
        for run in runs:
            if run["signature"] == wanted:
                return run["id"], True
        if runs and not new_run:
            latest = runs[-1]["settings"]
            differ = sorted(k for k in set(latest) | set(settings) if latest.get(k) != settings.get(k))
            raise DatasetError(
                f"{self.folder} was labeled with other settings (run {runs[-1]['id']}; different: "
                f"{', '.join(differ)}); pass --new-run to label it again as a new run"
            )
        cursor = self.db.execute(
            "INSERT INTO runs (created, signature, settings) VALUES (?, ?, ?)", (time.time(), wanted, _json(settings))
        )
        return int(cursor.lastrowid), False

    def latest_run(self) -> int | None:
        row = self.db.execute("SELECT max(id) FROM runs").fetchone()
        return row[0]

    def _run(self, run: int | None) -> int:
        run = self.latest_run() if run is None else run
        if run is None or not self.db.execute("SELECT 1 FROM runs WHERE id = ?", (run,)).fetchone():
            raise DatasetError(f"{self.folder} has no run {run}" if run is not None else f"{self.folder} has no runs")
        return run

    # --- labeling -----------------------------------------------------------------------------------

    def finished(self, run: int, items: Sequence[tuple[str, str | None]], retry_failed: bool = False) -> set[str]:
        """The keys among ``items`` (key, stamp) whose image this run has already labeled (or failed,
        unless ``retry_failed``), judged by the recorded stamp: a file changed since is not finished."""
        statuses = ("done",) if retry_failed else ("done", "failed")
        done = set()
        for start in range(0, len(items), 500):
            chunk = dict(items[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT s.key, s.stamp FROM sources s JOIN records r ON r.image_id = s.image_id AND r.run = ? "
                f"WHERE s.key IN ({marks}) AND r.status IN ({','.join('?' * len(statuses))})",
                (run, *chunk, *statuses),
            ).fetchall()
            done.update(key for key, stamp in rows if stamp == chunk[key])
        return done

    def labeled_images(self, run: int, image_ids: Iterable[str], retry_failed: bool = False) -> set[str]:
        """The ids among ``image_ids`` that this run has a record of (done; failed too unless ``retry_failed``)."""
        ids = list(dict.fromkeys(image_ids))
        statuses = ("done",) if retry_failed else ("done", "failed")
        found = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.db.execute(
                f"SELECT image_id FROM records WHERE run = ? AND image_id IN ({','.join('?' * len(chunk))}) "
                f"AND status IN ({','.join('?' * len(statuses))})",
                (run, *chunk, *statuses),
            ).fetchall()
            found.update(row[0] for row in rows)
        return found

    def commit(self, run: int, outcomes: Sequence[Outcome], drops: Mapping[tuple[str, str], int]) -> None:
        """Write one batch in one transaction: its records, regions, texts, source names and drop
        counts. A record the run already has as done is left as it is (the same image again); a
        failed one is replaced."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for outcome in outcomes:
                self._write(run, outcome)
            for (task, reason), count in drops.items():
                db.execute(
                    "INSERT INTO drops VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run, task, reason) DO UPDATE SET count = count + excluded.count",
                    (run, task, reason, count),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write(self, run: int, o: Outcome) -> None:
        db = self.db
        for key, source, stamp in [(o.key, o.source, o.stamp), *o.aliases]:
            db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?)", (key, o.image_id, _json(source), stamp))
        if o.alias_only:
            return
        previous = db.execute("SELECT status FROM records WHERE run = ? AND image_id = ?", (run, o.image_id)).fetchone()
        if previous is not None and previous[0] == "done":
            return
        if previous is not None:
            self._forget(run, o.image_id)
        if o.width is not None:
            db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (o.image_id, o.width, o.height))
        status = "failed" if o.results is None else "done"
        results = None if o.results is None else _json(_finite(o.results))
        db.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run, o.image_id, status, o.key, results, o.error, o.seconds, time.time()),
        )
        if o.results is not None:
            self._index(run, o.image_id, _finite(o.results))

    def _forget(self, run: int, image_id: str) -> None:
        for table in ("records", "regions", "texts"):
            self.db.execute(f"DELETE FROM {table} WHERE run = ? AND image_id = ?", (run, image_id))

    def _index(self, run: int, image_id: str, results: Mapping[str, Any]) -> None:
        regions, texts = [], []
        for task, result in results.items():
            if task.startswith("<") and isinstance(result, str):
                if result.strip():
                    texts.append((result, task, _TEXT_KINDS.get(task, "caption")))
                continue
            for keys in region_groups(result):
                kind = "ocr" if task in _OCR_REGION_TASKS else "label"
                for shape, label, score in zip(*(result[key] for key in keys)):
                    regions.append((run, image_id, task, label or "", score, *bounding_box(shape)))
                    if label and label.strip():
                        texts.append((label, task, kind))
        self.db.executemany("INSERT INTO regions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", regions)
        self.db.executemany(
            "INSERT INTO texts (text, run, image_id, task, kind) VALUES (?, ?, ?, ?, ?)",
            [(text, run, image_id, task, kind) for text, task, kind in texts],
        )

    # --- reading ------------------------------------------------------------------------------------

    def records(self, run: int | None = None, *, failed: bool = False) -> Iterator[dict[str, Any]]:
        """The records of ``run`` (default: the latest), in labeling order: done ones, or with
        ``failed`` the failed ones (``error`` instead of ``results``)."""
        run = self._run(run)
        rows = self.db.execute(
            "SELECT r.image_id, r.source_key, s.source, i.width, i.height, r.results, r.error, r.created, r.seconds "
            "FROM records r LEFT JOIN sources s ON s.key = r.source_key LEFT JOIN images i ON i.id = r.image_id "
            "WHERE r.run = ? AND r.status = ? ORDER BY r.rowid",
            (run, "failed" if failed else "done"),
        )
        for image_id, key, source, width, height, results, error, created, seconds in rows:
            record = {
                "id": image_id,
                "source": json.loads(source) if source else {"key": key},
                "width": width,
                "height": height,
                "run": run,
                "labeled_at": created,
                "seconds": seconds,
            }
            if failed:
                record["error"] = error
            else:
                record["results"] = json.loads(results)
            yield record

    def sources_of(self, image_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT source FROM sources WHERE image_id = ? ORDER BY key", (image_id,))
        return [json.loads(row[0]) for row in rows]

    def counts(self, run: int | None = None) -> dict[str, int]:
        run = self._run(run)
        rows = self.db.execute("SELECT status, count(*) FROM records WHERE run = ? GROUP BY status", (run,))
        found = dict(rows.fetchall())
        return {"images": found.get("done", 0), "failed": found.get("failed", 0)}

    def stats(self, run: int | None = None, bins: int = 10) -> dict[str, Any]:
        """Images labeled and failed, regions per task and label, a score histogram, drops by
        reason and the runs."""
        run = self._run(run)
        db = self.db
        regions: dict[str, dict[str, int]] = {}
        for task, label, count in db.execute(
            "SELECT task, label, count(*) FROM regions WHERE run = ? GROUP BY task, label ORDER BY task, 3 DESC",
            (run,),
        ):
            regions.setdefault(task, {})[label] = count
        histogram = [0] * bins
        for (score,) in db.execute("SELECT score FROM regions WHERE run = ? AND score IS NOT NULL", (run,)):
            histogram[min(bins - 1, max(0, int(score * bins)))] += 1
        drops: dict[str, dict[str, int]] = {}
        for task, reason, count in db.execute(
            "SELECT task, reason, count FROM drops WHERE run = ? ORDER BY task, reason", (run,)
        ):
            drops.setdefault(task, {})[reason] = count
        counts = self.counts(run)
        return {
            "dataset": str(self.folder),
            "run": run,
            **counts,
            "sources": db.execute(
                "SELECT count(*) FROM sources s JOIN records r ON r.image_id = s.image_id AND r.run = ?", (run,)
            ).fetchone()[0],
            "regions": {task: {"total": sum(labels.values()), "labels": labels} for task, labels in regions.items()},
            "score_histogram": {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": n for i, n in enumerate(histogram)},
            "dropped": drops,
            "runs": [
                {"id": r["id"], "created": r["created"], "settings": r["settings"], **self.counts(r["id"])}
                for r in self.runs()
            ],
        }

    def search(self, query: str, run: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Images whose captions, region labels or OCR text match the words of ``query`` (stemmed),
        best first: images with one text holding every word, then images holding more of the words
        across their texts, then by BM25 summed over the matching texts. Each hit has the texts
        and the regions that matched."""
        run = self._run(run)
        words = list(dict.fromkeys(re.findall(r"\w+", query.lower())))
        if not words:
            return []
        hits: dict[str, dict[str, Any]] = {}
        seen: set[int] = set()

        def collect(match: str, word: str | None) -> None:
            rows = self.db.execute(
                "SELECT rowid, image_id, task, kind, text, bm25(texts) FROM texts WHERE texts MATCH ? AND run = ?",
                (match, run),
            )
            for rowid, image_id, task, kind, text, rank in rows:
                hit = hits.setdefault(image_id, {"id": image_id, "score": 0.0, "matches": [], "_words": set()})
                if word is None:
                    hit["_whole"] = True
                else:
                    hit["_words"].add(word)
                if rowid not in seen:
                    seen.add(rowid)
                    hit["score"] += -rank  # bm25 is lower for better matches
                    hit["matches"].append({"task": task, "kind": kind, "text": text})

        collect(" ".join(f'"{word}"' for word in words), None)
        for word in words:
            collect(f'"{word}"', word)
        ranked = sorted(hits.values(), key=lambda h: (not h.get("_whole"), -len(h["_words"]), -h["score"], h["id"]))[
            :limit
        ]
        for hit in ranked:
            hit.pop("_words")
            hit.pop("_whole", None)
            hit["score"] = round(hit["score"], 4)
            record = self.db.execute(
                "SELECT s.source, i.width, i.height FROM records r JOIN sources s ON s.key = r.source_key "
                "LEFT JOIN images i ON i.id = r.image_id WHERE r.run = ? AND r.image_id = ?",
                (run, hit["id"]),
            ).fetchone()
            hit["source"], hit["width"], hit["height"] = json.loads(record[0]), record[1], record[2]
            labels = {m["text"] for m in hit["matches"] if m["kind"] in ("label", "ocr")}
            hit["regions"] = [
                {"task": task, "label": label, "score": score, "bbox": [x0, y0, x1, y1]}
                for task, label, score, x0, y0, x1, y1 in self.db.execute(
                    "SELECT task, label, score, x0, y0, x1, y1 FROM regions WHERE run = ? AND image_id = ?",
                    (run, hit["id"]),
                )
                if label in labels
            ]
        return ranked
