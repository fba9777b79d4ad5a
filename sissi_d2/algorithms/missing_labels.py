"""Which negatives a detector should not be punished for when its labels miss objects (pure, torch).

Weak labels miss cells (17 % of the Usiigaci training cells). A detector trained on them learns
every missed cell as background, so it reproduces the misses, and SISSI's correction, which can
only relabel what the detector finds, has nothing to add (docs/experiments.md, "What each
weak-label error costs the detector"). Missing-annotation detectors (soft sampling, background
recalibration) stop punishing background samples that the model already scores as an object:
here a negative is left out of the classification loss when the model gives it a cell
probability of at least ``min_score`` *and* it lies away from every label (IoU below
``max_iou`` with the label it was matched to), i.e. where a cell could be that nobody boxed. A
negative that overlaps a label (a shifted or oversized box of a labelled cell) keeps its loss,
so box quality is still learnt.
"""
from __future__ import annotations

import torch

__all__ = ["unlabelled_confident_negatives"]


def unlabelled_confident_negatives(is_negative: torch.Tensor, cell_prob: torch.Tensor, label_iou: torch.Tensor,
                                   min_score: float, max_iou: float) -> torch.Tensor:
    """Boolean mask of the samples to leave out of the classification loss.

    ``is_negative``: bool per sample (sampled as background); ``cell_prob``: the model's current
    probability that the sample is a cell (no gradient is taken through it); ``label_iou``: IoU of
    the sample with the label it was matched to (0 where the image has none). ``min_score`` in
    (0, 1]; ``max_iou`` in [0, 1)."""
    if not 0.0 < min_score <= 1.0:
        raise ValueError(f"min_score must be in (0, 1], got {min_score}")
    if not 0.0 <= max_iou < 1.0:
        raise ValueError(f"max_iou must be in [0, 1), got {max_iou}")
    if not (is_negative.shape == cell_prob.shape == label_iou.shape):
        raise ValueError(f"shapes differ: {tuple(is_negative.shape)}, {tuple(cell_prob.shape)}, "
                         f"{tuple(label_iou.shape)}")
    return is_negative.bool() & (cell_prob.detach() >= min_score) & (label_iou < max_iou)
