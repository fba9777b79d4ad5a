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
from .box_metrics import boxes_beyond, coco_box_metrics, label_failure_modes, label_set_f1, reference_boxes_kept

__all__ = ["snapshot_paths", "pseudo_label_quality", "label_set_quality"]

_SNAPSHOT = re.compile(r"epoch_(\d+)\.json$")


def snapshot_paths(output_dir: str) -> list:
    """[(epoch, path)] of a run's pseudo-label snapshots, by epoch."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "sissi", "pseudo_labels", "epoch_*.json")):
        m = _SNAPSHOT.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def label_set_quality(gt: dict, labels: dict, max_dets: int = 400) -> dict:
    """One label set against ``gt``: COCO AP/AR of its boxes ranked by score, F1 at IoU 0.5 with
    scores ignored (what training sees), and its failure modes (missed cells, false positives,
    loose boxes, size ratio; ``box_metrics.label_failure_modes``)."""
    return {**coco_box_metrics(gt, labels, max_dets=max_dets), **label_set_f1(gt, labels),
            **label_failure_modes(gt, labels)}


def pseudo_label_quality(gt: dict, output_dir: str, max_dets: int = 400, weak_labels: dict | None = None) -> list:
    """[{"epoch": e, **label_set_quality}] of every snapshot of the run in ``output_dir`` against
    ``gt`` (file basename -> true XYXY boxes); with ``weak_labels``, also ``beyond_weak_labels``
    (the labels away from every weak box and the cells among them, ``box_metrics.boxes_beyond``) and
    ``weak_labels_kept`` (the weak false positives and boxes on cells the labels keep,
    ``box_metrics.reference_boxes_kept``)."""
    out = []
    for epoch, path in snapshot_paths(output_dir):
        labels = read_label_json(path)
        q = dict(epoch=epoch, **label_set_quality(gt, labels, max_dets))
        if weak_labels is not None:
            q["beyond_weak_labels"] = boxes_beyond(gt, weak_labels, labels)
            q["weak_labels_kept"] = reference_boxes_kept(gt, weak_labels, labels)
        out.append(q)
    return out
