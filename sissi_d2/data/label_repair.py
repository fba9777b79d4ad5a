"""Weak labels with one kind of error repaired from the truth: what each error costs a detector.

Weak labels fail in three ways (``evaluation.box_metrics.label_failure_modes``): boxes on no cell
(false positives), cells with no box (missed cells) and boxes on a cell that miss its extent
(loose boxes). SISSI's correction can only pay off by repairing errors that hold the detector
back, so an analysis-only experiment trains the detector on the weak labels with one kind
repaired from the true labels and measures what each repair is worth (docs/experiments.md,
entries ``r6_*``). Training never reads truth otherwise; these sets exist only for that study.

Weak boxes are paired with cells exactly as ``label_failure_modes`` pairs them: one-to-one
(Hungarian on IoU) at IoU >= ``found_iou``, so each repair removes exactly one column of its table:

* ``false_positives``: the boxes paired with no cell are dropped;
* ``missed_cells``: the true box of every cell paired with no weak box is added;
* ``loose_boxes``: every paired weak box becomes its cell's true box.

:func:`missed_cells` gives the true boxes of the cells no weak box is paired with, so that a study
entry can mark them as neither cells nor background (COCO crowd regions) instead of adding them.

Labels are ``{image key: Nx4 XYXY boxes}`` (a ``(boxes, scores)`` pair is accepted and its scores
dropped: a repaired set is trained on, every box alike). Pure: no model, no catalog.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..evaluation.box_metrics import one_to_one_matches

__all__ = ["REPAIRS", "repair_labels", "missed_cells"]

REPAIRS = ("false_positives", "missed_cells", "loose_boxes")


def _boxes(value) -> np.ndarray:
    if isinstance(value, tuple):
        value = value[0]
    return np.asarray(value, np.float64).reshape(-1, 4)


def _unpaired(n: int, paired) -> np.ndarray:
    """Bool mask of the ``n`` boxes whose index is not in ``paired``."""
    mask = np.ones(n, bool)
    mask[paired] = False
    return mask


def _image_pairs(labels: Mapping[str, object], truth: Mapping[str, object], found_iou: float):
    """(image key, true boxes, labelled boxes) of every image of ``truth``, after the checks."""
    if not 0.0 < found_iou <= 1.0:
        raise ValueError(f"found_iou {found_iou} must be in (0, 1]")
    extra = sorted(set(labels) - set(truth))
    if extra:
        raise ValueError(f"{len(extra)} labelled image(s) have no true labels to repair from, e.g. {extra[:3]}; "
                         "the truth must cover every labelled image")
    for key, true_value in truth.items():
        yield key, _boxes(true_value), _boxes(labels.get(key, np.zeros((0, 4))))


def repair_labels(labels: Mapping[str, object], truth: Mapping[str, object], repairs: Iterable[str],
                  found_iou: float = 0.3) -> dict:
    """``labels`` with the errors named in ``repairs`` (any of :data:`REPAIRS`) repaired from ``truth``.

    Every image of ``truth`` is in the result (an image without labels has none to pair, so only
    ``missed_cells`` gives it boxes); a labelled image that ``truth`` lacks is refused, since its
    errors cannot be told apart. Applying all three repairs gives the true boxes back."""
    repairs = tuple(repairs)
    unknown = [r for r in repairs if r not in REPAIRS]
    if unknown or not repairs:
        raise ValueError(f"repairs {list(repairs)!r}: name one or more of {list(REPAIRS)}")
    out = {}
    for key, t, p in _image_pairs(labels, truth, found_iou):
        i, j, _ = one_to_one_matches(t, p, found_iou)
        paired = p[j].copy()
        if "loose_boxes" in repairs:
            paired = t[i].copy()
        keep = [paired]
        if "false_positives" not in repairs:
            keep.append(p[_unpaired(len(p), j)])
        if "missed_cells" in repairs:
            keep.append(t[_unpaired(len(t), i)])
        out[key] = np.concatenate(keep).reshape(-1, 4)
    return out


def missed_cells(labels: Mapping[str, object], truth: Mapping[str, object], found_iou: float = 0.3) -> dict:
    """The true boxes of the cells of ``truth`` paired with no box of ``labels`` (the pairing of
    :func:`repair_labels`), for every image of ``truth``: what ``missed_cells`` would add."""
    out = {}
    for key, t, p in _image_pairs(labels, truth, found_iou):
        i, _, _ = one_to_one_matches(t, p, found_iou)
        out[key] = t[_unpaired(len(t), i)].reshape(-1, 4)
    return out
