"""Image loading and Florence-2 preprocessing.

``load_image`` turns any image source (path, bytes, binary file object, PIL image, numpy array) into
an RGB ``PIL.Image.Image`` with EXIF orientation applied, or raises ``ImageLoadError`` saying what
went wrong and with which file. ``ImageProcessor`` turns RGB images into the model input exactly as
the reference ``CLIPImageProcessor`` of the official checkpoints does: a bicubic resize to 768x768
that does *not* keep the aspect ratio, ``x / 255``, then ImageNet mean/std normalisation.

Model results are in pixels of the image ``load_image`` returns (EXIF-rotated, original size), so
``ImageProcessor.preprocess`` also returns each image's ``(width, height)``.

Conversion rules to RGB (mode by mode):

* ``RGB``: unchanged. ``1``, ``L``, ``P``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's
  ``convert("RGB")`` (CMYK is converted naively; embedded ICC profiles are ignored).
* Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La`` and ``P``/``L``/``RGB`` images with a
  transparent colour): composited over **white**. A plain ``convert("RGB")`` would keep whatever
  colour happens to sit under fully transparent pixels (often black or junk); white matches
  transformers' ``convert_to_rgb`` and what a viewer shows on a light background.
* 16-bit integer (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, numpy ``uint16``): the full
  ``0..65535`` range maps linearly to ``0..255`` (``round(v * 255 / 65535)``, so 65535 -> 255).
  PIL's own conversion clips at 255 instead, turning most 16-bit images white.
* 32-bit integer (``I``, numpy signed integers): values within ``0..255`` are used as they are
  (8-bit data held in ints); otherwise values within ``0..65535`` use the 16-bit rule; anything
  else (negative values, or above 65535) is min-max scaled to ``0..255``.
* Float (``F``, numpy floats): values within ``[0, 1]`` are multiplied by 255 (the usual
  normalised-float convention); any other range is min-max scaled to ``0..255`` (depth maps,
  scientific TIFFs). NaN and -inf become the minimum, +inf the maximum; a constant image outside
  ``[0, 1]`` becomes black.

Multi-frame files (GIF, TIFF, APNG...) give their first frame.

Only the formats in :data:`IMAGE_FORMATS` are read (PNG, JPEG, WebP, GIF, BMP, TIFF): Pillow knows
many more, some of which hand the data to other programs (EPS to Ghostscript) or to rarely
exercised decoders. A file in another format is refused with an error that names the format.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from florence2.errors import CheckpointError, ImageLoadError, read_checkpoint_json
from florence2.sources import IMAGE_SUFFIXES, find_images, is_image_file  # noqa: F401 - re-exported

# Largest image ``load_image`` accepts by default: 100 megapixels (10000 x 10000), above every
# common camera and scanner output yet far below what would exhaust memory (an RGB image of this
# size is 300 MB decoded). PIL's own process-wide limit is ~89.5 MP (warning) / ~179 MP (error).
MAX_IMAGE_PIXELS = 100_000_000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
# the encoded formats load_image reads (Pillow's names; JPEG includes the MPO files of phone cameras)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PREMULTIPLIED_MODES = ("RGBa", "La")
_ALPHA_MODES = ("RGBA", "LA", "PA")


# ---------------------------------------------------------------------------------------------
# Pixel-range helpers (numpy in, uint8 out)
# ---------------------------------------------------------------------------------------------


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    # Integer arithmetic rounds exactly: 65535 -> 255, 257 -> 1, 128 -> 0.
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _scale_min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def _scale_integer(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return _scale_16bit(values)
    return _scale_min_max(values)


def _scale_float(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == values.size and (finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)):
        return np.rint(values.astype(np.float64) * 255.0).clip(0, 255).astype(np.uint8)
    return _scale_min_max(values)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Map an array of any supported dtype to uint8 with the module's documented rules."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return _scale_16bit(values)
    if values.dtype.kind in "iu":
        return _scale_integer(values)
    if values.dtype.kind == "f":
        return _scale_float(values)
    raise ValueError(f"unsupported pixel dtype {values.dtype}")


def _composite_over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _composite_premultiplied_over_white(image: Image.Image) -> Image.Image:
    # Premultiplied colour already holds colour * alpha, so "over white" is colour + 255 - alpha.
    # (PIL cannot even convert "La" to another mode.)
    values = np.asarray(image).astype(np.int32)
    colour, alpha = values[..., :-1], values[..., -1:]
    rgb = np.clip(colour + 255 - alpha, 0, 255).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return Image.fromarray(rgb, "RGB")


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB image following the conversion rules in the module docstring."""
    mode = image.mode
    if mode in _PREMULTIPLIED_MODES:
        return _composite_premultiplied_over_white(image)
    if _has_transparency(image):
        return _composite_over_white(image)
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT_MODES:
        grey = _scale_16bit(np.asarray(image))
    elif mode == "I":
        grey = _scale_integer(np.asarray(image))
    elif mode == "F":
        grey = _scale_float(np.asarray(image))
    else:
        return image.convert("RGB")
    return Image.fromarray(grey, "L").convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the array has zero size {array.shape}")
    pixels = np.ascontiguousarray(_to_uint8(array))
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[-1] == 3 else "RGBA")
    return Image.fromarray(pixels, mode)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return repr(filename) if filename else "<PIL image>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    name = getattr(source, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"image {name} has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"image {name} is too large: {width}x{height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels} (possible decompression bomb; pass a larger max_pixels to allow it)"
        )


