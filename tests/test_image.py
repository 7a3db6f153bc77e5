"""Tests for florence2.image: loading any source as RGB, error paths, preprocessing parity."""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from florence2.errors import CheckpointError, ImageLoadError
from florence2.image import MAX_IMAGE_PIXELS, ImageBatch, ImageProcessor, load_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------------------------
# Mode conversion
# ---------------------------------------------------------------------------------------------


def test_rgb_is_unchanged_and_a_copy():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    loaded = load_image(image)
    assert loaded is not image
    assert loaded.mode == "RGB" and loaded.size == (7, 5)
    assert np.array_equal(np.asarray(loaded), np.asarray(image))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
        ("RGBX", (1, 2, 3, 4), (1, 2, 3)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("LAB", (255, 128, 128), (254, 255, 254)),
    ],
)
def test_plain_modes_convert(mode, value, expected):
    loaded = load_image(Image.new(mode, (3, 2), value))
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert _pixel(loaded) == expected


def test_palette_without_transparency():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    loaded = load_image(image)
    assert _pixel(loaded, (0, 0)) == (10, 20, 30)
    assert _pixel(loaded, (1, 0)) == (200, 100, 50)


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # index 0 (10, 20, 30) is transparent
    loaded = load_image(path)
    assert _pixel(loaded, (0, 0)) == (255, 255, 255)
    assert _pixel(loaded, (1, 0)) == (200, 100, 50)


