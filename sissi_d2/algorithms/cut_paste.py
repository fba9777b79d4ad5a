"""Cut-and-paste training images: labelled cells pasted on a canvas, every one with its exact box.

After Kushwaha et al., "Rapid training data creation by synthesizing medical images for
classification and localization" (CVPR workshops 2020): from non-exhaustive centre clicks,
(1) crop a patch of the object's size around each click with a random 0-10 % size variation,
(2) paste a random number of patches on a blank image, with augmentations before and after
pasting and optionally artefact patches as negatives, (3) give each pasted patch its box,
(4) generate the images on the fly and mix in about 10 % real images. A detector trained on such
images never sees an unlabelled cell, which is what non-exhaustive labels otherwise teach it:
SISSI's synthetic-like images (``cloning``) get the same effect by blurring the unlabelled cells
away on the real image instead of moving the labelled ones.

Here, pure functions on NumPy images (no Detectron2; ``data.mappers.SISSICutPasteMapper`` is the
Detectron2 mapper around them):

* :func:`cut_patches`: one :class:`Patch` per box of a labelled image (clicks become boxes in
  ``data.points``): the box plus a margin, so that the size jitter can grow it.
* :func:`make_canvas`: the background. ``blur`` (the default): SISSI's strong Gaussian blur of a
  real target image, which keeps its illumination and grey levels while its cells, labelled or
  not, fade into smudges; ``median``: a median filter wider than the cells, sharper but it leaves
  remnants of the largest cells and of dense clusters (unlabelled cells, again); ``blank``: the
  paper's empty image, one grey level (the image's median), no real background at all.
* :func:`synthesize`: ``count`` patches (and ``negatives`` artefact patches, without a box), each
  cropped with the size jitter, optionally flipped and rotated by a multiple of 90 degrees,
  placed where it overlaps earlier patches by at most ``max_overlap`` of either's area and
  inside the canvas, pasted with a ``feather``-ed edge (default), a ``hard`` edge or by
  ``seamless`` cloning. The box of a pasted cell is the extent of its pasted pixels: exact,
  never outside the canvas. Rotations other than multiples of 90 degrees would need the extent
  of a rotated rectangle, up to 41 % larger than the cell (the project measured a detector
  trained on such boxes drawing boxes ~10 % too large, configs/cpu/Base-Recipe.yaml), so they
  are not offered.
* Everything random comes from the ``rng`` passed in; :func:`synth_rng` makes the generator of
  (seed, epoch, index), so an image is a function of those three only (resume stays exact).

Costs for 50 cells on a 1024x1022 Usiigaci image (one thread on 2 busy cores): canvas blank
17 ms, blur 36 ms, median 79 ms; pasting hard 6 ms, feather 15 ms, seamless 0.6 s, which is why
seamless is not the default (a 512 px training iteration of the CPU recipe takes ~1.5 s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .cloning import _clone_in_place, blur_background

__all__ = ["CANVASES", "BLENDS", "Patch", "SynthParams", "cut_patches", "jitter_crop", "augment_patch",
           "make_canvas", "median_kernel", "place_patch", "synthesize", "synth_rng"]

CANVASES = ("blur", "median", "blank")
BLENDS = ("feather", "hard", "seamless")


@dataclass(frozen=True)
class Patch:
    """A labelled cell cut from an image: ``pixels`` (the box plus a margin, HxW or HxWxC uint8)
    and ``box`` (x0, y0, x1, y1), the cell's box inside ``pixels``. A ``negative`` patch (debris,
    an artefact) is pasted without a box."""

    pixels: np.ndarray
    box: tuple
    negative: bool = False

    @property
    def size(self) -> tuple:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


@dataclass(frozen=True)
class SynthParams:
    """How :func:`synthesize` fills a canvas (``SISSI.SYNTH.*`` in the config)."""

    count: tuple = (10, 50)  # cells per image, uniform in [min, max]
    negatives: tuple = (0, 0)  # artefact patches per image (no box), uniform in [min, max]
    max_overlap: float = 0.1  # largest share of a patch's area another patch may cover
    size_jitter: float = 0.1  # crop size x uniform(1 - j, 1 + j) about the cell's centre
    flip: bool = True
    rotate90: bool = True
    blend: str = "feather"
    feather: int = 3  # px of the linear alpha ramp at the patch edge
    tries: int = 20  # positions tried per patch before it is left out (a full canvas)

    def __post_init__(self):
        for name in ("count", "negatives"):
            lo, hi = (int(v) for v in getattr(self, name))
            if not 0 <= lo <= hi:
                raise ValueError(f"SISSI.SYNTH {name}={getattr(self, name)!r}: expected (min, max) with 0 <= min <= max")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ValueError(f"SISSI.SYNTH max_overlap={self.max_overlap}: expected a fraction in [0, 1]")
        if not 0.0 <= self.size_jitter < 1.0:
            raise ValueError(f"SISSI.SYNTH size_jitter={self.size_jitter}: expected a fraction in [0, 1)")
        if self.blend not in BLENDS:
            raise ValueError(f"SISSI.SYNTH blend={self.blend!r}: expected one of {BLENDS}")
        if self.feather < 0 or self.tries < 1:
            raise ValueError(f"SISSI.SYNTH feather={self.feather} / tries={self.tries}: expected >= 0 / >= 1")


def synth_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of synthetic image ``index`` of ``epoch`` in a run seeded ``seed``."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# ---------------------------------------------------------------------------------------------
# patches
# ---------------------------------------------------------------------------------------------
def cut_patches(image: np.ndarray, boxes, margin: float = 0.05, negative: bool = False) -> list:
    """One :class:`Patch` per XYXY box of ``image``: the box grown by ``margin`` times its size on
    every side (clipped to the image). Boxes without area inside the image are skipped."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        x0, x1 = max(0.0, x0), min(float(w), x1)
        y0, y1 = max(0.0, y0), min(float(h), y1)
        if not (x1 - x0 >= 1 and y1 - y0 >= 1):
            continue
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        c0, r0 = max(0, int(math.floor(x0 - mx))), max(0, int(math.floor(y0 - my)))
        c1, r1 = min(w, int(math.ceil(x1 + mx))), min(h, int(math.ceil(y1 + my)))
        out.append(Patch(np.ascontiguousarray(image[r0:r1, c0:c1]), (x0 - c0, y0 - r0, x1 - c0, y1 - r0), negative))
    return out


