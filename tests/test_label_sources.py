"""florence2.label.sources: files, folders, lists, globs, tar shards and videos, built here on the fly."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from florence2.errors import ImageLoadError
from florence2.label import sources
from florence2.label.sources import (
    SourceError,
    SourceItem,
    count_sources,
    iter_sources,
    open_source,
)

# --- builders --------------------------------------------------------------------------------------


def encoded(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, color: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded(color, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shard_members(count: int) -> list[tuple[str, bytes]]:
    """A WebDataset-style shard: each sample an image, a json and a cls member."""
    members = []
    for i in range(count):
        members.append((f"sample{i:04d}.png", encoded((i * 10 % 256, 255 - i * 10 % 256, 7), size=(8 + i, 6))))
        members.append((f"sample{i:04d}.json", json.dumps({"i": i}).encode()))
        members.append((f"sample{i:04d}.cls", str(i).encode()))
    return members


LEVELS = (0, 85, 170, 255)


def frame_color(i: int) -> tuple[int, int, int]:
    """A colour per frame, at least 85 away from every other frame's in some channel."""
    return LEVELS[i % 4], LEVELS[(i // 4) % 4], LEVELS[(i // 16) % 4]


def write_video(path: Path, frames: int = 30, fps: int = 10) -> Path:
    av = pytest.importorskip("av")
    codec = "mpeg4" if "mpeg4" in av.codecs_available else "libx264"
    with av.open(os.fspath(path), "w") as container:
        # a keyframe every 12 frames (no scene-cut keyframes), so finding a frame again means seeking
        # to the keyframe before it and decoding on
        stream = container.add_stream(codec, rate=fps, options={"g": "12", "sc_threshold": "1000000000"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            pixels = np.full((48, 64, 3), frame_color(i), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def assert_frame(image: object, index: int) -> None:
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 48)
    centre = np.asarray(image)[16:32, 24:40].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - frame_color(index)).max() < 20, (index, centre)


def keys(specs, **options) -> list[str]:
    return [item.key for item in iter_sources(specs, **options)]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4")


# --- files, folders, globs, lists ----------------------------------------------------------------


def test_an_image_file_is_one_item_with_its_bytes_and_stamp(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png")
    [item] = iter_sources([path])
    stat = path.stat()
    assert isinstance(item, SourceItem)
    assert item.key == str(path) and item.source == {"path": str(path)}
    assert item.stamp == f"{stat.st_size}-{stat.st_mtime_ns}"
    assert item.read() == path.read_bytes() == open_source(item.source)
    assert count_sources([path]) == 1


def test_relative_specs_become_absolute_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "sub" / "a.png")
    monkeypatch.chdir(tmp_path)
    assert keys(["sub/a.png"]) == [str(tmp_path / "sub" / "a.png")]
    assert keys("sub") == [str(tmp_path / "sub" / "a.png")]  # a single spec may be a plain string


def test_an_explicit_file_of_any_name_is_taken_and_fails_later(tmp_path: Path) -> None:
    notes = tmp_path / "notes.dat"
    notes.write_bytes(b"not an image")
    [item] = iter_sources([notes])
    assert item.source == {"path": str(notes)} and item.read() == b"not an image"


def test_a_folder_gives_its_images_tars_and_videos_recursively_sorted(tmp_path: Path, video: Path) -> None:
    root = tmp_path
    for name in ("b.png", "a.JPG", "deep/er/c.webp", "deep/z.png"):
        write_image(root / name)
    write_tar(root / "deep" / "shard.tar", [("x.png", encoded((1, 2, 3))), ("x.json", b"{}")])
    (root / "captions.txt").write_text("b.png\n")  # lists are not read inside folders
    (root / "deep" / "meta.json").write_text("{}")
    found = keys([root])
    assert found == [
        str(root / "a.JPG"),
        str(root / "b.png"),
        *(f"{video}@{i}" for i in (0, 10, 20)),
        str(root / "deep" / "er" / "c.webp"),
        f"{root / 'deep' / 'shard.tar'}::x.png",
        str(root / "deep" / "z.png"),
    ]
    assert count_sources([root]) == len(found)


def test_a_path_given_twice_is_taken_once(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    assert keys([tmp_path, a, tmp_path]) == [str(a), str(tmp_path / "b.png")]
    assert count_sources([tmp_path, a, tmp_path]) == 2


def test_a_glob_is_expanded_sorted_and_recursive(tmp_path: Path) -> None:
    for name in ("z.png", "a/b.png", "a/c.jpg", "a/d/e.png"):
        write_image(tmp_path / name)
    expected = [str(tmp_path / n) for n in ("a/b.png", "a/d/e.png", "z.png")]
    assert keys([str(tmp_path / "**" / "*.png")]) == expected
    assert count_sources([str(tmp_path / "**" / "*.png")]) == 3
    assert keys([str(tmp_path / "[a]")]) == [str(tmp_path / n) for n in ("a/b.png", "a/c.jpg", "a/d/e.png")]


def test_a_list_file_resolves_relative_lines_skips_comments_and_keeps_missing_entries(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rel = write_image(images / "rel.png")
    absolute = write_image(tmp_path / "elsewhere" / "abs.jpg")
    write_image(images / "globbed" / "g1.png")
    write_image(images / "globbed" / "g2.png")
    nested = tmp_path / "nested.lst"
    nested.write_text(f"{absolute}\n")
    listing = images / "list.txt"
    listing.write_text(
        f"# a comment\n\nrel.png\n  {absolute}  \nmissing.png\nglobbed/*.png\nnothing/*.png\n../nested.lst\n"
    )
    items = list(iter_sources([listing]))
    assert [item.key for item in items] == [
        str(rel),
        str(absolute),
        str(images / "missing.png"),
        str(images / "globbed" / "g1.png"),
        str(images / "globbed" / "g2.png"),
        str(images / "nothing" / "*.png"),
    ]  # the nested list's only entry was taken already
    assert count_sources([listing]) == len(items)
    missing = items[2]
    assert missing.source == {"path": str(images / "missing.png")} and missing.stamp is None
    with pytest.raises(ImageLoadError, match="does not exist"):
        missing.read()
    assert items[0].read() == rel.read_bytes()


def test_a_list_that_names_itself_ends(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png")
    listing = tmp_path / "self.txt"
    listing.write_text("self.txt\na.png\n")
    assert keys([listing]) == [str(a)]


def test_an_unreadable_list_is_one_failing_item(tmp_path: Path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_bytes(b"\xff\xfe\xfa broken")
    a = write_image(tmp_path / "a.png")
    items = list(iter_sources([listing, a]))
    assert [i.key for i in items] == [str(listing), str(a)]
    with pytest.raises(ImageLoadError, match="cannot be read"):
        items[0].read()
    assert count_sources([listing, a]) == 2


# --- errors before anything is read --------------------------------------------------------------


def test_a_missing_path_is_refused_before_any_item(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    with pytest.raises(SourceError, match="does not exist"):
        iter_sources([tmp_path / "a.png", tmp_path / "gone.png"])
    with pytest.raises(SourceError, match="does not exist"):
        count_sources([tmp_path / "gone"])
    with pytest.raises(SourceError, match="empty"):
        iter_sources([""])


def test_a_glob_without_matches_is_refused_naming_it(tmp_path: Path) -> None:
    pattern = str(tmp_path / "**" / "*.png")
    with pytest.raises(SourceError, match=r"\*\*"):
        iter_sources([pattern])
    with pytest.raises(SourceError, match="matches"):
        count_sources([pattern])


@pytest.mark.parametrize(
    "options",
    [
        {"video_fps": 2.0, "video_stride": 3},
        {"video_fps": 0},
        {"video_fps": float("nan")},
        {"video_stride": 0},
        {"video_stride": 1.5},
    ],
)
def test_bad_video_options_are_refused(tmp_path: Path, options: dict) -> None:
    write_image(tmp_path / "a.png")
    with pytest.raises(SourceError):
        iter_sources([tmp_path], **options)
    with pytest.raises(SourceError):
        count_sources([tmp_path], **options)


def test_a_source_record_of_unknown_shape_is_refused() -> None:
    with pytest.raises(SourceError, match="not a source record"):
        open_source({"url": "http://example.com/a.png"})


def test_the_module_imports_nothing_heavy() -> None:
    # the module's file alone, without the florence2.label package's __init__ (which loads the engine)
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('label_sources', {str(Path(sources.__file__))!r}); "
        "module = sys.modules['label_sources'] = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(module); "
        "print(sorted({'av', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- tar shards ----------------------------------------------------------------------------------


def test_a_tar_gives_its_image_members_in_archive_order_lazily(tmp_path: Path) -> None:
    members = shard_members(5) + [("dir/late.JPEG", encoded((9, 9, 9), "JPEG")), ("sample0001.png", b"again")]
    tar = write_tar(tmp_path / "shard.tar", members)
    items = list(iter_sources([tar]))
    names = [f"sample{i:04d}.png" for i in range(5)] + ["dir/late.JPEG"]  # a repeated name is left out
    assert [i.key for i in items] == [f"{tar}::{n}" for n in names]
    assert [i.source for i in items] == [{"archive": str(tar), "member": n} for n in names]
    stat = tar.stat()
    data = dict(reversed(members))  # the first member of a name
    for item, name in zip(items, names):
        assert item.stamp == f"{stat.st_size}-{stat.st_mtime_ns}:{len(data[name])}"
        assert item.read() == data[name] == open_source(item.source)
    assert count_sources([tar]) == len(items)


def test_tar_reads_from_many_threads_give_the_right_bytes(tmp_path: Path) -> None:
    members = shard_members(40)
    tar = write_tar(tmp_path / "shard.tar", members)
    items = list(iter_sources([tar]))
    expected = {f"{tar}::{name}": data for name, data in members if name.endswith(".png")}
    work = items * 5
    random.Random(0).shuffle(work)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda item: (item.key, item.read()), work))
    assert len(results) == 200 and all(data == expected[key] for key, data in results)


def test_a_tar_changed_after_listing_is_not_misread(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "shard.tar", shard_members(2))
    items = list(iter_sources([tar]))
    write_tar(tar, [("other.png", encoded((0, 0, 0)))] + shard_members(2))
    with pytest.raises(ImageLoadError, match="changed"):
        items[0].read()


def test_a_truncated_tar_fails_the_member_it_cut(tmp_path: Path) -> None:
    big = encoded((1, 2, 3), size=(200, 200)) + bytes(8000)
    tar = write_tar(tmp_path / "cut.tar", [("a.png", encoded((4, 5, 6))), ("b.png", big)])
    tar.write_bytes(tar.read_bytes()[: 512 * 6])
    items = list(iter_sources([tar]))
    # the members listed before the break, then the tar itself, failing
    assert [i.key for i in items] == [f"{tar}::a.png", f"{tar}::b.png", str(tar)]
    assert items[0].read() == encoded((4, 5, 6))
    with pytest.raises(ImageLoadError, match="truncated"):
        items[1].read()
    with pytest.raises(ImageLoadError, match="cannot be read"):
        items[2].read()
    assert count_sources([tar]) == 3


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_a_gzip_tar_is_read_as_a_stream(tmp_path: Path, suffix: str) -> None:
    members = shard_members(4)
    tar = write_tar(tmp_path / f"shard{suffix}", members, mode="w:gz")
    items = list(iter_sources([tar]))
    images = [(name, data) for name, data in members if name.endswith(".png")]
    assert [i.key for i in items] == [f"{tar}::{name}" for name, _ in images]
    assert [i.read() for i in items] == [data for _, data in images]
    assert open_source(items[2].source) == images[2][1]
    assert count_sources([tar]) == 4


def test_a_corrupt_tar_is_one_failing_item_and_the_rest_still_come(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(os.urandom(3000))
    bad_gz = tmp_path / "bad.tgz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(3000))
    a = write_image(tmp_path / "a.png")
    items = list(iter_sources([bad, bad_gz, a]))
    assert [i.key for i in items] == [str(bad), str(bad_gz), str(a)]
    assert items[0].source == {"archive": str(bad)}
    for item in items[:2]:
        with pytest.raises(ImageLoadError, match="cannot be read"):
            item.read()
    assert items[2].read() == a.read_bytes()
    assert count_sources([bad, bad_gz, a]) == 3
    with pytest.raises(ImageLoadError, match="cannot be read"):
        open_source({"archive": str(bad), "member": "x.png"})


def test_a_member_no_longer_there_cannot_be_opened(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "shard.tar", shard_members(1))
    with pytest.raises(ImageLoadError, match="no image member"):
        open_source({"archive": str(tar), "member": "sample0009.png"})


# --- videos --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "frames"),
    [
        ({}, [0, 10, 20]),
        ({"video_fps": 2.0}, [0, 5, 10, 15, 20, 25]),
        ({"video_fps": 3.0}, [0, 4, 7, 10, 14, 17, 20, 24, 27]),
        ({"video_fps": 25.0}, list(range(30))),
        ({"video_stride": 7}, [0, 7, 14, 21, 28]),
        ({"video_stride": 1}, list(range(30))),
    ],
)
def test_video_frames_are_sampled_and_counted(video: Path, options: dict, frames: list[int]) -> None:
    items = list(iter_sources([video], **options))
    assert [i.key for i in items] == [f"{video}@{f}" for f in frames]
    assert [i.source for i in items] == [{"video": str(video), "frame": f, "time": f / 10} for f in frames]
    stat = video.stat()
    assert {i.stamp for i in items} == {f"{stat.st_size}-{stat.st_mtime_ns}"}
    for item, frame in zip(items, frames):
        assert_frame(item.read(), frame)
    assert count_sources([video], **options) == len(frames)


def test_the_test_video_has_frames_between_its_keyframes(video: Path) -> None:
    import av

    with av.open(os.fspath(video)) as container:
        keyframes = [f.key_frame for f in container.decode(container.streams.video[0])]
    assert len(keyframes) == 30 and 1 < sum(keyframes) < 10


def test_a_video_frame_is_found_again_by_seeking_to_its_time(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_frame_at_index", None)  # no decoding from the start
    for frame in (0, 11, 17, 29):
        assert_frame(open_source({"video": str(video), "frame": frame, "time": frame / 10}), frame)


def test_a_video_frame_is_opened_again_by_time_or_by_index(video: Path) -> None:
    for frame in (0, 11, 17, 29):
        assert_frame(open_source({"video": str(video), "frame": frame, "time": frame / 10}), frame)
        assert_frame(open_source({"video": str(video), "frame": frame}), frame)
    # a recorded time that matches no frame falls back to the index
    assert_frame(open_source({"video": str(video), "frame": 13, "time": 1.355}), 13)
    with pytest.raises(ImageLoadError, match="no frame 30"):
        open_source({"video": str(video), "frame": 30})


def test_a_corrupt_video_is_one_failing_item_and_the_rest_still_come(tmp_path: Path, video: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(5000))
    a = write_image(tmp_path / "a.png")
    items = list(iter_sources([bad, video, a]))
    assert [i.key for i in items] == [str(bad), *(f"{video}@{f}" for f in (0, 10, 20)), str(a)]
    assert items[0].source == {"video": str(bad)}
    with pytest.raises(ImageLoadError, match="cannot be decoded"):
        items[0].read()
    assert count_sources([bad, video, a]) == len(items)
    with pytest.raises(ImageLoadError, match="cannot be decoded"):
        open_source({"video": str(bad), "frame": 0, "time": 0.0})


def test_without_pyav_a_video_is_refused_with_the_install_hint(
    tmp_path: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(SourceError, match=r"pip install 'florence2\[video\]'"):
        iter_sources([video])
    with pytest.raises(SourceError, match="florence2"):
        count_sources([tmp_path])
    items = iter_sources([tmp_path])  # found inside a folder: refused when reached
    with pytest.raises(SourceError, match="video"):
        list(items)
