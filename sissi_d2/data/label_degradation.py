"""Degraded copies of a completely labelled set: the label budgets a lab might afford.

Three ways to spend less on labels, each a pure function of (labels, seed) with no model and no
catalog (``experiments.label_budget`` turns them into data sets and trains on them):

* **missing cells** (:func:`keep_boxes`): every image keeps ``percent`` % of its boxes;
* **fewer images** (:func:`keep_images`): ``k`` images keep all their boxes, the others are left
  out or, optionally, get weak labels;
* **noisy boxes** (:func:`jitter_boxes`, :func:`add_false_positives`): each side of each box moves
  by a normal draw of ``sigma`` % of the box's size, and false boxes are added at ``rate`` per
  true box.

Labels are ``{image key: Nx4 float XYXY boxes}``; image sizes ``{image key: (height, width)}``.

Rules, so that a curve over a budget axis compares like with like:

* **Rounding**: an image with ``n`` boxes keeps ``round_half_up(percent * n / 100)`` of them
  (:func:`kept_count`: 25 % of 10 boxes keeps 3, 25 % of 6 keeps 2, 10 % of 4 keeps 0), exactly,
  per image; false boxes per image likewise ``round_half_up(rate * n)``.
* **Nesting**: the random draws depend on (seed, image key) only, never on the budget value or on
  the order of the images, so the boxes kept at 25 % are a subset of those kept at 50 %, the
  ``k = 2`` images include the ``k = 1`` image, and a 20 % jitter is the 10 % jitter doubled
  (before clipping). A curve then shows the effect of the budget, not of a new random draw.
* **Images left with no box** (a sparse image at a low percentage) stay in the set with no box:
  the lab labelled none of its cells, so plain training sees them all as background, which is
  the case SISSI's synthetic-like images address (a cloned image without boxes is all blurred
  background). :func:`images_without_boxes` counts them; the experiment reports the count.
* **Inside the image**: jittered and false boxes are clipped to the image and are at least
  ``min_size`` pixels wide and high.

Bad values raise ValueError naming the value and the allowed range.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

import numpy as np

__all__ = [
    "AXES", "Degradation", "kept_count", "false_positive_count", "keep_boxes", "choose_images", "keep_images",
    "jitter_boxes", "add_false_positives", "images_without_boxes", "check_complete_labels", "labels_of_records",
]

#: axis name -> what its value means
AXES = {
    "cells": "percent of the boxes every image keeps (missing cells)",
    "images": "number of images that keep their labels (fewer images)",
    "noise": "jitter of each box side, percent of the box size (noisy boxes), with a false-positive rate",
}

# Separate random streams per degradation: the same seed must not make the kept boxes and the
# jitter of an image correlated.
_STREAM = {"cells": 1, "images": 2, "jitter": 3, "false_positives": 4}


def _rng(seed: int, stream: str, key: str | None = None) -> np.random.Generator:
    """A generator for one stream (and one image): seeded by (seed, stream, crc32 of the key), so
    the draws of an image do not depend on which other images the set holds or their order."""
    entropy = [int(seed), _STREAM[stream]] + ([zlib.crc32(key.encode("utf-8"))] if key is not None else [])
    return np.random.default_rng(entropy)


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _fraction(value) -> Fraction:
    # str() first: Fraction(0.1) is the binary float 0.1000000000000000055..., Fraction("0.1") is 1/10
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _check_percent(percent, what: str = "percentage") -> None:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ValueError(f"the {what} must be a number from 0 to 100, got {percent!r}")


def kept_count(n: int, percent) -> int:
    """Boxes an image with ``n`` boxes keeps at ``percent`` %: round half up of percent * n / 100."""
    _check_percent(percent)
    return _round_half_up(_fraction(percent) * int(n) / 100)


def false_positive_count(n: int, rate) -> int:
    """False boxes added to an image with ``n`` true boxes: round half up of rate * n."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 10:
        raise ValueError(f"the false-positive rate must be from 0 to 10 false boxes per true box, got {rate!r}")
    return _round_half_up(_fraction(rate) * int(n))