def jitter_crop(patch: Patch, rng: np.random.Generator, size_jitter: float) -> np.ndarray:
    """The cell's box scaled by a factor drawn in [1 - j, 1 + j] about its centre, in whole
    pixels, inside the patch: the paper's 0-10 % size variation (a smaller crop drops a rim of the
    cell, a larger one keeps some background around it)."""
    scale = 1.0 + float(rng.uniform(-size_jitter, size_jitter)) if size_jitter > 0 else 1.0
    x0, y0, x1, y1 = patch.box
    cx, cy, hw, hh = (x0 + x1) / 2.0, (y0 + y1) / 2.0, scale * (x1 - x0) / 2.0, scale * (y1 - y0) / 2.0
    ph, pw = patch.pixels.shape[:2]
    c0, c1 = max(0, int(round(cx - hw))), min(pw, int(round(cx + hw)))
    r0, r1 = max(0, int(round(cy - hh))), min(ph, int(round(cy + hh)))
    return patch.pixels[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)]


def augment_patch(pixels: np.ndarray, rng: np.random.Generator, flip: bool = True, rotate90: bool = True) -> np.ndarray:
    """Random horizontal / vertical flips and a rotation by 0, 90, 180 or 270 degrees: the patch
    stays an axis-aligned rectangle, so its box stays exact."""
    if flip:
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if rng.random() < 0.5:
            pixels = pixels[::-1]
    if rotate90:
        pixels = np.rot90(pixels, int(rng.integers(4)))
    return np.ascontiguousarray(pixels)


# ---------------------------------------------------------------------------------------------
# canvas, placement, pasting
# ---------------------------------------------------------------------------------------------
def median_kernel(cell_size: float) -> int:
    """The median filter's window for cells of ``cell_size`` px (long side): 2.5 cells, so that
    a cell is less than half of the window and the median is background."""
    k = int(2.5 * max(float(cell_size), 1.0)) | 1
    return max(3, min(k, 255))


