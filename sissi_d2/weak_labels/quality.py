"""Score weak labels against true instance masks (box AP / AR, COCO style).

Only for measuring label quality (development, reports): SISSI training never reads the masks.
True boxes come from the masks with the same rule as every data set loader
(``sissi_d2.data.datasets.boxes_from_label_image``: specks and tiny labels ignored).
"""
from __future__ import annotations

import glob
import os
from typing import Mapping

import numpy as np

from ..data.boxes import DEFAULT_MIN_AREA, DEFAULT_SPECK_FRACTION, boxes_from_label_image
from ..data.image_io import read_label_image
from ..evaluation.box_metrics import coco_box_metrics

__all__ = ["find_mask_file", "score_against_masks", "MASK_SUFFIXES"]

MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "")
_EXTS = (".png", ".tif", ".tiff")


def find_mask_file(mask_dir: str, stem: str, image_path: str | None = None) -> str | None:
    """``<stem>_masks.png`` (Cellpose layout) or similar; an image stem ``x_img`` also matches
    ``x_masks``; a mask named exactly like its image (``masks/x.png`` for ``images/x.png``) too.
    ``image_path``: the image itself, never taken for its mask (masks beside their images).
    None when absent."""
    stems = [stem]
    if stem.endswith("_img"):
        stems.append(stem[: -len("_img")])
    for st in stems:
        for suffix in MASK_SUFFIXES:
            for ext in _EXTS:
                path = os.path.join(mask_dir, st + suffix + ext)
                if os.path.isfile(path) and not (image_path and os.path.isfile(image_path)
                                                 and os.path.samefile(path, image_path)):
                    return path
    return None


def score_against_masks(
    weak: Mapping[str, tuple],
    mask_dir: str,
    max_dets: int = 400,
    min_area: int = DEFAULT_MIN_AREA,
    speck_fraction: float = DEFAULT_SPECK_FRACTION,
    require_all: bool = False,
    image_paths: Mapping[str, str] | None = None,
) -> dict:
    """COCO box metrics of weak labels against the instance masks in ``mask_dir``.

    Args:
        weak: image stem -> (Nx4 XYXY boxes, N scores). Stems as in the image folder
            (``set1_img`` is matched with ``set1_masks.png``).
        mask_dir: folder of 16-bit (or 8-bit) instance label images.
        require_all: raise if an image has no mask; otherwise such images are skipped and listed.
        image_paths: stem -> image file, so that an image beside its masks is never read as its
            own mask (``x.png`` with suffix-less mask names).

    Returns {"AP50", "AP75", "AP", "AR" (percent), "num_gt", "num_pred", "num_images",
    "missing_masks": [stems], "per_image": {stem: {"num_gt", "num_pred"}}}.
    """
    if not os.path.isdir(mask_dir):
        raise FileNotFoundError(f"Oracle mask folder not found: {mask_dir}")
    gt, pred, missing, per_image = {}, {}, [], {}
    for stem in sorted(weak):
        path = find_mask_file(mask_dir, stem, (image_paths or {}).get(stem))
        if path is None:
            missing.append(stem)
            continue
        gt_boxes = boxes_from_label_image(read_label_image(path), min_area=min_area, speck_fraction=speck_fraction)
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
