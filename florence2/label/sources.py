"""Where the labeling engine's images come from: folders, lists, globs, tar shards and videos.

:func:`iter_sources` turns source specs into :class:`SourceItem` s, one per image, each with a stable
key, a JSON-able ``source`` record, a cheap change ``stamp`` and a ``read`` that gives its data.
:func:`count_sources` counts them without decoding any image, and :func:`open_source` reads a
recorded ``source`` again later.

How a spec is taken (relative paths against the current folder, every spec checked to exist, or as
a glob to match, before anything is yielded; each path is taken once, the first time it comes):

- an existing file named like a list (:data:`LIST_SUFFIXES`): one path per line, relative lines
  against the list file's folder, blank lines and lines starting with ``#`` skipped; each line is
  taken by these rules, except that a line naming nothing (no such path, no glob match) is still
  one item, as a file, whose read fails with "does not exist";
- an existing file named like a tar archive (:data:`ARCHIVE_SUFFIXES`, a WebDataset-style shard):
  its regular-file members named like images (:data:`florence2.sources.IMAGE_SUFFIXES`), in archive
  order; other members (json, txt, cls) are left out, and so is a member name seen before;
- an existing file named like a video (:data:`VIDEO_SUFFIXES`): its sampled frames (below);
- any other existing file: one image item, whatever its name (a file that is no image fails when
  it is decoded, and is recorded as failed);
- an existing folder: its image files (as :func:`florence2.sources.find_images` finds them), tar
  shards and videos, recursively, sorted by path; list files in a folder are not read;
- a spec with ``*``, ``?`` or ``[`` that is no existing path: ``glob.glob(spec, recursive=True)``,
  sorted, each match taken by these rules; no match is a :class:`SourceError`;
- anything else (no such path) is a :class:`SourceError`.

Videos are decoded with PyAV (``pip install 'florence2[video]'``). ``video_stride=N`` takes decoded
frames 0, N, 2N, ...; ``video_fps=F`` takes the first frame at or after each multiple of 1/F
seconds, by presentation time; neither takes one frame a second; both is a :class:`SourceError`.

A tar, video or list file that cannot be read does not stop a run: it becomes one item, keyed by its
path, whose ``read`` raises :class:`florence2.errors.ImageLoadError` with the reason, and the other
sources follow (a tar or video that breaks part way through gives the items before the break and
then that one failing item).

Reads are cheap to hold and safe to call from several threads at once: a file or tar member is read
when ``read`` is called (a tar member by opening the tar, seeking to the member's data and reading
its size; no shared file object), a compressed tar's members are read while iterating (a gzip stream
cannot seek), and a video frame is decoded in the iterating thread, in order, and held by its item.

This module imports PyAV only when a video is met, and never torch.
"""

from __future__ import annotations

import glob
import math
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from florence2.errors import Florence2Error, ImageLoadError
from florence2.sources import IMAGE_SUFFIXES, is_image_file

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
# uncompressed tars are read lazily; gzip-compressed ones as a stream, their members read eagerly
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".txt", ".lst")

_GLOB_CHARACTERS = frozenset("*?[")
# a frame at time t counts as "at" a sampling instant k/F when t*F is within this of k
_TIME_EPSILON = 1e-6
# the frame rate assumed when a video states none (only for count_sources' estimate)
_ASSUMED_RATE = 25.0


class SourceError(Florence2Error, ValueError):
    """A source spec that cannot be used at all: no such path, a glob without matches, bad options,
    or a video without PyAV installed."""


