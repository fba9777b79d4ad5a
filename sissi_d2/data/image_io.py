"""Reading microscopy images of any bit depth and channel count, with errors that name the file.

Detectron2's ``read_image(format="BGR")`` saturates 16-bit images at 255; microscopes write
8-, 12- and 16-bit gray, RGB and RGBA files. Everything here returns ``uint8`` so that one
pixel statistics (PIXEL_MEAN / PIXEL_STD) fits every source.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = [
    "ImageReadError", "read_image_any", "to_uint8", "read_gray8", "read_bgr8", "read_label_image", "read_image_size",
]


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the fix."""


def to_uint8(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """Scale any numeric image to uint8. 8-bit input is returned unchanged; deeper or float
    input is stretched between the given percentiles (as the shared Usiigaci data was made)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    data = image.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0)
    lo, hi = np.percentile(data, [low_pct, high_pct]) if data.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((data - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def read_image_any(path: str) -> np.ndarray:
    """Read an image file as stored (any depth, 1/3/4 channels); raise ImageReadError if not."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(
            f"Image file not found: {path}. Check the dataset folder or the file_name in the labels."
        )
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(
            f"Cannot decode image {path} ({data.size} bytes): the file is truncated, empty or not "
            "an image. Replace it or remove it from the dataset."
        )
    return image


def _drop_alpha_and_gray(image: np.ndarray, path: str) -> np.ndarray:
    """Return a HxW gray image of the stored depth."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        bgr = image[:, :, :3]
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            bgr = bgr.astype(np.float32)
        return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)
    raise ImageReadError(f"Image {path} has shape {image.shape}: expected HxW, HxWx1, HxWx3 or HxWx4.")


def read_gray8(path: str) -> np.ndarray:
    """HxW uint8 grayscale. Colour is converted, alpha dropped, 12/16-bit scaled."""
    return to_uint8(_drop_alpha_and_gray(read_image_any(path), path))


def read_bgr8(path: str) -> np.ndarray:
    """HxWx3 uint8 BGR, the input format of the models (gray replicated to 3 channels)."""
    image = read_image_any(path)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(to_uint8(image[:, :, :3]))
    gray = to_uint8(_drop_alpha_and_gray(image, path))
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def read_label_image(path: str) -> np.ndarray:
    """Instance label image (0 = background, 1..N = objects) as int32, depth preserved."""
    image = read_image_any(path)
    if image.ndim == 3:
        if image.shape[2] == 1 or np.all(image[:, :, :1] == image[:, :, 1:3]):
            image = image[:, :, 0]
        else:
            raise ImageReadError(
                f"Label image {path} has {image.shape[2]} different channels; expected a single-"
                "channel instance label image (0 = background, 1..N = one object each)."
            )
    if not np.issubdtype(image.dtype, np.integer):
        raise ImageReadError(f"Label image {path} has dtype {image.dtype}; expected integers.")
    return image.astype(np.int32)


def _tail_is_complete(path: str, fmt: str | None) -> bool:
    """Cheap truncation check for the formats that have an end marker (PNG IEND, JPEG EOI)."""
    if fmt not in ("PNG", "JPEG"):
        return True
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 64))
        tail = f.read()
    return (b"IEND" in tail) if fmt == "PNG" else (b"\xff\xd9" in tail)


def read_image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels.

    Raises ImageReadError naming the file when it is missing, empty, not an image, or a PNG /
    JPEG whose end is missing (truncated download or copy).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(
            f"Image file not found: {path}. Check the dataset folder or the file_name in the labels."
        )
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"Image {path} is larger than Pillow's safety limit ({e}). Tile it into smaller images "
            "first; whole-slide images do not fit a detector's input anyway."
        ) from e
    except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, OSError, ...
        raise ImageReadError(
            f"Cannot read the header of image {path} ({os.path.getsize(path)} bytes; "
            f"{type(e).__name__}: {e}): the file is empty, truncated or not an image. Replace it "
            "or remove it from the dataset."
        ) from e
    if not _tail_is_complete(path, fmt):
        raise ImageReadError(
            f"Image {path} is truncated (its {fmt} end marker is missing). Copy or download it "
            "again, or remove it from the dataset."
        )
    if width <= 0 or height <= 0:
        raise ImageReadError(f"Image {path} has an empty size {width}x{height}. Replace or remove it.")
    return int(height), int(width)
