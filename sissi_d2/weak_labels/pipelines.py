"""Weak box labels from classical image processing (SISSI paper, appendix A).

Every pipeline is a pure function ``image -> (boxes, scores)``:

* ``image``: HxW gray or HxWx3 BGR / HxWx4 BGRA, any numeric dtype (deeper than 8 bit is
  stretched to uint8 between the 0.5 and 99.5 percentiles, as ``image_io.to_uint8`` does).
* ``boxes``: Nx4 float32 XYXY in absolute pixels, clipped to the image.
* ``scores``: N float32 in (0, 1]: 1.0 where a pipeline has no notion of confidence.

An image where a pipeline finds nothing gives ``(zeros((0, 4)), zeros(0))``.

Sizes. The paper's pixel parameters were chosen on 640x480 CellLab images. Every length is
multiplied by ``s = cell_size * sqrt(H * W / (640 * 480))`` and every area by ``s**2``
(``size_scale``), so a 1024x1022 image gets s = 1.85 and the alive area window 400..1500 px
becomes 1365..5120 px. ``cell_size`` is a linear factor: 2.0 means cells twice as long (four
times the area) as in the paper's images at the same field of view.

The three paper pipelines ("alive", "inhibited", "dead") follow ``docs/method.md``. "phase" is
ours, tuned for phase-contrast fibroblasts (Usiigaci) where the paper's pipelines fail; see
``docs/weak_labels.md`` for its design and measured quality.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
from fvcore.common.registry import Registry
from scipy import ndimage as ndi

__all__ = [
    "WEAK_LABEL_PIPELINE_REGISTRY",
    "alive_boxes",
    "inhibited_boxes",
    "dead_boxes",
    "phase_boxes",
    "make_weak_labels",
    "available_pipelines",
    "size_scale",
    "nms",
    "to_gray8",
]

WEAK_LABEL_PIPELINE_REGISTRY = Registry("SISSI_WEAK_LABEL_PIPELINE")
WEAK_LABEL_PIPELINE_REGISTRY.__doc__ = """
Registry of weak-label pipelines: name -> function(image, cell_size=1.0, **kw) -> (boxes, scores).
"""

REFERENCE_SHAPE = (480, 640)  # (H, W) of the paper's CellLab images


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def to_gray8(image: np.ndarray) -> np.ndarray:
    """HxW uint8 from gray / BGR / BGRA of any numeric dtype."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise ValueError(f"expected HxW, HxWx3 (BGR) or HxWx4 (BGRA) image, got {image.shape}")
        image = image[:, :, :3]
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D gray or 3D colour image, got shape {image.shape}")
    if image.dtype != np.uint8:
        from ..data.image_io import to_uint8

        image = to_uint8(image)
    return np.ascontiguousarray(image)


def size_scale(shape, cell_size: float = 1.0) -> float:
    """Linear factor between the paper's 640x480 pixel parameters and this image."""
    if not (cell_size > 0 and math.isfinite(cell_size)):
        raise ValueError(f"cell_size must be a positive number, got {cell_size!r}")
    h, w = int(shape[0]), int(shape[1])
    return float(cell_size) * math.sqrt(h * w / float(REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1]))


def _odd(x: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(x)))
    return k if k % 2 == 1 else k + 1


