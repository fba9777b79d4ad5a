"""How good were the labels a run trained on? Weak labels and pseudo-label snapshots scored
against true boxes (the oracle masks), the measure that explains whether correction helped.

The trainer writes the labels of every correction epoch to
``OUTPUT_DIR/sissi/pseudo_labels/epoch_NNNN.json`` (COCO json, boxes with scores); scoring each
snapshot against the truth of the same images shows whether the pseudo-labels improved on the
weak labels they replaced. Truth is only read here, never by training.
"""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from .box_metrics import coco_box_metrics

__all__ = ["read_label_json", "snapshot_paths", "pseudo_label_quality"]

_SNAPSHOT = re.compile(r"epoch_(\d+)\.json$")


def read_label_json(path: str) -> dict:
    """COCO json (weak labels, a pseudo-label snapshot) -> file basename -> (Nx4 XYXY, scores).

    Every image of the json is present, with empty arrays when it has no box; boxes without a
    ``score`` get 1."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    by_id = {im["id"]: os.path.basename(im["file_name"]) for im in data.get("images", [])}
    boxes = {k: [] for k in by_id.values()}
    scores = {k: [] for k in by_id.values()}
    for ann in data.get("annotations", []):
        key = by_id[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        boxes[key].append([x, y, x + w, y + h])
        scores[key].append(float(ann.get("score", 1.0)))
    return {k: (np.asarray(boxes[k], np.float32).reshape(-1, 4), np.asarray(scores[k], np.float32)) for k in boxes}


def snapshot_paths(output_dir: str) -> list:
    """[(epoch, path)] of a run's pseudo-label snapshots, by epoch."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "sissi", "pseudo_labels", "epoch_*.json")):
        m = _SNAPSHOT.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def pseudo_label_quality(gt: dict, output_dir: str, max_dets: int = 400) -> list:
    """[{"epoch": e, "AP50": .., "AP75": .., "AP": .., "AR": .., "num_gt", "num_pred"}] of every
    snapshot of the run in ``output_dir`` against ``gt`` (file basename -> true XYXY boxes)."""
    return [dict(epoch=epoch, **coco_box_metrics(gt, read_label_json(path), max_dets=max_dets))
            for epoch, path in snapshot_paths(output_dir)]
