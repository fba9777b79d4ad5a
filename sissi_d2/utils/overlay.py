"""Boxes drawn on images for the user tools (predict overlays, label review side by side).

All functions take and return HxWx3 uint8 BGR images (``data.image_io.read_bgr8``) and never
modify their input.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from .atomic import atomic_write_bytes

__all__ = ["GREEN", "MAGENTA", "ORANGE", "CYAN", "draw_boxes", "add_title", "side_by_side", "scale_image",
           "write_png"]

# BGR
GREEN = (60, 220, 60)
MAGENTA = (220, 60, 220)
ORANGE = (0, 150, 255)
CYAN = (230, 200, 0)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected HxW, HxWx3 or HxWx4, got shape {image.shape}")


def draw_boxes(image: np.ndarray, boxes, color=GREEN, thickness: int | None = None) -> np.ndarray:
    """A copy of ``image`` with Nx4 XYXY boxes (continuous pixel coordinates) outlined."""
    out = _as_bgr(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if thickness is None:
        thickness = max(1, int(round(min(out.shape[:2]) / 400)))
    h, w = out.shape[:2]
    for x0, y0, x1, y1 in boxes:
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            continue
        # the box covers pixels [x0, x1); its last pixel column is x1 - 1
        p0 = (int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.floor(y0), 0, h - 1)))
        p1 = (int(np.clip(np.ceil(x1) - 1, 0, w - 1)), int(np.clip(np.ceil(y1) - 1, 0, h - 1)))
        cv2.rectangle(out, p0, p1, tuple(int(c) for c in color), thickness, lineType=cv2.LINE_8)
    return out


def add_title(image: np.ndarray, text: str, color=(255, 255, 255)) -> np.ndarray:
    """``image`` with a black band on top holding ``text`` (kept legible on small images)."""
    image = _as_bgr(image)
    scale = 0.4
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw + 6 > image.shape[1]:  # shrink to fit a small image, down to a still legible size
        scale = max(0.25, scale * (image.shape[1] - 6) / tw)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = np.zeros((th + base + 6, image.shape[1], 3), np.uint8)
    cv2.putText(band, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def side_by_side(images, gap: int = 4) -> np.ndarray:
    """Images left to right, padded to one height, ``gap`` gray pixels between them."""
    images = [_as_bgr(i) for i in images]
    if not images:
        raise ValueError("side_by_side needs at least one image")
    height = max(i.shape[0] for i in images)
    parts = []
    for k, img in enumerate(images):
        if img.shape[0] < height:
            img = np.concatenate([img, np.zeros((height - img.shape[0], img.shape[1], 3), np.uint8)], axis=0)
        if k:
            parts.append(np.full((height, gap, 3), 128, np.uint8))
        parts.append(img)
    return np.concatenate(parts, axis=1)


def scale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Nearest-neighbour resize by ``factor`` (pixels stay sharp when enlarging small images)."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if factor > 1 else cv2.INTER_AREA)


def write_png(path: str, image: np.ndarray) -> str:
    """Write ``image`` as PNG atomically (non-ASCII paths work); returns the path."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, data.tobytes())
    return path
