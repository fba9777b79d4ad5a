"""Score weak labels against true instance masks (box AP / AR, COCO style).

Only for measuring label quality (development, reports): SISSI training never reads the masks.
"""
from __future__ import annotations

import glob
import os
from typing import Mapping

import numpy as np
from scipy import ndimage as ndi

from ..data.image_io import read_label_image
from ..evaluation.box_metrics import coco_box_metrics

__all__ = ["boxes_from_label_image", "find_mask_file", "score_against_masks", "MASK_SUFFIXES"]

MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "")
_EXTS = (".png", ".tif", ".tiff")


def boxes_from_label_image(labels: np.ndarray, min_pixels: int = 10, speck_pixels: int = 30) -> np.ndarray:
    """XYXY box (pixel edges) of every instance of a label image (0 = background).

    Stray specks are not objects: a label with fewer than ``min_pixels`` pixels is ignored, and
    a fragment (8-connected) smaller than ``speck_pixels`` does not widen its label's box as long
    as the label has a bigger fragment.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2D, got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    out = []
    eight = np.ones((3, 3), bool)
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == idx
        n_pix = int(obj.sum())
        if n_pix < min_pixels:
            continue
        frag, n = ndi.label(obj, structure=eight)
        if n > 1:
            sizes = np.bincount(frag.ravel())[1:]
            keep = sizes >= speck_pixels
            if keep.any() and not keep.all():
                obj = np.isin(frag, np.flatnonzero(keep) + 1)
        ys, xs = np.nonzero(obj)
        y0, x0 = sl[0].start, sl[1].start
        out.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def find_mask_file(mask_dir: str, stem: str) -> str | None:
    """``<stem>_masks.png`` (Cellpose layout) or similar; an image stem ``x_img`` also matches
    ``x_masks``. None when absent."""
    stems = [stem]
    if stem.endswith("_img"):
        stems.append(stem[: -len("_img")])
    for st in stems:
        for suffix in MASK_SUFFIXES:
            for ext in _EXTS:
                path = os.path.join(mask_dir, st + suffix + ext)
                if os.path.isfile(path):
                    return path
    return None


def score_against_masks(
    weak: Mapping[str, tuple],
    mask_dir: str,
    max_dets: int = 400,
    min_pixels: int = 10,
    speck_pixels: int = 30,
    require_all: bool = False,
) -> dict:
    """COCO box metrics of weak labels against the instance masks in ``mask_dir``.

    Args:
        weak: image stem -> (Nx4 XYXY boxes, N scores). Stems as in the image folder
            (``set1_img`` is matched with ``set1_masks.png``).
        mask_dir: folder of 16-bit (or 8-bit) instance label images.
        require_all: raise if an image has no mask; otherwise such images are skipped and listed.

    Returns {"AP50", "AP75", "AP", "AR" (percent), "num_gt", "num_pred", "num_images",
    "missing_masks": [stems], "per_image": {stem: {"num_gt", "num_pred"}}}.
    """
    if not os.path.isdir(mask_dir):
        raise FileNotFoundError(f"Oracle mask folder not found: {mask_dir}")
    gt, pred, missing, per_image = {}, {}, [], {}
    for stem in sorted(weak):
        path = find_mask_file(mask_dir, stem)
        if path is None:
            missing.append(stem)
            continue
        gt_boxes = boxes_from_label_image(read_label_image(path), min_pixels, speck_pixels)
        boxes, scores = weak[stem]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        gt[stem] = gt_boxes
        pred[stem] = (boxes, scores)
        per_image[stem] = {"num_gt": int(len(gt_boxes)), "num_pred": int(len(boxes))}
    if missing and require_all:
        raise FileNotFoundError(
            f"No mask in {mask_dir} for {len(missing)} image(s), e.g. {missing[:3]} "
            f"(looked for <stem>{{{','.join(MASK_SUFFIXES)}}}{{{','.join(_EXTS)}}})")
    if not gt:
        available = sorted(glob.glob(os.path.join(mask_dir, "*")))[:3]
        raise FileNotFoundError(
            f"None of the {len(weak)} image(s) has a mask in {mask_dir} (found e.g. {available}); "
            "expected <stem>_masks.png next to <stem>_img.png names")
    metrics = coco_box_metrics(gt, pred, max_dets=max_dets)
    metrics.update({"num_images": len(gt), "missing_masks": missing, "per_image": per_image})
    return metrics