def make_canvas(image: np.ndarray, mode: str = "blur", blur: tuple = (71, 30.0), median_ksize: int = 31) -> np.ndarray:
    """The background of a synthetic image, of ``image``'s size and type (see the module docstring)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"the canvas image must be uint8, got {image.dtype}")
    if mode == "blur":
        return blur_background(image, int(blur[0]), float(blur[1]))
    if mode == "median":
        k = int(median_ksize)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"median kernel {k}: expected an odd number >= 3")
        out = cv2.medianBlur(image, k)
        return out.reshape(image.shape)
    if mode == "blank":
        level = np.median(image.reshape(-1, image.shape[2] if image.ndim == 3 else 1), axis=0)
        return np.broadcast_to(level.astype(np.uint8).reshape((1, 1, -1) if image.ndim == 3 else (1, 1)),
                               image.shape).copy()
    raise ValueError(f"SISSI.SYNTH.CANVAS={mode!r}: expected one of {CANVASES}")


def place_patch(canvas_hw: tuple, patch_hw: tuple, placed: np.ndarray, rng: np.random.Generator,
                max_overlap: float, tries: int):
    """A top-left corner (x, y) where a patch of ``patch_hw`` lies inside the canvas and overlaps
    each of the ``placed`` XYXY boxes by at most ``max_overlap`` of either box's area; None after
    ``tries`` draws without one (or when the patch is larger than the canvas)."""
    (H, W), (h, w) = canvas_hw, patch_hw
    if h > H or w > W or h < 1 or w < 1:
        return None
    area = float(h * w)
    areas = (placed[:, 2] - placed[:, 0]) * (placed[:, 3] - placed[:, 1])
    for _ in range(int(tries)):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if len(placed):
            iw = np.clip(np.minimum(placed[:, 2], x + w) - np.maximum(placed[:, 0], x), 0, None)
            ih = np.clip(np.minimum(placed[:, 3], y + h) - np.maximum(placed[:, 1], y), 0, None)
            inter = iw * ih
            if np.any(inter > max_overlap * area) or np.any(inter > max_overlap * areas):
                continue
        return x, y
    return None


def _feather_alpha(h: int, w: int, width: int) -> np.ndarray:
    """HxW weights rising linearly from the edge to 1 at ``width`` px inside (no ramp: all 1)."""
    width = min(int(width), (h - 1) // 2, (w - 1) // 2)
    if width <= 0:
        return np.ones((h, w), np.float32)

    def ramp(n):  # 1 / (width + 1) at the edge pixel, 1 from ``width`` px inside on
        from_edge = np.minimum(np.arange(n), np.arange(n)[::-1]) + 1
        return np.minimum(from_edge, width + 1) / (width + 1.0)

    return np.minimum.outer(ramp(h), ramp(w)).astype(np.float32)


def _paste(canvas: np.ndarray, pixels: np.ndarray, x: int, y: int, blend: str, feather: int) -> None:
    h, w = pixels.shape[:2]
    region = canvas[y:y + h, x:x + w]
    if blend == "feather":
        alpha = _feather_alpha(h, w, feather)
        if pixels.ndim == 3:
            alpha = alpha[:, :, None]
        region[...] = (alpha * pixels + (1.0 - alpha) * region + 0.5).astype(np.uint8)
    else:  # hard, and the source image of seamless cloning
        region[...] = pixels


def _pick(rng: np.random.Generator, pool: list, count: tuple) -> list:
    if not pool:
        return []
    n = int(rng.integers(int(count[0]), int(count[1]) + 1))
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def synthesize(canvas: np.ndarray, patches, rng: np.random.Generator, params: SynthParams = SynthParams()):
    """Paste patches on ``canvas`` (not changed): returns (image, boxes Nx4 float32 XYXY of the
    pasted cells, negatives Mx4 of the pasted artefact patches).

    The numbers of cells and of artefact patches are drawn from ``params.count`` /
    ``params.negatives``; each patch is drawn from ``patches`` with replacement, jittered,
    augmented and placed by :func:`place_patch`; one that finds no place is left out (a full
    canvas), so the image may hold fewer cells than drawn, each with its box.
    """
    canvas = np.asarray(canvas)
    if canvas.dtype != np.uint8 or canvas.ndim not in (2, 3):
        raise ValueError(f"the canvas must be an HxW or HxWxC uint8 image, got {canvas.dtype} {canvas.shape}")
    out = canvas.copy()
    cells = _pick(rng, [p for p in patches if not p.negative], params.count)
    debris = _pick(rng, [p for p in patches if p.negative], params.negatives)
    order = rng.permutation(len(cells) + len(debris))
    chosen = cells + debris
    placed = np.zeros((0, 4), np.float64)
    is_cell = []
    for i in order.tolist():
        patch = chosen[i]
        pixels = augment_patch(jitter_crop(patch, rng, params.size_jitter), rng, params.flip, params.rotate90)
        if pixels.ndim != out.ndim:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if out.ndim == 3 else pixels[:, :, 0]
        where = place_patch(out.shape[:2], pixels.shape[:2], placed, rng, params.max_overlap, params.tries)
        if where is None:
            continue
        x, y = where
        _paste(out, pixels, x, y, params.blend, params.feather)
        placed = np.vstack([placed, [x, y, x + pixels.shape[1], y + pixels.shape[0]]])
        is_cell.append(not patch.negative)
    is_cell = np.asarray(is_cell, bool)
    if params.blend == "seamless" and len(placed):
        out = _seamless(out, canvas, placed)
    return out, placed[is_cell].astype(np.float32).reshape(-1, 4), placed[~is_cell].astype(np.float32).reshape(-1, 4)


def _seamless(pasted: np.ndarray, canvas: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Poisson cloning (mixed gradients) of the pasted rectangles into the bare canvas, as SISSI
    clones the labelled boxes into the blurred image (``cloning``)."""
    from .cloning import boxes_to_mask

    h, w = canvas.shape[:2]
    mask = boxes_to_mask(h, w, boxes)
    gray = canvas.ndim == 2 or canvas.shape[2] == 1
    src = np.repeat(pasted.reshape(h, w, 1), 3, axis=2) if gray else np.ascontiguousarray(pasted)
    dst = np.repeat(canvas.reshape(h, w, 1), 3, axis=2) if gray else np.ascontiguousarray(canvas)
    out = _clone_in_place(src, dst, mask)
    return np.ascontiguousarray(out[:, :, 0]).reshape(canvas.shape) if gray else out