def _bomb_error(name: str, error: Exception) -> ImageLoadError:
    return ImageLoadError(
        f"image {name} is too large for PIL's process-wide limit PIL.Image.MAX_IMAGE_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS}): {error}"
    )


def _finish(image: Image.Image, name: str, max_pixels: int | None, owned: bool = False) -> Image.Image:
    """Check the size, decode fully, apply EXIF orientation and convert to RGB. ``owned``: the image
    was opened here, so it may be changed in place (one full-size copy fewer while decoding)."""
    _check_pixels(image.size, max_pixels, name)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb_error(name, error) from error
    except Exception as error:  # any decoder failure on bad data is a broken image
        raise ImageLoadError(f"image {name} is truncated or corrupt: {error}") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's "Corrupt EXIF data" warnings: handled below
            oriented = ImageOps.exif_transpose(image, in_place=owned)
    except Exception:
        # A broken EXIF block should not make an otherwise fine photo unreadable: keep the pixels
        # as stored.
        oriented = image
    if oriented is not None:
        image = oriented
    try:
        return _to_rgb(image)
    except Exception as error:
        raise ImageLoadError(f"image {name} (mode {image.mode}) cannot be converted to RGB: {error}") from error


@contextlib.contextmanager
def _pil_bomb_warnings(max_pixels: int | None) -> Iterator[None]:
    # With max_pixels set, our check (done before decoding) replaces PIL's soft warning; with
    # max_pixels=None, PIL's process-wide limit is the only one left, so its warning is fatal.
    with warnings.catch_warnings():
        action = "ignore" if max_pixels is not None else "error"
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _sniff_format(fp: IO[bytes], start: int | None) -> str | None:
    """The format Pillow would take the data for, judged from its first bytes only (nothing is
    decoded or handed to another program); None when no format claims it."""
    if start is None:
        return None
    try:
        fp.seek(start)
        prefix = fp.read(16)
    except Exception:
        return None
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:
            continue
    return None


def _tell(fp: IO[bytes]) -> int | None:
    try:
        return fp.tell() if fp.seekable() else None
    except Exception:
        return None