def test_rgba_composites_over_white_not_junk():
    pixels = np.array([[[255, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    loaded = load_image(Image.fromarray(pixels, "RGBA"))
    assert _pixel(loaded, (0, 0)) == (255, 255, 255)  # transparent red junk -> white
    assert _pixel(loaded, (1, 0)) == (10, 20, 30)  # opaque -> as is
    assert all(abs(c - 127) <= 1 for c in _pixel(loaded, (2, 0)))  # half black over white -> grey


def test_rgba_numpy_array_composites_over_white():
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (1, 2, 3, 255)
    loaded = load_image(pixels)
    assert _pixel(loaded, (0, 0)) == (1, 2, 3)
    assert _pixel(loaded, (1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_grey_and_palette_alpha(mode):
    image = Image.new(mode, (2, 1), (40, 255))
    image.putpixel((1, 0), (40, 0))
    loaded = load_image(image)
    opaque = _pixel(loaded, (0, 0))
    assert opaque == ((40, 40, 40) if mode == "LA" else opaque)
    assert _pixel(loaded, (1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["RGBa", "La"])
def test_premultiplied_alpha(mode):
    channels = 3 if mode == "RGBa" else 1
    transparent, half = (0,) * channels + (0,), (50,) * channels + (128,)
    image = Image.new(mode, (2, 1), transparent)
    image.putpixel((1, 0), half)
    loaded = load_image(image)
    assert _pixel(loaded, (0, 0)) == (255, 255, 255)
    assert _pixel(loaded, (1, 0)) == (50 + 255 - 128,) * 3


def test_grey_and_rgb_colour_key_transparency(tmp_path):
    grey = Image.new("L", (2, 1), 9)
    grey.putpixel((1, 0), 200)
    path = tmp_path / "grey.png"
    grey.save(path, transparency=200)
    loaded = load_image(path)
    assert _pixel(loaded, (0, 0)) == (9, 9, 9)
    assert _pixel(loaded, (1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_uses_full_range(mode):
    image = Image.new(mode, (4, 1))
    for x, value in enumerate([0, 257, 32768, 65535]):
        image.putpixel((x, 0), value)
    loaded = load_image(image)
    assert [_pixel(loaded, (x, 0))[0] for x in range(4)] == [0, 1, 128, 255]


def test_16bit_png_file(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    loaded = load_image(path)
    assert [_pixel(loaded, (x, 0)) for x in range(3)] == [(0, 0, 0), (4, 4, 4), (255, 255, 255)]


def test_32bit_integer_rules():
    eight_bit = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert [_pixel(load_image(eight_bit), (x, 0))[0] for x in range(3)] == [0, 100, 255]
    sixteen_bit = Image.fromarray(np.array([[0, 257, 65535]], dtype=np.int32), "I")
    assert [_pixel(load_image(sixteen_bit), (x, 0))[0] for x in range(3)] == [0, 1, 255]
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32), "I")
    assert [_pixel(load_image(signed), (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_rules():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert [_pixel(load_image(unit), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    depth = Image.fromarray(np.array([[-5.0, 0.0, 5.0, np.nan]], dtype=np.float32), "F")
    assert [_pixel(load_image(depth), (x, 0))[0] for x in range(4)] == [0, 128, 255, 0]
    constant = Image.fromarray(np.full((2, 2), 7.0, dtype=np.float32), "F")
    assert _pixel(load_image(constant)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 9, dtype=np.uint8), (9, 9, 9)),
        (np.full((2, 3, 1), 9, dtype=np.uint8), (9, 9, 9)),
        (np.tile(np.array([1, 2, 3], dtype=np.uint8), (2, 3, 1)), (1, 2, 3)),
        (np.ones((2, 3), dtype=bool), (255, 255, 255)),
        (np.full((2, 3), 65535, dtype=np.uint16), (255, 255, 255)),
        (np.full((2, 3, 3), 0.5, dtype=np.float32), (128, 128, 128)),
    ],
)
def test_numpy_arrays(array, expected):
    loaded = load_image(array)
    assert loaded.size == (3, 2)
    assert _pixel(loaded) == expected


def test_numpy_array_non_contiguous():
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)[:, ::2]
    assert np.array_equal(np.asarray(load_image(array)), array)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 3, 2), dtype=np.uint8),
        np.zeros((2, 3, 3, 1), dtype=np.uint8),
        np.zeros((5,), dtype=np.uint8),
        np.zeros((0, 3, 3), dtype=np.uint8),
        np.zeros((2, 2), dtype=np.complex64),
    ],
)
def test_bad_numpy_arrays(array):
    with pytest.raises(ImageLoadError, match="array"):
        load_image(array)


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="image source"):
        load_image(12345)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Sources and EXIF
# ---------------------------------------------------------------------------------------------


def test_all_source_kinds_agree(tmp_path):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8))
    data = _encode(image, "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(data)
    expected = np.asarray(image)
    with open(path, "rb") as file:
        from_file = load_image(file)
        assert not file.closed  # the caller owns the file object
    for source in (path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), image, expected):
        assert np.array_equal(np.asarray(load_image(source)), expected), type(source)
    assert np.array_equal(np.asarray(from_file), expected)


def test_exif_orientation_6_rotates(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # (H, W): landscape
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)  # now portrait
    top, bottom = _pixel(loaded, (10, 5)), _pixel(loaded, (10, 35))
    assert top[0] > 200 and top[2] < 60  # after a clockwise turn the left half is on top
    assert bottom[2] > 200 and bottom[0] < 60
    # The same rotation applies to a PIL image opened lazily by the caller, which stays untouched.
    with Image.open(path) as opened:
        assert load_image(opened).size == (20, 40)
        assert opened.size == (40, 20)


def test_input_pil_image_is_not_modified():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    before = image.tobytes()
    load_image(image)
    assert image.mode == "RGBA" and image.tobytes() == before


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert _pixel(load_image(buffer.getvalue())) == (255, 0, 0)


def test_no_file_handles_left_open(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_encode(Image.new("RGB", (8, 8)), "PNG"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    load_image(good)
    before = _open_fds()
    for _ in range(5):
        load_image(good)
        with pytest.raises(ImageLoadError):
            load_image(bad)
    assert _open_fds() == before


# ---------------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="does not exist") as info:
        load_image(path)
    assert "nope.jpg" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="is a directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_file_and_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_image(path)
    assert "empty.png" in str(info.value)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(io.BytesIO(b""))


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not an image\n")
    with pytest.raises(ImageLoadError, match="not an image") as info:
        load_image(path)
    assert "notes.txt" in str(info.value)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(b"\x00\x01garbage bytes" * 10)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_image(path)
    assert path.name in str(info.value)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_max_pixels_is_checked_before_decoding():
    data = _encode(Image.new("RGB", (100, 50)), "PNG")
    assert load_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageLoadError, match="too large: 100x50 = 5000 pixels exceeds max_pixels=4999"):
        load_image(data, max_pixels=4999)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(np.zeros((50, 100), dtype=np.uint8), max_pixels=4999)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(data, max_pixels=0)


def test_crafted_png_header_claiming_huge_size(tmp_path):
    # 9000 x 9000 = 81 MP passes PIL's own limit (~89.5 MP), so only our check can refuse it
    # before a 243 MB buffer is allocated; 30000 x 30000 trips PIL's hard limit first.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(9000, 9000))
    with pytest.raises(ImageLoadError, match="too large") as info:
        load_image(path, max_pixels=50_000_000)
    assert "bomb.png" in str(info.value)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(_png_header_only(30_000, 30_000))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(_png_header_only(30_000, 30_000), max_pixels=None)
    assert MAX_IMAGE_PIXELS == 100_000_000


def test_pil_bomb_warning_and_error_become_image_load_error(monkeypatch):
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # warning above 4000, error above 8000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning leaking out fails the test
        with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
            load_image(data, max_pixels=None)
        with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
            load_image(data, max_pixels=10**9)  # PIL's hard limit still applies
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9000)  # 10000 px: PIL warns, no error
        with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
            load_image(data, max_pixels=None)
        assert load_image(data, max_pixels=20_000).size == (100, 100)  # our limit replaces the warning


def test_zero_size_png_header():
    with pytest.raises(ImageLoadError):
        load_image(_png_header_only(0, 10))


def test_image_load_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_image(b"nope")


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about corrupt TIFF tags, then fails
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(
        [
            b"",
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",
            b"GIF89a",
            b"BM",
            b"II*\x00",
            b"RIFF",
            b"P6\n",
            b"\x00\x00\x01\x00",
        ]
    ),
    body=st.binary(max_size=2048),
)
def test_random_bytes_only_raise_image_load_error(prefix, body):
    try:
        image = load_image(prefix + body, max_pixels=4_000_000)
    except ImageLoadError:
        return
    assert image.mode == "RGB" and min(image.size) > 0


# ---------------------------------------------------------------------------------------------
# ImageProcessor
# ---------------------------------------------------------------------------------------------


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _manual_pixel_values(image: Image.Image, size: tuple[int, int] = (768, 768)) -> np.ndarray:
    resized = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC))
    x = resized.astype(np.float64) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return x.transpose(2, 0, 1)