def _boxes(labels: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    return np.asarray(labels[key], np.float64).reshape(-1, 4)


def keep_boxes(labels: Mapping[str, np.ndarray], percent, seed: int) -> dict:
    """Every image keeps :func:`kept_count` of its boxes, a random choice nested across
    percentages (the first boxes of one seeded permutation per image), in their original order."""
    _check_percent(percent)
    out = {}
    for key in labels:
        boxes = _boxes(labels, key)
        order = _rng(seed, "cells", key).permutation(len(boxes))
        out[key] = boxes[np.sort(order[: kept_count(len(boxes), percent)])]
    return out


def choose_images(keys, k: int, seed: int) -> list:
    """The ``k`` image keys that keep their labels: the first ``k`` of one seeded permutation of the
    sorted keys, so the choice at ``k`` contains the choice at every smaller ``k``."""
    keys = sorted(keys)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(keys):
        raise ValueError(f"the number of labelled images k must be a whole number from 1 to {len(keys)} "
                         f"(the images of the set), got {k!r}")
    order = _rng(seed, "images").permutation(len(keys))
    return sorted(keys[i] for i in order[:k])


def keep_images(labels: Mapping[str, np.ndarray], k: int, seed: int, others: Mapping[str, np.ndarray] | None = None) -> dict:
    """The labels of :func:`choose_images` ``k`` images; the other images are left out, or, with
    ``others`` (e.g. the weak labels of every image), keep those labels instead."""
    chosen = set(choose_images(labels, k, seed))
    if others is not None:
        missing = sorted(key for key in labels if key not in chosen and key not in others)
        if missing:
            raise ValueError(f"{len(missing)} images have no weak labels to stand in for their labels, e.g. "
                             f"{missing[0]!r}: the weak labels must cover every image of the set")
    return {key: (_boxes(labels, key) if key in chosen else _boxes(others, key))
            for key in labels if key in chosen or others is not None}


def _size(sizes: Mapping[str, tuple], key: str) -> tuple:
    if key not in sizes:
        raise ValueError(f"no image size for {key!r}: pass (height, width) of every image")
    height, width = sizes[key]
    return float(height), float(width)


def _inside(boxes: np.ndarray, height: float, width: float, min_size: float) -> np.ndarray:
    """Corners sorted, clipped to the image, each side at least ``min_size`` (grown about the
    centre, shifted back inside at the border)."""
    out = boxes.copy()
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        a, b = np.minimum(out[:, lo], out[:, hi]), np.maximum(out[:, lo], out[:, hi])
        a, b = np.clip(a, 0.0, limit), np.clip(b, 0.0, limit)
        side = min(min_size, limit)
        short = b - a < side
        centre = np.clip((a + b) / 2, side / 2, limit - side / 2)
        a = np.where(short, centre - side / 2, a)
        b = np.where(short, centre + side / 2, b)
        out[:, lo], out[:, hi] = a, b
    return out


def jitter_boxes(labels: Mapping[str, np.ndarray], sizes: Mapping[str, tuple], sigma_percent, seed: int,
                 min_size: float = 1.0) -> dict:
    """Each side of each box moves by a normal draw with standard deviation ``sigma_percent`` % of
    the box's width (left, right) or height (top, bottom); boxes stay inside the image."""
    _check_percent(sigma_percent, "jitter sigma (percent of the box size)")
    out = {}
    for key in labels:
        boxes = _boxes(labels, key)
        height, width = _size(sizes, key)
        # always drawn, also at sigma 0, so the draws of an image are the same at every sigma
        noise = _rng(seed, "jitter", key).standard_normal(boxes.shape)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        scale = np.stack([widths, heights, widths, heights], axis=1)  # x0, y0, x1, y1 move with w, h, w, h
        moved = boxes + noise * scale * (float(sigma_percent) / 100.0)
        out[key] = _inside(moved, height, width, min_size) if len(boxes) else boxes
    return out


def _max_iou(box: np.ndarray, boxes: np.ndarray) -> float:
    if not len(boxes):
        return 0.0
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return float(np.max(inter / np.maximum(union, 1e-9)))


def add_false_positives(labels: Mapping[str, np.ndarray], sizes: Mapping[str, tuple], rate, seed: int,
                        truth: Mapping[str, np.ndarray] | None = None, max_iou: float = 0.1, tries: int = 20) -> dict:
    """Append :func:`false_positive_count` false boxes to each image's boxes.

    A false box has the size of one of the image's boxes (drawn at random: false positives of an
    annotator or a pipeline look like cells, not like specks) at a uniform position inside the
    image, redrawn up to ``tries`` times until its IoU with every true box (``truth``, default the
    image's boxes) is below ``max_iou``, so that it lands on background; in a crowded image the
    last draw is kept. The count is exact either way.
    """
    out = {}
    for key in labels:
        boxes = _boxes(labels, key)
        n_false = false_positive_count(len(boxes), rate)
        if not n_false:
            out[key] = boxes
            continue
        height, width = _size(sizes, key)
        true_boxes = _boxes(truth, key) if truth is not None and key in truth else boxes
        rng = _rng(seed, "false_positives", key)
        added = []
        for _ in range(n_false):
            src = boxes[rng.integers(len(boxes))]
            w, h = min(src[2] - src[0], width), min(src[3] - src[1], height)
            for _ in range(tries):
                x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
                box = np.array([x0, y0, x0 + w, y0 + h])
                if _max_iou(box, true_boxes) < max_iou:
                    break
            added.append(box)
        out[key] = np.concatenate([boxes, np.asarray(added).reshape(-1, 4)])
    return out


def images_without_boxes(labels: Mapping[str, np.ndarray]) -> list:
    """Keys of the images left with no box (they stay in the set; see the module's rules)."""
    return sorted(k for k, b in labels.items() if not len(np.asarray(b).reshape(-1, 4)))


@dataclass(frozen=True)
class Degradation:
    """One budget point: ``axis`` (:data:`AXES`) and its ``value``; ``fp_rate``: false boxes per
    true box (axis ``noise``); ``others``: ``"left_out"`` or ``"weak"`` (axis ``images``)."""

    axis: str
    value: float
    fp_rate: float = 0.0
    others: str = "left_out"

    def __post_init__(self):
        if self.axis not in AXES:
            raise ValueError(f"unknown budget axis {self.axis!r}; axes: {', '.join(AXES)}")
        if self.axis == "cells":
            _check_percent(self.value)
        elif self.axis == "images":
            if isinstance(self.value, bool) or int(self.value) != self.value or self.value < 1:
                raise ValueError(f"the number of labelled images k must be a whole number >= 1, got {self.value!r}")
            if self.others not in ("left_out", "weak"):
                raise ValueError(f"the images without labels are 'left_out' or get 'weak' labels, got {self.others!r}")
        else:
            _check_percent(self.value, "jitter sigma (percent of the box size)")
            false_positive_count(0, self.fp_rate)
        if self.axis != "noise" and self.fp_rate:
            raise ValueError(f"a false-positive rate ({self.fp_rate}) belongs to the noise axis, not to {self.axis!r}")

    @property
    def name(self) -> str:
        """File and data set name, e.g. ``cells_p50``, ``images_k4_weak``, ``noise_s20_r0.2``."""
        value = f"{self.value:g}"
        if self.axis == "cells":
            return f"cells_p{value}"
        if self.axis == "images":
            return f"images_k{int(self.value)}" + ("_weak" if self.others == "weak" else "")
        return f"noise_s{value}_r{self.fp_rate:g}"

    @property
    def label(self) -> str:
        """How the point is named in tables."""
        if self.axis == "cells":
            return f"{self.value:g} % of the cells"
        if self.axis == "images":
            k = int(self.value)
            return f"{k} image{'s' if k != 1 else ''}" + (" (+ weak labels on the others)" if self.others == "weak" else "")
        return f"jitter {self.value:g} %, {self.fp_rate:g} false boxes per cell"

    @property
    def complete(self) -> bool:
        """True when the point changes nothing (100 % of the cells, no noise); for ``images``
        only the caller knows the number of images."""
        return (self.axis == "cells" and self.value == 100) or (self.axis == "noise" and not self.value and not self.fp_rate)

    def apply(self, labels: Mapping[str, np.ndarray], sizes: Mapping[str, tuple], seed: int,
              weak: Mapping[str, np.ndarray] | None = None) -> dict:
        """The degraded labels (``weak``: the weak labels of every image, for ``others="weak"``)."""
        if self.axis == "cells":
            return keep_boxes(labels, self.value, seed)
        if self.axis == "images":
            if self.others == "weak" and weak is None:
                raise ValueError(f"{self.name}: the images without labels get weak labels, but none were given")
            if int(self.value) > len(labels):
                raise ValueError(f"k = {int(self.value)} labelled images asked for, but the set has only {len(labels)} "
                                 f"images: use k <= {len(labels)}")
            return keep_images(labels, int(self.value), seed, weak if self.others == "weak" else None)
        jittered = jitter_boxes(labels, sizes, self.value, seed)
        return add_false_positives(jittered, sizes, self.fp_rate, seed, truth=labels) if self.fp_rate else jittered


def labels_of_records(records) -> tuple:
    """({image key: Nx4 XYXY boxes}, {image key: (height, width)}) of dataset dicts whose boxes are
    XYXY_ABS (as every loader of sissi_d2 returns them)."""
    from .label_files import image_key

    labels, sizes = {}, {}
    for r in records:
        key = image_key(r)
        labels[key] = np.asarray([a["bbox"] for a in r.get("annotations", [])], np.float64).reshape(-1, 4)
        sizes[key] = (int(r["height"]), int(r["width"]))
    return labels, sizes


def check_complete_labels(records, name: str) -> None:
    """Refuse a data set that cannot stand for complete labels, naming it and the fix.

    Complete labels are drawn by people (or come from true masks): every image has boxes and no box
    carries a ``score`` (weak labels and pseudo-labels do, they are made by a pipeline or a model).
    """
    fix = ("Degrade a completely labelled set: usiigaci_train_oracle (the true masks of the Usiigaci training "
           "images), synth_target_train_oracle, or your own complete COCO json registered with SISSI.REGISTER.")
    if not records:
        raise ValueError(f"data set {name!r} has no images. {fix}")
    unlabelled = [r for r in records if not r.get("annotations")]
    if len(unlabelled) == len(records):
        raise ValueError(f"data set {name!r} has no labels at all (an image folder?). {fix}")
    if unlabelled:
        raise ValueError(f"data set {name!r} is not completely labelled: {len(unlabelled)} of its {len(records)} images "
                         f"have no box, e.g. {unlabelled[0]['file_name']}. {fix}")
    scored = sum(1 for r in records for a in r["annotations"] if "score" in a)
    if scored:
        raise ValueError(f"data set {name!r} holds {scored} boxes with a score: weak labels or pseudo-labels, not "
                         f"complete labels. {fix}")
