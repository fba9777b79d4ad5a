"""Boxes of dataset records: from instance label images, and repaired when a label file is off."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

__all__ = ["DEFAULT_MIN_AREA", "DEFAULT_SPECK_FRACTION", "boxes_from_label_image", "sanitize_boxes"]

logger = logging.getLogger(__name__)

#: Labels (after speck removal) smaller than this many pixels are dropped.
DEFAULT_MIN_AREA = 10
#: A connected part of a label smaller than this fraction of the label's largest part is a speck.
DEFAULT_SPECK_FRACTION = 0.1


def _box_mode():
    from detectron2.structures import BoxMode

    return BoxMode


def boxes_from_label_image(
    labels: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    speck_fraction: float = DEFAULT_SPECK_FRACTION,
    return_ids: bool = False,
):
    """XYXY boxes (Nx4 float32, pixel edges: ``x1 = last column + 1``) of an instance label image.

    The rule, per label id (0 = background; ids need not be contiguous):

    1. The pixels of the id are split into connected parts (8-connectivity, so a diagonal
       one-pixel bridge keeps a thin process attached).
    2. **Specks**: a part smaller than ``speck_fraction`` (default 0.1) times the id's largest
       part is ignored. Annotation tools leave such stray pixels far from the cell, and one of
       them would stretch the box over empty background.
    3. **Split labels**: the remaining parts (the largest and every part at least
       ``speck_fraction`` of it) are all kept and the box is the extent of their union. In real
       data such an id is one cell whose thin connecting process was not painted, so its box
       must cover both blobs; we cannot tell it from two cells given one id by mistake.
    4. An id whose kept area is below ``min_area`` pixels (default 10) is dropped: one or a few
       pixels are paint slips, not cells.

    Boxes are returned in increasing id order; with ``return_ids`` also the ids (int64).
    """
    from skimage.measure import label as cc_label
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Expected a 2-D instance label image, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected an integer label image, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64, copy=False)
    labels = np.where(labels > 0, labels, 0)
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    if not labels.any():
        return empty if return_ids else empty[0]

    # connected parts of equal value over the whole image at once
    parts = cc_label(labels, background=0, connectivity=2)
    n_parts = int(parts.max())
    flat_parts = parts.ravel()
    part_area = np.bincount(flat_parts, minlength=n_parts + 1)
    part_id = np.zeros(n_parts + 1, np.int64)
    part_id[flat_parts] = labels.ravel()  # every pixel of a part carries the same id
    slices = ndi.find_objects(parts)

    # largest part area of every id
    ids = part_id[1:]
    areas = part_area[1:]
    order = np.argsort(ids, kind="stable")
    ids_sorted, areas_sorted = ids[order], areas[order]
    uniq, start = np.unique(ids_sorted, return_index=True)
    largest = np.maximum.reduceat(areas_sorted, start)
    largest_of = dict(zip(uniq.tolist(), largest.tolist()))

    box = {}
    kept_area: Counter = Counter()
    for p in range(1, n_parts + 1):
        lid = int(part_id[p])
        a = int(part_area[p])
        if a < speck_fraction * largest_of[lid]:
            continue  # a speck
        sy, sx = slices[p - 1]
        b = (sx.start, sy.start, sx.stop, sy.stop)
        if lid in box:
            o = box[lid]
            b = (min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3]))
        box[lid] = b
        kept_area[lid] += a
    out_ids = [i for i in sorted(box) if kept_area[i] >= min_area]
    if not out_ids:
        return empty if return_ids else empty[0]
    boxes = np.asarray([box[i] for i in out_ids], dtype=np.float32).reshape(-1, 4)
    if return_ids:
        return boxes, np.asarray(out_ids, dtype=np.int64)
    return boxes


def sanitize_boxes(record: dict, source: str | None = None) -> dict:
    """Repair the boxes of one dataset dict in place (and return it), logging one warning.

    Converts every box to ``XYXY_ABS``; swaps inverted corners (x0 > x1 or y0 > y1); clips to
    ``[0, width] x [0, height]``; drops boxes that are malformed, contain NaN/inf, lie fully
    outside the image or have zero width or height after clipping. When anything was fixed, ONE
    warning names the file (``source`` if given, else the image) and counts each fix.
    """
    BoxMode = _box_mode()
    height, width = float(record["height"]), float(record["width"])
    counts: Counter = Counter()
    kept = []
    anns = record.get("annotations") or []
    for ann in anns:
        mode = ann.get("bbox_mode", BoxMode.XYXY_ABS)
        try:
            arr = np.asarray(ann["bbox"], dtype=np.float64).reshape(4)
            if int(mode) != int(BoxMode.XYXY_ABS):
                if int(mode) != int(BoxMode.XYWH_ABS):
                    raise ValueError(f"unsupported bbox_mode {mode!r}")
                arr = np.array([arr[0], arr[1], arr[0] + arr[2], arr[1] + arr[3]])
        except (KeyError, TypeError, ValueError):
            counts["malformed"] += 1
            continue
        if not np.all(np.isfinite(arr)):
            counts["non_finite"] += 1
            continue
        x0, y0, x1, y1 = arr.tolist()
        if x0 > x1 or y0 > y1:
            counts["inverted"] += 1
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            if x0 == x1 or y0 == y1:
                counts["zero_area"] += 1
            else:
                counts["outside"] += 1
            continue
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, width), min(y1, height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            counts["zero_area"] += 1
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            counts["clipped"] += 1
        new = dict(ann)
        new["bbox"] = [float(cx0), float(cy0), float(cx1), float(cy1)]
        new["bbox_mode"] = BoxMode.XYXY_ABS
        new["category_id"] = int(ann.get("category_id", 0))
        kept.append(new)
    record["annotations"] = kept
    if counts:
        fixes = []
        if counts["clipped"]:
            fixes.append(f"{counts['clipped']} clipped to the {int(width)}x{int(height)} image")
        if counts["inverted"]:
            fixes.append(f"{counts['inverted']} with inverted corners swapped")
        dropped = []
        for key, text in (("non_finite", "NaN/inf"), ("zero_area", "zero-area"),
                          ("outside", "fully outside the image"), ("malformed", "malformed")):
            if counts[key]:
                dropped.append(f"{counts[key]} {text}")
        msg = f"{source or record.get('file_name')}: repaired boxes"
        if fixes:
            msg += ": " + ", ".join(fixes)
        if dropped:
            msg += "; dropped " + ", ".join(dropped)
        msg += f" (kept {len(kept)} of {len(anns)})."
        logger.warning(msg)
    return record