@dataclass(frozen=True)
class SourceItem:
    """One image to label.

    Attributes:
        key: unique and stable: a file's absolute path; ``"ABS_TAR::MEMBER"`` for a tar member;
            ``"ABS_VIDEO@FRAME_INDEX"`` for a video frame.
        source: JSON-able record of where it came from, which :func:`open_source` reads again:
            ``{"path": ABS}``, ``{"archive": ABS_TAR, "member": NAME}`` or
            ``{"video": ABS, "frame": INDEX, "time": SECONDS}`` (a failing tar or video item has
            only ``"archive"`` or ``"video"``).
        stamp: cheap change detector: ``"SIZE-MTIME_NS"`` of a file; a tar's stamp, ``":"`` and the
            member's size for a tar member; the video's stamp for a frame; None where the file
            cannot be seen.
        read: gives encoded bytes (files, tar members) or an RGB image (video frames); raises
            :class:`florence2.errors.ImageLoadError` when they cannot be had.
    """

    key: str
    source: dict[str, Any]
    stamp: str | None
    read: Callable[[], bytes | Image.Image]


# --- specs to paths ------------------------------------------------------------------------------


def _named(path: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    return os.fspath(path).lower().endswith(suffixes)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


def _is_glob(spec: str) -> bool:
    return not _GLOB_CHARACTERS.isdisjoint(spec)


def _glob(pattern: str) -> list[Path]:
    return [_absolute(p) for p in sorted(glob.glob(pattern, recursive=True))]


def _resolve_spec(spec: str | os.PathLike) -> list[Path]:
    """The paths one command-line spec stands for: itself if it exists, else its glob matches."""
    text = os.fspath(spec)
    if not text:
        raise SourceError("a source is an empty string")
    if os.path.lexists(text):
        return [_absolute(text)]
    if _is_glob(text):
        matches = _glob(text)
        if not matches:
            raise SourceError(f"no file matches the pattern {text!r}")
        return matches
    raise SourceError(f"source {text!r} does not exist")


def _resolve_specs(specs: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    return [path for spec in specs for path in _resolve_spec(spec)]


def _list_entry(list_file: Path, line: str) -> list[Path]:
    """The paths one line of a list file stands for; a path that names nothing is kept as it is."""
    path = list_file.parent / line
    if not os.path.lexists(path) and _is_glob(line):
        return _glob(os.fspath(path)) or [_absolute(path)]
    return [_absolute(path)]


def _list_lines(list_file: Path) -> list[str]:
    lines = (line.strip() for line in list_file.read_text(encoding="utf-8-sig").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _folder_entries(folder: Path) -> list[Path]:
    """A folder's image files, tars and videos, recursively, sorted by path."""
    media = ARCHIVE_SUFFIXES + VIDEO_SUFFIXES
    return sorted(p for p in folder.rglob("*") if is_image_file(p) or (_named(p, media) and p.is_file()))


@dataclass(frozen=True)
class _Leaf:
    """A path that gives items by itself: kind "file", "archive", "video", or "failed" (reason)."""

    kind: str
    path: Path
    reason: str | None = None


def _leaves(paths: list[Path], seen: set[Path] | None = None) -> Iterator[_Leaf]:
    """The leaves under ``paths`` in order, folders and lists opened as they come, each path once."""
    seen = set() if seen is None else seen
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        if path.is_dir():
            yield from _leaves(_folder_entries(path), seen)
        elif _named(path, LIST_SUFFIXES) and path.exists():
            try:
                lines = _list_lines(path)
            except (OSError, UnicodeDecodeError) as error:
                yield _Leaf("failed", path, f"list file {path} cannot be read: {error}")
                continue
            yield from _leaves([p for line in lines for p in _list_entry(path, line)], seen)
        elif _named(path, ARCHIVE_SUFFIXES) and path.exists():
            yield _Leaf("archive", path)
        elif _named(path, VIDEO_SUFFIXES) and path.exists():
            yield _Leaf("video", path)
        else:
            yield _Leaf("file", path)


# --- files ---------------------------------------------------------------------------------------


def _stamp(stat: os.stat_result) -> str:
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _file_stamp(path: Path) -> str | None:
    try:
        return _stamp(path.stat())
    except OSError:
        return None


def _read_file(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file {path} does not exist") from error
    except IsADirectoryError as error:
        raise ImageLoadError(f"image path {path} is a directory, not a file") from error
    except OSError as error:
        raise ImageLoadError(f"image file {path} cannot be read: {error}") from error


def _file_item(path: Path) -> SourceItem:
    return SourceItem(os.fspath(path), {"path": os.fspath(path)}, _file_stamp(path), lambda: _read_file(path))


def _failing(reason: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise ImageLoadError(reason)

    return read


def _failed_item(key: Path, source: dict[str, Any], reason: str) -> SourceItem:
    return SourceItem(os.fspath(key), source, _file_stamp(key), _failing(reason))


# --- tar archives --------------------------------------------------------------------------------

# what a damaged tar or gzip stream raises while it is listed or read
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _is_compressed(path: Path) -> bool:
    return not _named(path, (".tar",))


def _read_range(path: Path, stamp: str, offset: int, size: int, name: str) -> bytes:
    """``size`` bytes at ``offset`` of the tar ``path``, through a file object of this call only
    (so any number of threads may read at once), refused if the tar changed since it was listed."""
    try:
        with open(path, "rb") as f:
            if _stamp(os.fstat(f.fileno())) != stamp:
                raise ImageLoadError(f"tar {path} changed since it was listed; member {name} not read")
            f.seek(offset)
            data = f.read(size)
    except OSError as error:
        raise ImageLoadError(f"tar {path} cannot be read: {error}") from error
    if len(data) != size:
        raise ImageLoadError(f"tar member {path}::{name} is truncated ({len(data)} of {size} bytes)")
    return data


def _member_reader(path: Path, stamp: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
    if _is_compressed(path):
        data = tar.extractfile(member).read()  # a stream: now or never
        return lambda: data
    return lambda: _read_range(path, stamp, member.offset_data, member.size, member.name)


def _archive_items(path: Path) -> Iterator[SourceItem]:
    """The image members of a tar, in archive order; a damaged tar ends in one failing item."""
    stamp = _file_stamp(path) or ""
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*" if _is_compressed(path) else "r:") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or member.issparse() or name in names:
                    continue
                if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                names.add(name)
                source = {"archive": os.fspath(path), "member": name}
                read = _member_reader(path, stamp, tar, member)
                yield SourceItem(f"{path}::{name}", source, f"{stamp}:{member.size}", read)
    except _TAR_ERRORS as error:
        yield _failed_item(path, {"archive": os.fspath(path)}, f"tar {path} cannot be read: {error}")


def _open_member(archive: str, member: str) -> bytes:
    for item in _archive_items(_absolute(archive)):
        # the member, or the item that says why the tar could not be read as far as it
        if item.source.get("member", member) == member:
            return item.read()
    raise ImageLoadError(f"tar {archive} has no image member {member!r}")


# --- videos --------------------------------------------------------------------------------------


def _import_av() -> Any:
    try:
        import av
    except ImportError as error:
        raise SourceError("reading videos needs PyAV: pip install 'florence2[video]'") from error
    return av


def _check_video_options(video_fps: float | None, video_stride: int | None) -> None:
    if video_fps is not None and video_stride is not None:
        raise SourceError("give video_fps or video_stride, not both")
    if video_fps is not None and not (video_fps > 0 and math.isfinite(video_fps)):
        raise SourceError(f"video_fps must be a positive number, got {video_fps!r}")
    if video_stride is not None and (isinstance(video_stride, bool) or not isinstance(video_stride, int)):
        raise SourceError(f"video_stride must be a whole number, got {video_stride!r}")
    if video_stride is not None and video_stride < 1:
        raise SourceError(f"video_stride must be at least 1, got {video_stride!r}")


class _FrameSampler:
    """Which decoded frames a video gives: every ``stride``-th, or the first at or after each
    multiple of ``1/fps`` seconds (one frame a second when neither is given)."""

    def __init__(self, fps: float | None, stride: int | None) -> None:
        self.stride = stride
        self.fps = 1.0 if fps is None and stride is None else fps
        self.next_instant = -math.inf  # the index k of the next instant k/fps to take a frame for

    def take(self, index: int, time: float) -> bool:
        if self.stride is not None:
            return index % self.stride == 0
        position = time * self.fps + _TIME_EPSILON
        if position < self.next_instant:
            return False
        self.next_instant = math.floor(position) + 1
        return True


def _frame_rate(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else _ASSUMED_RATE


def _start_time(stream: Any) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _frame_time(frame: Any, index: int, stream: Any) -> float:
    """A frame's presentation time in seconds (from its index and the frame rate if it has none)."""
    if frame.time is not None:
        return float(frame.time)
    return _start_time(stream) + index / _frame_rate(stream)


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        raise ImageLoadError(f"video {path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _video_errors(av: Any) -> tuple[type[BaseException], ...]:
    return (av.error.FFmpegError, ImageLoadError, OSError, ValueError, EOFError)


def _video_items(path: Path, video_fps: float | None, video_stride: int | None) -> Iterator[SourceItem]:
    """A video's sampled frames, decoded here in order; a bad video ends in one failing item."""
    av = _import_av()
    stamp = _file_stamp(path)
    sampler = _FrameSampler(video_fps, video_stride)
    try:
        with av.open(os.fspath(path)) as container:
            stream = _video_stream(container, path)
            for index, frame in enumerate(container.decode(stream)):
                time = _frame_time(frame, index, stream)
                if not sampler.take(index, time):
                    continue
                image = frame.to_image()
                source = {"video": os.fspath(path), "frame": index, "time": round(time, 3)}
                yield SourceItem(f"{path}@{index}", source, stamp, lambda image=image: image)
    except _video_errors(av) as error:
        yield _failed_item(path, {"video": os.fspath(path)}, f"video {path} cannot be decoded: {error}")


def _video_frames_stated(container: Any, stream: Any) -> int:
    """The frame count the container states, else one from its duration, else from its packets."""
    if stream.frames:
        return stream.frames
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / 1_000_000
    if seconds > 0:
        return round(seconds * _frame_rate(stream))
    return sum(1 for packet in container.demux(stream) if packet.size)


def _video_count(path: Path, video_fps: float | None, video_stride: int | None) -> int:
    """How many frames :func:`_video_items` should give, from the container's numbers (1 for a video
    that cannot be opened: its failing item)."""
    av = _import_av()
    try:
        with av.open(os.fspath(path)) as container:
            stream = _video_stream(container, path)
            frames = _video_frames_stated(container, stream)
            start, rate = _start_time(stream), _frame_rate(stream)
    except _video_errors(av):
        return 1
    sampler = _FrameSampler(video_fps, video_stride)
    return sum(sampler.take(index, start + index / rate) for index in range(frames))


def _frame_at_time(container: Any, stream: Any, time: float) -> Image.Image | None:
    """The frame whose time rounds to ``time``, found by seeking to the keyframe before it; None
    where seeking does not lead to it."""
    # a millisecond early: the recorded time is rounded
    container.seek(max(0, math.floor((time - 0.001) / stream.time_base)), stream=stream, backward=True)
    for frame in container.decode(stream):
        if frame.time is None:
            return None
        if round(frame.time, 3) >= time:
            return frame.to_image() if round(frame.time, 3) == time else None
    return None


def _frame_at_index(container: Any, stream: Any, index: int) -> Image.Image | None:
    for position, frame in enumerate(container.decode(stream)):
        if position == index:
            return frame.to_image()
    return None


def _in_video(av: Any, path: Path, find: Callable[[Any, Any], Image.Image | None]) -> Image.Image | None:
    with av.open(os.fspath(path)) as container:
        return find(container, _video_stream(container, path))


def _open_frame(video: str, index: int, time: float | None) -> Image.Image:
    """A video frame decoded again: by seeking to its recorded time where that finds it, else by
    decoding from the start up to its index."""
    av = _import_av()
    path = _absolute(video)
    image = None
    if time is not None:
        try:
            image = _in_video(av, path, lambda container, stream: _frame_at_time(container, stream, time))
        except _video_errors(av):
            image = None  # the container cannot seek: decode from the start instead
    if image is None:
        try:
            image = _in_video(av, path, lambda container, stream: _frame_at_index(container, stream, index))
        except _video_errors(av) as error:
            raise ImageLoadError(f"video {path} cannot be decoded: {error}") from error
    if image is None:
        raise ImageLoadError(f"video {path} has no frame {index}")
    return image


# --- the public functions ------------------------------------------------------------------------


def _leaf_items(leaf: _Leaf, video_fps: float | None, video_stride: int | None) -> Iterator[SourceItem]:
    if leaf.kind == "archive":
        return _archive_items(leaf.path)
    if leaf.kind == "video":
        return _video_items(leaf.path, video_fps, video_stride)
    if leaf.kind == "failed":
        return iter([_failed_item(leaf.path, {"path": os.fspath(leaf.path)}, leaf.reason or "")])
    return iter([_file_item(leaf.path)])


def _leaf_count(leaf: _Leaf, video_fps: float | None, video_stride: int | None) -> int:
    if leaf.kind == "archive":
        return sum(1 for _ in _archive_items(leaf.path))
    if leaf.kind == "video":
        return _video_count(leaf.path, video_fps, video_stride)
    return 1


def _check_specs(specs: Sequence[str | os.PathLike], video_fps: float | None, video_stride: int | None) -> list[Path]:
    """The specs' paths, after every check that can be made before anything is read."""
    _check_video_options(video_fps, video_stride)
    paths = _resolve_specs(specs)
    if any(_named(p, VIDEO_SUFFIXES) and p.is_file() for p in paths):
        _import_av()
    return paths


def iter_sources(
    specs: Sequence[str | os.PathLike], *, video_fps: float | None = None, video_stride: int | None = None
) -> Iterator[SourceItem]:
    """The images that ``specs`` stand for (the rules are in this module's docstring), lazily.

    Raises:
        SourceError: at once, for a spec that does not exist or a glob without matches, both video
            options, or a video named directly without PyAV installed; while iterating, for a video
            found in a folder or list without PyAV installed.
    """
    paths = _check_specs(specs, video_fps, video_stride)

    def items() -> Iterator[SourceItem]:
        for leaf in _leaves(paths):
            yield from _leaf_items(leaf, video_fps, video_stride)

    return items()


def count_sources(
    specs: Sequence[str | os.PathLike], *, video_fps: float | None = None, video_stride: int | None = None
) -> int:
    """How many items :func:`iter_sources` gives for the same arguments, without decoding an image.

    Files count one each; a tar's image members are listed (a gzip-compressed tar is decompressed
    to list them). A video's count comes from its container: exact for ``video_stride`` where the
    container states its frame count (MP4 and MOV do); otherwise an estimate, from the stated frame
    count, duration and frame rate, of frames evenly spaced in time (a variable frame rate, or
    frames the decoder drops or the container miscounts, make the real number differ).

    Raises:
        SourceError: as :func:`iter_sources` does (a video without PyAV always at once).
    """
    paths = _check_specs(specs, video_fps, video_stride)
    return sum(_leaf_count(leaf, video_fps, video_stride) for leaf in _leaves(paths))


def open_source(source: dict[str, Any]) -> bytes | Image.Image:
    """Read a recorded ``SourceItem.source`` again: a file's or tar member's bytes, or a video
    frame as an RGB image (found by its recorded time, else decoded up to its frame index).

    Raises:
        ImageLoadError: the file, member or frame cannot be read (any more).
        SourceError: ``source`` is not a record this module writes, or a video without PyAV.
    """
    if isinstance(source.get("path"), str):
        return _read_file(source["path"])
    if isinstance(source.get("archive"), str) and isinstance(source.get("member"), str):
        return _open_member(source["archive"], source["member"])
    if isinstance(source.get("video"), str) and isinstance(source.get("frame"), int):
        time = source.get("time")
        return _open_frame(source["video"], source["frame"], float(time) if time is not None else None)
    raise SourceError(f"not a source record: {source!r}")
