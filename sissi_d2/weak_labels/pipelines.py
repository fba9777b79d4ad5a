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
becomes 1363..5112 px. ``cell_size`` is a linear factor: 2.0 means cells twice as long (four
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
    seed_image: str = "denoised",
    recon_image: str = "denoised",
    pad: float = 2.0,
    min_area: float = 400.0,
    max_area: float = 1500.0,
    nms_iou: float = 0.15,
):
    """Spread ("alive") cells: marker-controlled watershed (paper appendix A).

    gamma -> CLAHE -> {skeleton of an inverted adaptive threshold (background ridge markers),
    Sobel magnitude, opening/closing by reconstruction -> Otsu foreground, h-maxima seeds
    (ImageJ Find Maxima, noise tolerance)} -> watershed of the gradient with minima imposed at
    the seeds and the background skeleton -> regions inside the foreground -> padded boxes,
    box-area window, NMS. Lengths and areas are given at 640x480 and scaled by ``size_scale``.
    Scores are 1.

    Wiring the appendix leaves open: the seeds (``seed_image``) and the reconstruction
    (``recon_image``) use the median+bilateral image ("denoised"; "clahe" = the CLAHE image,
    seeds may also use "reconstruction"): CLAHE with clip 15 amplifies noise so much that its
    maxima fire everywhere and the erosion eats cells. The skeleton is a background marker only
    outside the foreground: an inverted threshold with C = 0 marks half of any flat cell.
    """
    from skimage.morphology import h_maxima, skeletonize
    from skimage.segmentation import watershed

    for name, value, allowed in (("seed_image", seed_image, ("denoised", "clahe", "reconstruction")),
                                 ("recon_image", recon_image, ("denoised", "clahe"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    gray = to_gray8(image)
    h, w = gray.shape
    s = size_scale(gray.shape, cell_size)
    if min(h, w) < 8 or int(gray.max()) == int(gray.min()):
        return _empty()

    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    v = cv2.LUT(gray, lut)
    tiles = max(1, min(int(clahe_tiles), h // 2, w // 2))
    v = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(tiles, tiles)).apply(v)

    # external (background) markers: skeleton of what is darker than its neighbourhood
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
    base = m if recon_image == "denoised" else v
    obr = _reconstruct_dilate(cv2.erode(base, se).astype(np.float64), base.astype(np.float64))
    inv = 255.0 - obr
    obrcbr = 255.0 - _reconstruct_dilate(255.0 - cv2.dilate(obr.astype(np.float32), se), inv)
    t = _otsu(obrcbr)
    if t is None:
        return _empty()
    foreground = obrcbr > t
    if not foreground.any():
        return _empty()

    # seeds: maxima standing out by more than the noise tolerance (ImageJ "Find Maxima")
    seed_source = {"reconstruction": lambda: np.clip(obrcbr, 0, 255).astype(np.uint8),
                   "denoised": lambda: m, "clahe": lambda: v}[seed_image]()
    seeds = h_maxima(seed_source, int(round(noise_tolerance))).astype(bool)
    seeds &= foreground
    seed_labels, n_seeds = ndi.label(seeds, structure=np.ones((3, 3)))
    if n_seeds == 0:
        return _empty()
    # background markers: the skeleton where it lies in the background (the lines between
    # cells); inside the foreground it follows texture and would cut cells apart
    background_marker = skeleton & ~foreground
    markers = seed_labels.copy()
    markers[background_marker] = n_seeds + 1
    surface = _impose_minima(grad, seeds | background_marker)
    labels = watershed(surface, markers)
    labels[(labels == n_seeds + 1) | ~foreground] = 0

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
# phase: dark cell bodies + texture, for phase-contrast images (ours, not in the paper)
# ---------------------------------------------------------------------------------------------
@WEAK_LABEL_PIPELINE_REGISTRY.register()
def phase(image, cell_size: float = 1.0, **kwargs):
    return phase_boxes(image, cell_size, **kwargs)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _smooth_background(gray: np.ndarray, median_size: float, sigma: float) -> np.ndarray:
    """Median then Gaussian background (float32). The Gaussian runs at a reduced resolution:
    the background is smooth, and full-size kernels of huge images would take minutes."""
    h, w = gray.shape
    bg = cv2.medianBlur(gray, min(_odd(median_size), 255))
    factor = max(1, min(int(sigma // 4), h // 8, w // 8))
    if factor > 1:
        bg = cv2.resize(bg, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    bg = cv2.GaussianBlur(bg.astype(np.float32), (0, 0), max(0.5, sigma / factor))
    if factor > 1:
        bg = cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)
    return bg


def _background_texture(sd: np.ndarray, floor: float) -> float:
    """Mode of the local standard deviation: the texture level of empty background."""
    hi = float(np.percentile(sd, 99.0))
    if not np.isfinite(hi) or hi <= 0:
        return float(floor)
    hist, edges = np.histogram(sd, bins=256, range=(0.0, hi))
    hist = np.convolve(hist, np.ones(3) / 3.0, mode="same")
    i = int(np.argmax(hist))
    return max(float(floor), 0.5 * float(edges[i] + edges[i + 1]))


def phase_boxes(
    image: np.ndarray,
    cell_size: float = 1.0,
    *,
    polarity: str = "dark",
    bg_median: float = 17.0,
    bg_sigma: float = 22.0,
    texture_window: float = 2.7,
    texture_k: float = 5.0,
    close_radius: float = 1.1,
    open_radius: float = 1.6,
    body_sigma: float = 2.2,
    body_k: float = 2.5,
    min_body_area: float = 59.0,
    max_growth: float = 10.8,
    min_area: float = 176.0,
    keep_orphans: bool = True,
    orphan_min_solidity: float = 0.8,
    orphan_weight: float = 0.5,
    shrink: float = 1.1,
    score_half_area: float = 600.0,
    noise_floor: float = 0.5,
    return_labels: bool = False,
):
    """Phase-contrast cells: seeds from dark bodies, extent from texture (ours).

    In phase contrast a spread cell is a dark body (nucleus, granules, cytoplasm) with a
    bright halo along its edge; the background is flat with small debris. Steps:

    1. ``d`` = image minus a smooth background (median ``bg_median`` then Gaussian ``bg_sigma``).
    2. Foreground = local standard deviation of ``d`` (window ``texture_window``) above
       ``texture_k`` times the background texture level (the histogram mode, so the threshold
       adapts to each image's noise), closed, holes filled, opened, small parts dropped.
    3. Bodies = foreground where Gaussian(``d``, ``body_sigma``) is darker than ``body_k``
       background levels; components of at least ``min_body_area`` px are the seeds (the halo
       between touching cells cuts their bodies apart).
    4. Seeded watershed on a flat surface inside the foreground (geodesic Voronoi), each cell
       limited to ``max_growth`` px around its body: the halo belongs to the cell, a faint
       neighbour's texture does not.
    5. Foreground parts without any body ("orphans": rounded, bright cells) are kept when
       compact (solidity >= ``orphan_min_solidity``), with their score times ``orphan_weight``.
    6. Boxes = region extents shrunk by ``shrink`` px per side (the halo overshoots the outline).
       Score = a / (a + ``score_half_area``) with a = region area x solidity in reference px:
       large, convex regions are whole cells; small or ragged ones are fragments or debris.

    All lengths / areas are at 640x480 and scaled by ``size_scale`` (defaults tuned on the 25
    Usiigaci training images at 1024x1022, s = 1.85). ``polarity="bright"`` looks for bright
    bodies instead (e.g. inverted phase or dark-field). ``return_labels=True`` also returns the
    label image (for inspection).
    """
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    from skimage.segmentation import watershed

    gray = to_gray8(image)
    h, w = gray.shape
    s = size_scale(gray.shape, cell_size)
    empty = _empty()
    if min(h, w) < 8 or int(gray.max()) == int(gray.min()):
        return (*empty, np.zeros((h, w), np.int32)) if return_labels else empty

    f = gray.astype(np.float32)
    bg = _smooth_background(gray, bg_median * s, bg_sigma * s)
    d = f - bg
    if polarity == "bright":
        d = -d

    win = _odd(texture_window * s)
    mean = cv2.blur(d, (win, win))
    sd = np.sqrt(np.maximum(cv2.blur(d * d, (win, win)) - mean * mean, 0.0))
    level = _background_texture(sd, noise_floor)

    fg = (sd > texture_k * level).astype(np.uint8)
    rc = max(1, int(round(close_radius * s)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, _disk(rc))
    fg = ndi.binary_fill_holes(fg).astype(np.uint8)
    ro = max(1, int(round(open_radius * s)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _disk(ro)).astype(bool)
    a_min = min_area * s * s
    fg_lab, n_fg = ndi.label(fg, structure=np.ones((3, 3)))
    if n_fg == 0:
        return (*empty, np.zeros((h, w), np.int32)) if return_labels else empty
    fg_sizes = np.bincount(fg_lab.ravel())
    fg = fg & (fg_sizes[fg_lab] >= a_min)

    body = (cv2.GaussianBlur(d, (0, 0), max(0.5, body_sigma * s)) < -body_k * level) & fg
    body_lab, n_body = ndi.label(body, structure=np.ones((3, 3)))
    if n_body:
        sizes = np.bincount(body_lab.ravel())
        small = sizes < min_body_area * s * s
        small[0] = False
        body_lab[small[body_lab]] = 0
    labels = np.zeros((h, w), np.int32)
    n_cells = 0
    if body_lab.any():
        labels = watershed(np.zeros((h, w), np.float32), body_lab, mask=fg).astype(np.int32)
        if max_growth is not None and max_growth > 0:
            dist = cv2.distanceTransform((body_lab == 0).astype(np.uint8), cv2.DIST_L2, 5)
            labels[dist > max_growth * s] = 0
        n_cells = int(labels.max())

    is_orphan = np.zeros(0, bool)
    if keep_orphans:
        seeded = np.zeros(n_fg + 1, bool)
        seeded[np.unique(fg_lab[body_lab > 0])] = True
        orphan_mask = fg & ~seeded[fg_lab]
        orph_lab, n_orph = ndi.label(orphan_mask, structure=np.ones((3, 3)))
        if n_orph:
            labels[orph_lab > 0] = orph_lab[orph_lab > 0] + n_cells
            is_orphan = np.zeros(n_cells + n_orph + 1, bool)
            is_orphan[n_cells + 1:] = True

    boxes, scores = [], []
    shrink_px = shrink * s
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == idx
        area = float(obj.sum())
        if area < a_min:
            continue
        contours, _ = cv2.findContours(obj.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.contourArea(cv2.convexHull(np.vstack(contours))) if contours else 0.0
        solidity = min(1.0, area / hull) if hull > 0 else 1.0
        orphan = idx < len(is_orphan) and is_orphan[idx]
        if orphan and solidity < orphan_min_solidity:
            continue
        a_ref = area * solidity / (s * s)
        score = a_ref / (a_ref + score_half_area)
        if orphan:
            score *= orphan_weight
        ys, xs = sl
        x0, y0, x1, y1 = xs.start, ys.start, xs.stop, ys.stop
        sx = min(shrink_px, max(0.0, (x1 - x0 - 1) / 2.0))
        sy = min(shrink_px, max(0.0, (y1 - y0 - 1) / 2.0))
        boxes.append([x0 + sx, y0 + sy, x1 - sx, y1 - sy])
        scores.append(score)
    out = _finish(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64), gray.shape)
    return (*out, labels) if return_labels else out


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------
def available_pipelines() -> list[str]:
    return sorted(name for name, _ in WEAK_LABEL_PIPELINE_REGISTRY)


def drop_small_boxes(labels: dict, fraction: float) -> tuple[dict, float]:
    """A label SET without its boxes smaller than ``fraction`` x the set's median box area.

    ``labels``: image key -> (boxes Nx4 XYXY, scores N). Returns the filtered dict (every key kept,
    possibly with no box) and the area threshold in px² (0 when the set holds no box). A set-level
    rule, scale-free: a per-image minimum area (``min_area``) must be set in pixels for one cell
    size, while this one follows the labels. Why it exists: pipelines box debris specks much
    smaller than a cell; a detector trained on them learns specks as cells, and the pipeline's
    own scores, which rank them last, never reach training (docs/experiments.md, "The demo's test
    set and its Oracle")."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    boxes_of = [np.asarray(b, np.float64).reshape(-1, 4) for b, _ in labels.values()]
    areas = [np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) for b in boxes_of]
    every = np.concatenate(areas) if areas else np.zeros(0)
    threshold = float(fraction * np.median(every)) if len(every) else 0.0
    out = {}
    for (key, (boxes, scores)), area in zip(labels.items(), areas):
        keep = area >= threshold
        out[key] = (np.asarray(boxes, np.float32).reshape(-1, 4)[keep], np.asarray(scores, np.float32).reshape(-1)[keep])
    return out, threshold


def make_weak_labels(image: np.ndarray, pipeline: str = "alive", cell_size: float = 1.0, **kwargs):
    """Run the registered pipeline ``pipeline`` on ``image`` -> (boxes Nx4 XYXY, scores N)."""
    names = available_pipelines()
    if not isinstance(pipeline, str) or pipeline not in names:
        raise ValueError(f"Unknown weak-label pipeline {pipeline!r}; valid names: {', '.join(names)}")
    fn: Callable = WEAK_LABEL_PIPELINE_REGISTRY.get(pipeline)
    boxes, scores = fn(image, cell_size=cell_size, **kwargs)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1))