def _open_and_finish(fp: IO[bytes], name: str, max_pixels: int | None) -> Image.Image:
    start = _tell(fp)
    with _pil_bomb_warnings(max_pixels):
        try:
            image = Image.open(fp, formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _bomb_error(name, error) from error
        except UnidentifiedImageError as error:
            other = _sniff_format(fp, start)
            if other is not None and other not in IMAGE_FORMATS:
                raise ImageLoadError(
                    f"{name} is in a format not read here (it looks like {other}); "
                    f"only {', '.join(IMAGE_FORMATS)} images are read"
                ) from error
            raise ImageLoadError(f"{name} is not an image in a format PIL can read") from error
        except Exception as error:
            raise ImageLoadError(f"image {name} cannot be read: {error}") from error
        with image:
            return _finish(image, name, max_pixels, owned=True)


def _load_path(path: Path, max_pixels: int | None) -> Image.Image:
    name = repr(str(path))
    if path.is_dir():
        raise ImageLoadError(f"image path {name} is a directory, not a file")
    try:
        file = open(path, "rb")
    except FileNotFoundError as error:
        raise ImageLoadError(f"image file {name} does not exist") from error
    except OSError as error:
        raise ImageLoadError(f"image file {name} cannot be opened: {error}") from error
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ImageLoadError(f"image file {name} is empty (0 bytes)")
        return _open_and_finish(file, name, max_pixels)


def load_image(source: ImageSource, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Load an image as a new RGB ``PIL.Image.Image``, with EXIF orientation applied.

    Args:
        source: a path (``str`` or ``os.PathLike``); encoded file bytes (``bytes``, ``bytearray``,
            ``memoryview``); a binary file object (read from its current position, left open); a
            ``PIL.Image.Image`` (never modified; its EXIF orientation is applied too); or a numpy
            array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (RGBA), normally uint8
            (bool, integer and float arrays follow the rules in the module docstring).
        max_pixels: refuse images with more than this many pixels (``width * height``), checked
            from the file header before any pixel is decoded. ``None`` disables this check; PIL's
            process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` then applies (its decompression-bomb warning
            and error both raise ``ImageLoadError``). Images above twice PIL's limit (~179 MP by
            default) are refused by PIL whatever ``max_pixels`` says.

    Returns:
        A new RGB image, detached from any file; transparency is composited over white.

    Raises:
        ImageLoadError: missing file, directory, empty input, unknown format, truncated or corrupt
            data, zero-size image, too many pixels, or an unsupported array shape or dtype.
        TypeError: ``source`` is none of the supported types.
    """
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError("image bytes are empty (0 bytes)")
        return _open_and_finish(io.BytesIO(bytes(source)), _describe(source), max_pixels)
    if isinstance(source, Image.Image):
        name = _describe(source)
        with _pil_bomb_warnings(max_pixels):
            return _finish(source, name, max_pixels)
    if isinstance(source, np.ndarray):
        name = _describe(source)
        if source.ndim >= 2:
            _check_pixels((source.shape[1], source.shape[0]), max_pixels, name)
        try:
            image = _array_to_image(source)
        except ValueError as error:
            raise ImageLoadError(f"array {name} is not an image: {error}") from error
        return _to_rgb(image)
    if hasattr(source, "read"):
        return _open_and_finish(source, _describe(source), max_pixels)  # type: ignore[arg-type]
    raise TypeError(
        "image source must be a path, bytes, a binary file object, a PIL image or a numpy array, "
        f"got {type(source).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


class ImageBatch(NamedTuple):
    """Output of ``ImageProcessor.preprocess``.

    Attributes:
        pixel_values: ``(B, 3, H, W)`` float32 tensor, the model's image input.
        image_sizes: ``(width, height)`` of each loaded image (EXIF-rotated, before resizing), the
            size that model coordinates are mapped back to.
    """

    pixel_values: torch.Tensor
    image_sizes: list[tuple[int, int]]


@dataclass(frozen=True)
class PreparedImage:
    """One image already turned into model input (``ImageProcessor.prepare``): loading, decoding
    and resizing done, e.g. on a background worker, and the full-size pixels let go.

    ``predict`` and ``preprocess`` take it wherever they take an image, with the same results."""

    pixel_values: torch.Tensor  # (3, H, W) float32, normalised
    size: tuple[int, int]  # (width, height) of the original image, for mapping coordinates back


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise ValueError(f"{key} must be a number or 3 numbers, got {value!r}")


def _size_dict(value: Any, key: str) -> tuple[int, int] | None:
    """Read a CLIP size entry as (height, width); None when it is a shortest-edge size."""
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int) or (isinstance(value, dict) and "shortest_edge" in value):
        return None
    raise ValueError(f"{key} must be {{'height': H, 'width': W}}, got {value!r}")


@dataclass(frozen=True)
class ImageProcessor:
    """Florence-2 image preprocessing: any image source -> normalised ``(B, 3, H, W)`` float32.

    Each image is loaded with ``load_image`` (RGB, EXIF-rotated), resized with PIL to exactly
    ``size`` (aspect ratio not kept, as the reference ``CLIPImageProcessor`` with ``size={height,
    width}`` and ``do_center_crop=False``), converted to float32, multiplied by ``rescale_factor``
    and normalised per channel: ``(x - mean) / std``.

    Attributes:
        size: output ``(height, width)`` in pixels.
        mean: per-channel RGB mean, applied after rescaling.
        std: per-channel RGB standard deviation.
        rescale_factor: multiplier from 0..255 pixel values to the normalised range.
        resample: PIL resampling filter (``PIL.Image.Resampling``; 3 = bicubic).

    Use ``processor(images)`` for the pixel values only, or ``processor.preprocess(images)`` for
    the pixel values together with each image's original ``(width, height)``.
    """

    size: tuple[int, int] = (768, 768)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be (height, width) with positive values, got {self.size!r}")
        mean, std = _triple(self.mean, "mean"), _triple(self.std, "std")
        if any(s == 0 for s in std):
            raise ValueError(f"std must not contain zeros, got {self.std!r}")
        try:
            resample = int(Image.Resampling(int(self.resample)))
        except ValueError as error:
            raise ValueError(f"resample must be a PIL.Image.Resampling value, got {self.resample!r}") from error
        # Frozen dataclass: normalise list inputs (e.g. from JSON) to hashable tuples.
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "rescale_factor", float(self.rescale_factor))
        object.__setattr__(self, "resample", resample)

    def _pixel_values(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> ``(3, H, W)`` float32 tensor."""
        height, width = self.size
        resized = image.resize((width, height), resample=self.resample)
        x = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        x = x.to(torch.float32) * self.rescale_factor
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std

    def preprocess(
        self, images: ImageSource | Sequence[ImageSource], *, max_pixels: int | None = MAX_IMAGE_PIXELS
    ) -> ImageBatch:
        """Load and preprocess one image or a list of images.

        Args:
            images: one image source (anything ``load_image`` accepts) or a list/tuple of them.
            max_pixels: passed to ``load_image``.

        Returns:
            ``ImageBatch(pixel_values, image_sizes)``: a ``(B, 3, H, W)`` float32 tensor (``B = 1``
            for a single image) and the ``(width, height)`` of every loaded image.
        """
        sources = list(images) if isinstance(images, (list, tuple)) else [images]
        if not sources:
            raise ValueError("no images given")
        height, width = self.size
        pixel_values = torch.empty((len(sources), 3, height, width), dtype=torch.float32)
        image_sizes = []
        for index, source in enumerate(sources):
            prepared = source if isinstance(source, PreparedImage) else self.prepare(source, max_pixels=max_pixels)
            if tuple(prepared.pixel_values.shape) != (3, height, width):
                raise ValueError(
                    f"a prepared image of shape {tuple(prepared.pixel_values.shape)} given to a processor "
                    f"of size {height}x{width}"
                )
            image_sizes.append(prepared.size)
            pixel_values[index] = prepared.pixel_values
        return ImageBatch(pixel_values, image_sizes)

    def prepare(self, source: ImageSource, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> PreparedImage:
        """Load one image and turn it into model input; the decoded full-size image is not kept."""
        image = load_image(source, max_pixels=max_pixels)
        return PreparedImage(self._pixel_values(image), image.size)

    def __call__(
        self, images: ImageSource | Sequence[ImageSource], *, max_pixels: int | None = MAX_IMAGE_PIXELS
    ) -> torch.Tensor:
        """Return only the ``(B, 3, H, W)`` float32 pixel values of ``preprocess(images)``."""
        return self.preprocess(images, max_pixels=max_pixels).pixel_values

    # -- preprocessor_config.json ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageProcessor:
        """Build from a ``CLIPImageProcessor`` config dict; unknown keys are ignored.

        Raises:
            CheckpointError: a value is malformed, or the config asks for a pipeline other than a
                fixed-size direct resize (``do_resize`` false, a ``shortest_edge`` size, or a
                centre crop that is not a no-op); no official Florence-2 checkpoint does that.
        """
        try:
            if not config.get("do_resize", True):
                raise CheckpointError("do_resize=false is not supported: Florence-2 needs a fixed input size")
            raw_size = config.get("size", {"height": 768, "width": 768})
            size = _size_dict(raw_size, "size")
            if size is None:
                raise CheckpointError(
                    f"size={raw_size!r} (resize the shortest edge, keeping the aspect ratio) is not "
                    "supported: only a direct resize to {'height': H, 'width': W} is, as in the official "
                    "Florence-2 checkpoints"
                )
            if config.get("do_center_crop", False):
                crop = _size_dict(config.get("crop_size", {"height": 224, "width": 224}), "crop_size")
                if crop != size:
                    raise CheckpointError(
                        f"do_center_crop=true with crop_size={config.get('crop_size')!r} different from "
                        f"size={raw_size!r} is not supported"
                    )
            rescale_factor = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
            if config.get("do_normalize", True):
                mean = _triple(config.get("image_mean", IMAGENET_MEAN), "image_mean")
                std = _triple(config.get("image_std", IMAGENET_STD), "image_std")
            else:
                mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            resample = config.get("resample")
            resample = int(Image.Resampling.BICUBIC) if resample is None else int(resample)
            return cls(size=size, mean=mean, std=std, rescale_factor=rescale_factor, resample=resample)
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(f"invalid image preprocessor config: {error}") from error

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageProcessor:
        """Read ``preprocessor_config.json`` from a checkpoint folder (or that file's own path).

        A folder without the file gives the defaults, which are those of the official checkpoints.

        Raises:
            CheckpointError: the folder does not exist, or the file is not valid JSON or not a
                supported config (see ``from_dict``).
        """
        path = Path(folder)
        if path.is_dir():
            path = path / PREPROCESSOR_CONFIG_NAME
            if not path.exists():
                return cls()
        elif not path.is_file():
            raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
        config = read_checkpoint_json(path)
        try:
            return cls.from_dict(config)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from error

    def to_dict(self, *, image_seq_length: int | None = None) -> dict[str, Any]:
        """Return a ``CLIPImageProcessor``-compatible config dict (as in the official checkpoints).

        Args:
            image_seq_length: number of image tokens the model produces (577 for 768x768 inputs),
                written for the transformers-native ``Florence2Processor``; left out when None.
        """
        height, width = self.size
        config: dict[str, Any] = {
            "crop_size": {"height": height, "width": width},
            "do_center_crop": False,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": list(self.mean),
            "image_processor_type": "CLIPImageProcessor",
            "image_std": list(self.std),
            "processor_class": "Florence2Processor",
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"height": height, "width": width},
        }
        if image_seq_length is not None:
            config["image_seq_length"] = int(image_seq_length)
        return config

    def save_pretrained(self, folder: str | os.PathLike, *, image_seq_length: int | None = None) -> Path:
        """Write ``preprocessor_config.json`` into ``folder`` (created if needed); return its path."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        path = path / PREPROCESSOR_CONFIG_NAME
        text = json.dumps(self.to_dict(image_seq_length=image_seq_length), indent=2, sort_keys=True)
        path.write_text(text + "\n", encoding="utf-8")
        return path
