"""COCO box metrics between two sets of boxes in plain arrays (no model, no catalog).

Used to score weak labels and pseudo-labels against true labels, the model against the weak
labels (the memorisation curve), and by ``tools/compare_labels.py``. pycocotools does the
matching; AR is ``stats[8]`` with maxDets raised for crowded cell images.
"""
from __future__ import annotations

import contextlib
import io
from typing import Mapping, Sequence

import numpy as np

__all__ = ["coco_box_metrics", "label_set_f1", "label_failure_modes", "boxes_beyond", "reference_boxes_kept", "cell_scores_by_labelling", "one_to_one_matches", "METRIC_KEYS"]

METRIC_KEYS = ("AP50", "AP75", "AP", "AR")


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return arr


def coco_box_metrics(
    gt: Mapping[object, Sequence],
    pred: Mapping[object, tuple],
    max_dets: int = 400,
) -> dict:
    """COCO AP50 / AP75 / AP / AR (in percent) of predictions against one-class ground truth.

    Args:
        gt: image key -> Nx4 XYXY boxes (absolute pixels). Every key is an evaluated image.
        pred: image key -> (Mx4 XYXY boxes, M scores). Missing keys mean no detections. Labels
            (weak labels as detections) may pass scores of 1.
        max_dets: detections per image considered (maxDets of the last COCO setting).

    Returns a dict with the four metrics in percent, plus ``num_gt`` and ``num_pred``. Metrics are
    NaN when the ground truth holds no box at all (undefined).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    keys = list(gt.keys())
    images, annotations, detections = [], [], []
    ann_id = 1
    for img_id, key in enumerate(keys, start=1):
        images.append({"id": img_id})
        for x0, y0, x1, y1 in _as_boxes(gt[key]):
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {"id": ann_id, "image_id": img_id, "category_id": 1, "bbox": [x0, y0, w, h],
                 "area": w * h, "iscrowd": 0}
            )
            ann_id += 1
        if key in pred:
            boxes, scores = pred[key]
            boxes = _as_boxes(boxes)
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"image {key!r}: {len(boxes)} boxes but {len(scores)} scores")
            for (x0, y0, x1, y1), s in zip(boxes, scores):
                detections.append(
                    {"image_id": img_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "score": float(s)}
                )
    result = {"num_gt": len(annotations), "num_pred": len(detections)}
    if not annotations:
        result.update({k: float("nan") for k in METRIC_KEYS})
        return result
    if not detections:
        result.update({k: 0.0 for k in METRIC_KEYS})
        return result

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": 1, "name": "cell"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [max(1, max_dets // 4), max(1, max_dets // 2), max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    result.update(
        {"AP": 100.0 * max(float(stats[0]), 0.0), "AP50": 100.0 * max(float(stats[1]), 0.0),
         "AP75": 100.0 * max(float(stats[2]), 0.0), "AR": 100.0 * max(float(stats[8]), 0.0)}
    )
    return result


def one_to_one_matches(true_boxes, boxes, min_iou: float):
    """Indices ``(i_true, j_box, iou)`` of the one-to-one matching of two box sets that maximises
    the summed IoU (Hungarian), pairs with IoU >= ``min_iou`` only."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_iou
    import torch

    t, p = _as_boxes(true_boxes), _as_boxes(boxes)
    if not len(t) or not len(p):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    iou = box_iou(torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(p, dtype=torch.float64)).numpy()
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] >= min_iou
    return rows[keep], cols[keep], iou[rows, cols][keep]


def _label_boxes(labels, key):
    got = labels.get(key, np.zeros((0, 4)))
    return _as_boxes(got[0] if isinstance(got, tuple) else got)


def label_set_f1(gt: Mapping[object, Sequence], labels: Mapping[object, object], iou_thr: float = 0.5) -> dict:
    """Precision / recall / F1 (percent) of a LABEL SET at IoU ``iou_thr``, scores ignored.

    Training uses every label alike, whatever its score, so a label set is judged by what it
    holds: one-to-one matching per image (Hungarian on IoU, pairs below ``iou_thr`` unmatched),
    TP / FP / FN pooled over the images of ``gt``. AP would instead reward a good ranking of the
    labels, which training never sees. ``labels``: key -> boxes or (boxes, scores).
    """
    tp = fp = fn = 0
    for key, true_boxes in gt.items():
        t, p = _as_boxes(true_boxes), _label_boxes(labels, key)
        matched = len(one_to_one_matches(t, p, iou_thr)[0])
        tp += matched
        fp += len(p) - matched
        fn += len(t) - matched
    precision = 100.0 * tp / max(tp + fp, 1)
    recall = 100.0 * tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {"precision50": precision, "recall50": recall, "F1_50": f1, "labels": tp + fp}


def label_failure_modes(gt: Mapping[object, Sequence], labels: Mapping[object, object], found_iou: float = 0.3,
                        tight_iou: float = 0.5) -> dict:
    """How a label set fails against the truth, in the three ways weak labels do (percent).

    One-to-one matching per image at IoU >= ``found_iou`` (a label on the cell, however loose):
    ``missed_cells`` = true cells with no label; ``false_positives`` = labels on no cell;
    ``loose_boxes`` = matched labels with IoU < ``tight_iou`` (found, but too loose or too tight
    to count at AP50); ``median_iou`` of the matches; ``size_ratio`` = median label / true box
    width and height over the matches (> 1: labels larger than the cells)."""
    cells = labelled = 0
    ious, ratios = [], []
    for key, true_boxes in gt.items():
        t, p = _as_boxes(true_boxes), _label_boxes(labels, key)
        i, j, iou = one_to_one_matches(t, p, found_iou)
        cells, labelled = cells + len(t), labelled + len(p)
        ious.extend(iou.tolist())
        wh_t, wh_p = t[i, 2:] - t[i, :2], p[j, 2:] - p[j, :2]
        ratios.extend((wh_p / np.maximum(wh_t, 1e-9)).tolist())
    matched = len(ious)
    ious = np.asarray(ious)
    ratio = np.median(np.asarray(ratios), axis=0).round(3).tolist() if ratios else None
    return {"missed_cells": 100.0 * (cells - matched) / max(cells, 1),
            "false_positives": 100.0 * (labelled - matched) / max(labelled, 1),
            "loose_boxes": 100.0 * float(np.count_nonzero(ious < tight_iou)) / max(matched, 1),
            "median_iou": float(np.median(ious)) if matched else None, "size_ratio": ratio,
            "cells": cells, "labels": labelled}


