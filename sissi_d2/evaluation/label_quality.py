"""How good were the labels a run trained on? Weak labels and pseudo-label snapshots scored
against true boxes (the oracle masks), the measure that explains whether correction helped.

The trainer writes the labels of every correction epoch to
``OUTPUT_DIR/sissi/pseudo_labels/epoch_NNNN.json`` (COCO json, boxes with scores); scoring each
snapshot against the truth of the same images shows whether the pseudo-labels improved on the
weak labels they replaced. Truth is only read here, never by training.
"""
from __future__ import annotations

import glob
import os
import re

from ..data.label_files import read_label_json
from .box_metrics import coco_box_metrics, label_set_f1

__all__ = ["snapshot_paths", "pseudo_label_quality"]

_SNAPSHOT = re.compile(r"epoch_(\d+)\.json$")


def snapshot_paths(output_dir: str) -> list:
    """[(epoch, path)] of a run's pseudo-label snapshots, by epoch."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "sissi", "pseudo_labels", "epoch_*.json")):
        m = _SNAPSHOT.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def pseudo_label_quality(gt: dict, output_dir: str, max_dets: int = 400) -> list:
    """[{"epoch": e, "AP50": .., "AP75": .., "AP": .., "AR": .., "num_gt", "num_pred", "precision50",
    "recall50", "F1_50"}] of every
    snapshot of the run in ``output_dir`` against ``gt`` (file basename -> true XYXY boxes)."""
    out = []
    for epoch, path in snapshot_paths(output_dir):
        labels = read_label_json(path)
        out.append(dict(epoch=epoch, **coco_box_metrics(gt, labels, max_dets=max_dets), **label_set_f1(gt, labels)))
    return out