def test_processor_shape_dtype_and_sizes():
    processor = ImageProcessor()
    images = [_random_image(300, 200), np.zeros((50, 40), dtype=np.uint8)]
    batch = processor.preprocess(images)
    assert isinstance(batch, ImageBatch)
    assert batch.pixel_values.shape == (2, 3, 768, 768)
    assert batch.pixel_values.dtype == torch.float32
    assert batch.image_sizes == [(300, 200), (40, 50)]
    single = processor(images[0])
    assert single.shape == (1, 3, 768, 768)
    assert torch.equal(single[0], batch.pixel_values[0])
    pixel_values, sizes = processor.preprocess((images[1],))
    assert sizes == [(40, 50)]
    with pytest.raises(ValueError, match="no images"):
        processor([])


def test_processor_matches_manual_computation():
    image = _random_image(333, 210, seed=3)
    expected = _manual_pixel_values(image)
    assert np.abs(ImageProcessor()(image)[0].numpy() - expected).max() < 1e-5
    small = ImageProcessor(size=(64, 96))
    assert small(image).shape == (1, 3, 64, 96)
    assert np.abs(small(image)[0].numpy() - _manual_pixel_values(image, (64, 96))).max() < 1e-5


def _transformers_clip_processor(**kwargs):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        # Without torchvision, transformers 5.x falls back to its PIL backend (CLIPImageProcessorPil)
        # and warns; that backend resizes with PIL exactly like the reference.
        warnings.simplefilter("ignore")
        return transformers.CLIPImageProcessor(**kwargs)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_processor_parity_with_transformers_clip(mode):
    reference = _transformers_clip_processor(
        size={"height": 768, "width": 768},
        crop_size={"height": 768, "width": 768},
        do_center_crop=False,
        do_resize=True,
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    rng = np.random.default_rng(4)
    channels = 4 if mode == "RGBA" else 3
    image = Image.fromarray(rng.integers(0, 256, (241, 317, channels), dtype=np.uint8), mode)
    expected = reference(images=[image], return_tensors="np")["pixel_values"]
    ours = ImageProcessor()(image).numpy()
    assert ours.shape == expected.shape == (1, 3, 768, 768)
    assert np.abs(ours - expected).max() < 1e-5


def test_processor_validation():
    with pytest.raises(ValueError, match="size"):
        ImageProcessor(size=(0, 768))
    with pytest.raises(ValueError, match="std"):
        ImageProcessor(std=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="resample"):
        ImageProcessor(resample=42)
    processor = ImageProcessor(size=[512, 640], mean=[0.5, 0.5, 0.5])  # type: ignore[arg-type]
    assert processor.size == (512, 640) and processor.mean == (0.5, 0.5, 0.5)
    hash(processor)  # frozen and hashable after list inputs


# ---------------------------------------------------------------------------------------------
# preprocessor_config.json
# ---------------------------------------------------------------------------------------------

OFFICIAL_CONFIG = {
    "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
    "crop_size": {"height": 768, "width": 768},
    "do_center_crop": False,
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "CLIPImageProcessor",
    "image_seq_length": 577,
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "Florence2Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 768, "width": 768},
}


def test_official_config_gives_defaults(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    assert ImageProcessor.from_pretrained(tmp_path) == ImageProcessor()
    assert ImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json") == ImageProcessor()


def test_missing_config_file_gives_defaults(tmp_path):
    assert ImageProcessor.from_pretrained(tmp_path) == ImageProcessor()
    with pytest.raises(CheckpointError, match="does not exist"):
        ImageProcessor.from_pretrained(tmp_path / "no-such-folder")


def test_save_load_round_trip(tmp_path):
    processor = ImageProcessor(size=(384, 512), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), resample=2)
    path = processor.save_pretrained(tmp_path / "ckpt", image_seq_length=193)
    config = json.loads(path.read_text())
    assert config["image_processor_type"] == "CLIPImageProcessor"
    assert config["processor_class"] == "Florence2Processor"
    assert config["image_seq_length"] == 193
    assert config["size"] == {"height": 384, "width": 512}
    assert ImageProcessor.from_pretrained(tmp_path / "ckpt") == processor
    assert "image_seq_length" not in ImageProcessor().to_dict()


def test_saved_config_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    ImageProcessor().save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = transformers.CLIPImageProcessor.from_pretrained(tmp_path)
    image = _random_image(200, 120, seed=5)
    expected = reference(images=[image], return_tensors="np")["pixel_values"]
    assert np.abs(ImageProcessor()(image).numpy() - expected).max() < 1e-5


def test_config_flags_and_unknown_keys():
    config = {
        "do_normalize": False,
        "do_rescale": False,
        "some_future_key": {"x": 1},
        "size": {"height": 8, "width": 8},
    }
    processor = ImageProcessor.from_dict(config)
    assert processor.mean == (0.0, 0.0, 0.0) and processor.std == (1.0, 1.0, 1.0)
    assert processor.rescale_factor == 1.0 and processor.size == (8, 8)
    assert ImageProcessor.from_dict({"do_center_crop": True, "crop_size": {"height": 768, "width": 768}}).size == (
        768,
        768,
    )
    assert ImageProcessor.from_dict({"image_mean": 0.5}).mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"do_resize": False}, "do_resize"),
        ({"size": {"shortest_edge": 768}}, "shortest edge"),
        ({"size": 224}, "shortest edge"),
        ({"do_center_crop": True, "crop_size": {"height": 224, "width": 224}}, "crop_size"),
        ({"size": "big"}, "size"),
        ({"image_std": [1, 2]}, "image_std"),
        ({"resample": 99}, "resample"),
    ],
)
def test_unsupported_configs(config, message):
    with pytest.raises(CheckpointError, match=message):
        ImageProcessor.from_dict(config)


def test_malformed_config_file(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        ImageProcessor.from_pretrained(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        ImageProcessor.from_pretrained(tmp_path)


def test_processor_accepts_paths(tmp_path: Path):
    path = tmp_path / "a.jpg"
    _random_image(64, 32).save(path)
    batch = ImageProcessor(size=(32, 32)).preprocess([path, str(path)])
    assert batch.image_sizes == [(64, 32), (64, 32)]
    assert torch.equal(batch.pixel_values[0], batch.pixel_values[1])


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 30, 40)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_allowed_formats_load(fmt):
    assert load_image(_encoded(fmt)).size == (12, 10)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "PPM", "SGI"])
def test_other_formats_pillow_knows_are_refused_by_name(fmt):
    with pytest.raises(ImageLoadError, match=f"looks like {fmt}.*only PNG, JPEG, WEBP, GIF, BMP, TIFF"):
        load_image(_encoded(fmt))


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was asked to render client data")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    path = tmp_path / "tiny.png"  # the name does not matter, the bytes do
    path.write_bytes(eps)
    for source in (eps, path, io.BytesIO(eps)):
        with pytest.raises(ImageLoadError, match="looks like EPS"):
            load_image(source)