def _iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` (rows) with each of ``others`` (columns); both non-empty."""
    from torchvision.ops import box_iou
    import torch

    return box_iou(torch.as_tensor(boxes), torch.as_tensor(others)).numpy()


def _max_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each of ``boxes``, its highest IoU with any of ``others`` (0 when there are none)."""
    if not len(boxes) or not len(others):
        return np.zeros(len(boxes))
    return _iou_matrix(boxes, others).max(axis=1)


def boxes_beyond(gt: Mapping[object, Sequence], reference: Mapping[object, object], labels: Mapping[object, object],
                 max_iou: float = 0.1, iou_thr: float = 0.5) -> dict:
    """What ``labels`` found away from every box of ``reference`` (e.g. pseudo-labels beyond the weak
    labels they were learnt from): the labels whose IoU with each reference box of their image is
    below ``max_iou``, and how many of them are cells (one-to-one with ``gt`` at IoU >= ``iou_thr``).
    ``cells_percent``: those cells in percent of all true cells, the recall such labels could add.
    Correction can only teach a detector cells its weak labels miss if it finds them here."""
    boxes = cells = total = 0
    for key, true_boxes in gt.items():
        t, p, r = _as_boxes(true_boxes), _label_boxes(labels, key), _label_boxes(reference, key)
        p = p[_max_iou(p, r) < max_iou]
        boxes += len(p)
        cells += len(one_to_one_matches(t, p, iou_thr)[0])
        total += len(t)
    return {"boxes": boxes, "cells": cells, "cells_percent": 100.0 * cells / max(total, 1)}


def reference_boxes_kept(gt: Mapping[object, Sequence], reference: Mapping[object, object],
                         labels: Mapping[object, object], keep_iou: float = 0.3, found_iou: float = 0.3) -> dict:
    """Which boxes of ``reference`` (the weak labels) ``labels`` (pseudo-labels made from them) keep:
    a reference box is kept when a label overlaps it at IoU >= ``keep_iou``. Counted apart for the
    reference's false positives and its boxes on cells, paired with ``gt`` as
    :func:`label_failure_modes` pairs them (one-to-one at IoU >= ``found_iou``). A correction that
    knows better than its labels keeps the boxes on cells and drops the false positives."""
    fp = fp_kept = on_cells = on_cells_kept = 0
    for key, true_boxes in gt.items():
        t, r, p = _as_boxes(true_boxes), _label_boxes(reference, key), _label_boxes(labels, key)
        paired = np.zeros(len(r), bool)
        paired[one_to_one_matches(t, r, found_iou)[1]] = True
        kept = _max_iou(r, p) >= keep_iou
        fp, fp_kept = fp + int((~paired).sum()), fp_kept + int((~paired & kept).sum())
        on_cells, on_cells_kept = on_cells + int(paired.sum()), on_cells_kept + int((paired & kept).sum())
    return {"false_positives": fp, "false_positives_kept": fp_kept, "on_cells": on_cells, "on_cells_kept": on_cells_kept}


def cell_scores_by_labelling(gt: Mapping[object, Sequence], reference: Mapping[object, object],
                             predictions: Mapping[object, tuple], found_iou: float = 0.3, iou_thr: float = 0.5,
                             score_levels: Sequence[float] = (0.05, 0.2, 0.35, 0.5)) -> dict:
    """How a detector scores the cells its labels miss, against the cells they box.

    Cells are split as :func:`label_failure_modes` pairs them with ``reference`` (the weak
    labels; one-to-one at IoU >= ``found_iou``): ``labelled`` and ``unlabelled``. A cell's score is
    the highest score of a prediction ``(boxes, scores)`` on it at IoU >= ``iou_thr`` (0 if none).
    For each group: its cells, their median score, and how many score >= each of
    ``score_levels``. A detector that learnt every unboxed cell as background scores the
    unlabelled cells near 0 however well it scores the labelled ones."""
    groups = {"labelled": [], "unlabelled": []}
    for key, true_boxes in gt.items():
        t, r = _as_boxes(true_boxes), _label_boxes(reference, key)
        boxes, scores = predictions.get(key, (np.zeros((0, 4)), np.zeros(0)))
        p, s = _as_boxes(boxes), np.asarray(scores, np.float64).reshape(-1)
        paired = np.zeros(len(t), bool)
        paired[one_to_one_matches(t, r, found_iou)[0]] = True
        best = np.zeros(len(t))
        if len(t) and len(p):
            on = _iou_matrix(t, p) >= iou_thr
            best = np.where(on, s[None, :], 0.0).max(axis=1)
        groups["labelled"].extend(best[paired].tolist())
        groups["unlabelled"].extend(best[~paired].tolist())
    out = {}
    for name, values in groups.items():
        v = np.asarray(values)
        out[name] = {"cells": len(v), "median_score": float(np.median(v)) if len(v) else None,
                     "scored_at_least": {str(level): int(np.count_nonzero(v >= level)) for level in score_levels}}
    return out
