"""Test-time augmentation views for pseudo-labels, and their exact inverse on boxes.

SISSI makes pseudo-labels from 20 views of each target image: scales {0.8, 0.9, 1.0, 1.1, 1.2}
x {no flip, left-right, up-down, both} (docs/method.md, "Pseudo-labels"). The authors' code
resized every view back to one input size, so its multi-scale part did almost nothing; here
each view really is resized.

Coordinates are Detectron2's continuous XYXY: the image covers [0, width] x [0, height] and a
pixel i spans [i, i+1]. In that convention cv2.resize (half-pixel centres) scales coordinates
exactly by the per-axis size ratio, and a flip maps x to width - x. A view is made by resizing
first and flipping second, so its boxes are mapped back by undoing the flip in the view's frame
and then dividing by the *actual* per-axis ratio (view_w / width, view_h / height) -- not by the
nominal scale, which differs once the view size has been rounded to whole pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

__all__ = [
    "TTAView",
    "FLIP_MODES",
    "make_views",
    "view_size",
    "apply_view",
    "apply_view_to_boxes",
    "undo_view",
]

# flip name -> (horizontal, vertical)
FLIP_MODES = {"none": (False, False), "h": (True, False), "v": (False, True), "hv": (True, True)}


@dataclass(frozen=True)
class TTAView:
    """One test-time view: resize by ``scale``, then flip left-right / up-down."""

    scale: float
    hflip: bool
    vflip: bool


def make_views(
    scales: Iterable[float] = (0.8, 0.9, 1.0, 1.1, 1.2),
    flips: Iterable[str] = ("none", "h", "v", "hv"),
) -> list[TTAView]:
    """All scale x flip combinations (20 with the defaults), scale-major."""
    flip_pairs = []
    for name in flips:
        if name not in FLIP_MODES:
            raise ValueError(f"unknown flip {name!r}; expected one of {sorted(FLIP_MODES)}")
        flip_pairs.append(FLIP_MODES[name])
    views = []
    for scale in scales:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        views.extend(TTAView(scale, h, v) for h, v in flip_pairs)
    return views


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even; half-up keeps sizes monotonic in the scale.
    return int(math.floor(value + 0.5))


def view_size(view: TTAView, height: int, width: int) -> tuple[int, int]:
    """(height, width) of the view's image, rounded to whole pixels and at least 1."""
    return (
        max(1, _round_half_up(height * view.scale)),
        max(1, _round_half_up(width * view.scale)),
    )


def apply_view(image: np.ndarray, view: TTAView) -> np.ndarray:
    """Resize (bilinear) an HxW or HxWxC image to :func:`view_size`, then flip it."""
    height, width = image.shape[:2]
    out_h, out_w = view_size(view, height, width)
    out = image
    if (out_h, out_w) != (height, width):
        out = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
            out = out[:, :, None]
    if view.hflip:
        out = out[:, ::-1]
    if view.vflip:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be Nx4 XYXY, got shape {arr.shape}")
    return arr


def _flip_boxes(boxes: np.ndarray, hflip: bool, vflip: bool, height: int, width: int):
    out = boxes.copy()
    if hflip:
        out[:, [0, 2]] = width - boxes[:, [2, 0]]
    if vflip:
        out[:, [1, 3]] = height - boxes[:, [3, 1]]
    return out


def apply_view_to_boxes(boxes, view: TTAView, height: int, width: int) -> np.ndarray:
    """Map Nx4 XYXY boxes of the original HxW image into the view's frame (scale, then flip)."""
    boxes = _as_boxes(boxes)
    view_h, view_w = view_size(view, height, width)
    scaled = boxes * np.array([view_w / width, view_h / height] * 2)
    return _flip_boxes(scaled, view.hflip, view.vflip, view_h, view_w)


def undo_view(boxes, view: TTAView, height: int, width: int) -> np.ndarray:
    """Map Nx4 XYXY boxes predicted on a view back to the original HxW frame, clipped to it."""
    boxes = _as_boxes(boxes)
    view_h, view_w = view_size(view, height, width)
    unflipped = _flip_boxes(boxes, view.hflip, view.vflip, view_h, view_w)
    out = unflipped / np.array([view_w / width, view_h / height] * 2)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out