def _box_iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = a + b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS. Returns kept indices, best score first (ties: larger box first)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((-areas, -scores))  # primary: score desc, secondary: area desc
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[_box_iou_one(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _finish(boxes, scores, shape, min_area=None, max_area=None, nms_iou=None):
    """Clip, drop degenerate / out-of-range boxes (by box area), NMS; float32 outputs."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return _empty()
    h, w = shape[:2]
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = bw * bh
    ok = (bw > 0) & (bh > 0)
    if min_area is not None:
        ok &= area >= min_area
    if max_area is not None:
        ok &= area <= max_area
    boxes, scores = boxes[ok], scores[ok]
    if nms_iou is not None and len(boxes):
        keep = nms(boxes, scores, nms_iou)
        boxes, scores = boxes[keep], scores[keep]
    else:
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
    if len(boxes) == 0:
        return _empty()
    return boxes.astype(np.float32), scores.astype(np.float32)


def _label_boxes(labels: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """XYXY extent (pixel edges: x1 = last column + 1) of every label 1..max, padded."""
    out = []
    for sl in ndi.find_objects(labels):
        if sl is None:
            continue
        ys, xs = sl
        out.append([xs.start - pad, ys.start - pad, xs.stop + pad, ys.stop + pad])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _reconstruct_dilate(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grayscale reconstruction by dilation (uint8 or float)."""
    from skimage.morphology import reconstruction

    marker = np.minimum(marker, mask)
    return reconstruction(marker.astype(np.float64), mask.astype(np.float64), method="dilation")


def _impose_minima(surface: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """MATLAB-style ``imimposemin``: regional minima of the result are exactly ``markers``."""
    from skimage.morphology import reconstruction

    surface = surface.astype(np.float64)
    lo, hi = float(surface.min()), float(surface.max())
    span = (hi - lo) or 1.0
    g = (surface - lo) / span  # [0, 1]
    fm = np.where(markers, 0.0, 2.0)
    mask = np.minimum(g + 1e-3, fm)
    return reconstruction(fm, mask, method="erosion")


def _otsu(values: np.ndarray) -> float | None:
    """Otsu threshold, or None when the values are (nearly) constant."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values)
    if values.size == 0 or float(values.max()) - float(values.min()) < 1e-6:
        return None
    return float(threshold_otsu(values))


# ---------------------------------------------------------------------------------------------
# alive: marker-controlled watershed
# ---------------------------------------------------------------------------------------------
@WEAK_LABEL_PIPELINE_REGISTRY.register()
def alive(image, cell_size: float = 1.0, **kwargs):
    return alive_boxes(image, cell_size, **kwargs)


def alive_boxes(
    image: np.ndarray,
    cell_size: float = 1.0,
    *,
    gamma: float = 1.5,
    clahe_clip: float = 15.0,
    clahe_tiles: int = 20,
    median_ksize: int = 5,
    bilateral: tuple = (9, 75, 75),
    adaptive_block: int = 29,
    adaptive_c: float = 0.0,
    recon_size: float = 20.0,
    noise_tolerance: float = 50.0,
    pad: float = 2.0,
    min_area: float = 400.0,
    max_area: float = 1500.0,
    nms_iou: float = 0.15,
):
    """Spread ("alive") cells: marker-controlled watershed (paper appendix A).

    gamma -> CLAHE -> {skeleton of an inverted adaptive threshold (background ridge markers),
    Sobel magnitude, opening/closing by reconstruction -> Otsu foreground, h-maxima seeds
    (ImageJ Find Maxima, noise tolerance)} -> watershed of the gradient with imposed minima,
    inside the foreground -> padded boxes, box-area window, NMS. Lengths and areas are given at
    640x480 and scaled by ``size_scale``. Scores are 1.
    """
    from skimage.morphology import h_maxima, skeletonize
    from skimage.segmentation import watershed

    gray = to_gray8(image)
    h, w = gray.shape
    s = size_scale(gray.shape, cell_size)
    if min(h, w) < 8 or int(gray.max()) == int(gray.min()):
        return _empty()

    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    v = cv2.LUT(gray, lut)
    tiles = max(1, min(int(clahe_tiles), h // 2, w // 2))
    v = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(tiles, tiles)).apply(v)

    # external (background) markers: ridges of dark-than-neighbourhood structure
    m = cv2.medianBlur(v, _odd(median_ksize))
    m = cv2.bilateralFilter(m, int(bilateral[0]), float(bilateral[1]), float(bilateral[2]))
    block = _odd(adaptive_block * s)
    thr = cv2.adaptiveThreshold(m, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY_INV,
                                block, float(adaptive_c))
    skeleton = skeletonize(thr > 0)

    gx = cv2.Sobel(v, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(v, cv2.CV_32F, 0, 1)
    grad = cv2.magnitude(gx, gy)

    # opening then closing by reconstruction (objects keep their shape, small detail goes)
    k = max(3, int(round(recon_size * s)))
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    obr = _reconstruct_dilate(cv2.erode(v, se).astype(np.float64), v.astype(np.float64))
    inv = 255.0 - obr
    obrcbr = 255.0 - _reconstruct_dilate(255.0 - cv2.dilate(obr.astype(np.float32), se), inv)
    t = _otsu(obrcbr)
    if t is None:
        return _empty()
    foreground = obrcbr > t
    if not foreground.any():
        return _empty()

    # seeds: maxima standing out by more than the noise tolerance (ImageJ "Find Maxima")
    seeds = h_maxima(v, int(round(noise_tolerance))).astype(bool) & foreground
    seed_labels, n_seeds = ndi.label(seeds, structure=np.ones((3, 3)))
    if n_seeds == 0:
        return _empty()
    background_marker = skeleton & ~seeds
    markers = seed_labels.copy()
    markers[background_marker] = n_seeds + 1
    surface = _impose_minima(grad, seeds | background_marker)
    labels = watershed(surface, markers, mask=foreground)
    labels[labels == n_seeds + 1] = 0

    boxes = _label_boxes(labels, pad=pad * s)
    return _finish(boxes, np.ones(len(boxes)), gray.shape, min_area * s * s, max_area * s * s, nms_iou)


# ---------------------------------------------------------------------------------------------
# inhibited: illumination correction + Canny + connected components
# ---------------------------------------------------------------------------------------------
@WEAK_LABEL_PIPELINE_REGISTRY.register()
def inhibited(image, cell_size: float = 1.0, **kwargs):
    return inhibited_boxes(image, cell_size, **kwargs)


def illumination_correction(gray: np.ndarray, scale: float = 1.0, sizes=range(3, 100, 2),
                            height: float = 10.0, weight: float = 0.9) -> np.ndarray:
    """Alternating sequential filter (open, close) with growing ``size x height`` rectangles
    as the background; return ``gray - weight * bg + mean(weight * bg)`` (float32)."""
    img = gray.astype(np.float32)
    bg = img.copy()
    kh = max(1, int(round(height * scale)))
    for size in sizes:
        kw = max(1, int(round(size * scale)))
        se = cv2.getStructuringElement(cv2.MORPH_RECT, (kw, kh))
        bg = cv2.morphologyEx(bg, cv2.MORPH_OPEN, se, borderType=cv2.BORDER_REFLECT)
        bg = cv2.morphologyEx(bg, cv2.MORPH_CLOSE, se, borderType=cv2.BORDER_REFLECT)
    return img - weight * bg + float(np.mean(weight * bg))


def inhibited_boxes(
    image: np.ndarray,
    cell_size: float = 1.0,
    *,
    canny_sigma: float = 0.1,
    canny_low: float = 0.1,
    canny_high: float = 0.2,
    close_size: int = 2,
    min_area: float = 400.0,
    max_area: float = 80000.0,
    nms_iou: float = 0.15,
):
    """Rounded, contracted ("inhibited") cells: illumination correction -> Canny -> closing
    2x2 -> 8-connected components -> box-area window -> NMS (paper appendix A).

    Canny runs on the corrected image in [0, 1] intensity units (thresholds ``canny_low`` /
    ``canny_high`` on the gradient of that image). Scores are 1.
    """
    from skimage.feature import canny

    gray = to_gray8(image)
    h, w = gray.shape
    s = size_scale(gray.shape, cell_size)
    if min(h, w) < 8 or int(gray.max()) == int(gray.min()):
        return _empty()
    corrected = illumination_correction(gray / np.float32(255.0), scale=s)
    edges = canny(corrected.astype(np.float64), sigma=canny_sigma, low_threshold=canny_low,
                  high_threshold=canny_high)
    edges = edges.astype(np.uint8)
    if close_size > 1:
        edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE,
                                 cv2.getStructuringElement(cv2.MORPH_RECT, (close_size, close_size)))
    labels, n = ndi.label(edges, structure=np.ones((3, 3)))
    if n == 0:
        return _empty()
    boxes = _label_boxes(labels)
    return _finish(boxes, np.ones(len(boxes)), gray.shape, min_area * s * s, max_area * s * s, nms_iou)


# ---------------------------------------------------------------------------------------------
# dead: circle Hough transform
# ---------------------------------------------------------------------------------------------
@WEAK_LABEL_PIPELINE_REGISTRY.register()
def dead(image, cell_size: float = 1.0, **kwargs):
    return dead_boxes(image, cell_size, **kwargs)


def dead_boxes(
    image: np.ndarray,
    cell_size: float = 1.0,
    *,
    dp: float = 10.0,
    min_dist: float = 25.0,
    param1: float = 100.0,
    param2: float = 0.1,
    min_radius: float = 7.0,
    max_radius: float = 15.0,
    pad: float = 10.0,
    max_circles: int | None = None,
):
    """Round ("dead") cells: circle Hough transform, box = circle +/- ``pad`` (paper appendix A).

    OpenCV returns circles by decreasing accumulator votes; the score is that rank mapped to
    (0, 1] (1 = most votes), a usable confidence for AP. Lengths scale with ``size_scale``.
    """
    gray = to_gray8(image)
    h, w = gray.shape
    s = size_scale(gray.shape, cell_size)
    if min(h, w) < 8 or int(gray.max()) == int(gray.min()):
        return _empty()
    r0 = max(1, int(round(min_radius * s)))
    r1 = max(r0 + 1, int(round(max_radius * s)))
    circles = cv2.HoughCircles(gray, cv2.HOUGH_GRADIENT, dp=float(dp), minDist=max(1.0, min_dist * s),
                               param1=float(param1), param2=float(param2), minRadius=r0, maxRadius=r1)
    if circles is None or circles.size == 0:
        return _empty()
    c = np.asarray(circles, dtype=np.float64).reshape(-1, circles.shape[-1])[:, :3]
    if max_circles is not None:
        c = c[: int(max_circles)]
    x, y, r = c[:, 0], c[:, 1], c[:, 2]
    p = pad * s
    boxes = np.stack([x - r - p, y - r - p, x + r + p, y + r + p], axis=1)
    n = len(boxes)
    scores = 1.0 - np.arange(n) / float(n)
    return _finish(boxes, scores, gray.shape)


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def available_pipelines() -> list[str]:
    return sorted(name for name, _ in WEAK_LABEL_PIPELINE_REGISTRY)


def make_weak_labels(image: np.ndarray, pipeline: str = "alive", cell_size: float = 1.0, **kwargs):
    """Run the registered pipeline ``pipeline`` on ``image`` -> (boxes Nx4 XYXY, scores N)."""
    names = available_pipelines()
    if not isinstance(pipeline, str) or pipeline not in names:
        raise ValueError(f"Unknown weak-label pipeline {pipeline!r}; valid names: {', '.join(names)}")
    fn: Callable = WEAK_LABEL_PIPELINE_REGISTRY.get(pipeline)
    boxes, scores = fn(image, cell_size=cell_size, **kwargs)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1))
