"""Fusion of the test-time views' detections into pseudo-labels (weighted boxes fusion).

SISSI fuses the boxes predicted on the 20 TTA views (already mapped back to the original frame)
with weighted boxes fusion (Solovyev et al.): boxes are clustered greedily by IoU with the
running fused box, and each cluster becomes the score-weighted mean of its members (paper
eq. 1). Settings from docs/method.md: views' boxes with score <= 0.01 are dropped, then
``ensemble_boxes.weighted_boxes_fusion(iou_thr=0.5, skip_box_thr=0.25, conf_type="avg",
weights=None)``; with "avg" the fused score is the mean member score times min(T, n)/T for a
cluster of n boxes out of T views, so a box found in k of T views is scaled by k/T. Fused boxes
with score >= 0.25 are kept, then NMS at IoU 0.2 and the top 200.

ensemble-boxes expects coordinates normalised to [0, 1] (pixel coordinates are silently
clipped to 1) and calls ``exit()`` on mismatched lengths, so all input is validated, cleaned and
normalised here first. Empty views are still passed to it: T counts every view, found or not.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from ensemble_boxes import weighted_boxes_fusion
from torchvision.ops import nms

__all__ = ["clean_view_boxes", "fuse_views"]

_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _empty():
    return np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.float32)


def clean_view_boxes(boxes, scores, height: int, width: int, min_score: float = 0.01):
    """Valid boxes of one view in absolute XYXY pixels, and their scores (float64).

    Drops non-finite boxes and scores, puts swapped corners in order, clips to the image,
    and drops zero-area boxes and boxes with score <= ``min_score``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be Nx4 XYXY, got shape {boxes.shape}")
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    keep = np.all(np.isfinite(boxes), axis=1) & np.isfinite(scores) & (scores > min_score)
    boxes, scores = boxes[keep], scores[keep]
    x1 = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, width)
    x2 = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, width)
    y1 = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, height)
    y2 = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, height)
    boxes = np.stack([x1, y1, x2, y2], axis=1)
    keep = (x2 > x1) & (y2 > y1)
    return boxes[keep], scores[keep]


def fuse_views(
    boxes_list: Sequence,
    scores_list: Sequence,
    height: int,
    width: int,
    *,
    iou_thr: float = 0.5,
    skip_box_thr: float = 0.25,
    conf_type: str = "avg",
    min_view_score: float = 0.01,
    score_thresh: float = 0.25,
    nms_thresh: Optional[float] = 0.2,
    topk: Optional[int] = 200,
    anchor_boxes=None,
    anchor_weight: float = 0.0,
):
    """Fuse per-view detections (absolute XYXY in the original HxW frame) into one set.

    Args:
        boxes_list, scores_list: one Nx4 box array and one N score array per view; a view
            may have no boxes. Every view counts in the "found in k of T views" scaling.
        height, width: size of the original image.
        nms_thresh: IoU of the final NMS; None disables it.
        topk: number of boxes kept, highest score first; None keeps all.
        anchor_boxes, anchor_weight: optional Nx4 boxes (the image's initial weak labels) that
            vote as one more view of weight ``anchor_weight`` with score 1 (a deviation from the
            paper, which fuses the model's views only; 0 = the paper). With views of weight 1,
            a fused box scores (sum of its views' scores + anchor_weight if a weak box joins
            it) / (T + anchor_weight): a cell the weak labels missed needs the model's
            confident votes, a weak box the model never confirms scores
            anchor_weight / (T + anchor_weight), and the weak box pulls the fused corners, so
            the labels cannot drift away from the image evidence round after round.

    Returns:
        (boxes Nx4 float32 absolute XYXY, scores N float32), sorted by decreasing score.
    """
    if len(boxes_list) != len(scores_list):
        raise ValueError(f"{len(boxes_list)} box arrays but {len(scores_list)} score arrays")
    if not (height > 0 and width > 0):
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if conf_type not in _CONF_TYPES:
        raise ValueError(f"unknown conf_type {conf_type!r}; expected one of {_CONF_TYPES}")
    weights = [1.0] * len(boxes_list)
    if anchor_weight > 0 and anchor_boxes is not None:
        anchor = np.asarray(anchor_boxes, dtype=np.float64).reshape(-1, 4)
        boxes_list = list(boxes_list) + [anchor]
        scores_list = list(scores_list) + [np.ones(len(anchor))]
        weights.append(float(anchor_weight))
    elif anchor_weight < 0:
        raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")
    if len(boxes_list) == 0:
        return _empty()

    scale = np.array([width, height, width, height], dtype=np.float64)
    norm_boxes, norm_scores, labels = [], [], []
    for boxes, scores in zip(boxes_list, scores_list):
        boxes, scores = clean_view_boxes(boxes, scores, height, width, min_view_score)
        norm_boxes.append(boxes / scale)
        norm_scores.append(scores)
        labels.append(np.zeros(len(scores), dtype=np.int64))
    if sum(len(s) for s in norm_scores) == 0:
        return _empty()

    fused, fused_scores, _ = weighted_boxes_fusion(
        norm_boxes,
        norm_scores,
        labels,
        weights=weights,
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
    )
    fused = np.asarray(fused, dtype=np.float64).reshape(-1, 4) * scale
    fused_scores = np.asarray(fused_scores, dtype=np.float64).reshape(-1)

    keep = fused_scores >= score_thresh
    fused, fused_scores = fused[keep], fused_scores[keep]
    if len(fused) == 0:
        return _empty()

    boxes_t = torch.as_tensor(fused, dtype=torch.float32)
    scores_t = torch.as_tensor(fused_scores, dtype=torch.float32)
    if nms_thresh is not None:
        order = nms(boxes_t, scores_t, float(nms_thresh))  # sorted by decreasing score
    else:
        order = torch.argsort(scores_t, descending=True, stable=True)
    if topk is not None:
        order = order[: int(topk)]
    return boxes_t[order].numpy(), scores_t[order].numpy()
