"""Which negatives are left out of the loss when labels miss objects (no model)."""
import pytest
import torch

from sissi_d2.algorithms.missing_labels import unlabelled_confident_negatives


def test_only_confident_negatives_away_from_every_label_are_left_out():
    is_negative = torch.tensor([True, True, True, True, False, True])
    cell_prob = torch.tensor([0.9, 0.7, 0.69, 0.9, 0.99, 0.9])
    label_iou = torch.tensor([0.0, 0.05, 0.0, 0.3, 0.0, 0.1])
    skip = unlabelled_confident_negatives(is_negative, cell_prob, label_iou, min_score=0.7, max_iou=0.1)
    # 0: confident, far; 1: at the score bound (kept out); 2: below it; 3: overlaps a label
    # (a shifted box of a labelled cell: its loss teaches box quality); 4: a positive; 5: IoU at the bound
    assert skip.tolist() == [True, True, False, False, False, False]


def test_no_gradient_flows_through_the_scores():
    prob = torch.tensor([0.9, 0.2], requires_grad=True)
    skip = unlabelled_confident_negatives(torch.tensor([True, True]), prob, torch.zeros(2), 0.5, 0.1)
    assert skip.dtype == torch.bool and not skip.requires_grad and skip.tolist() == [True, False]


@pytest.mark.parametrize("min_score, max_iou, match", [(0.0, 0.1, "min_score"), (1.2, 0.1, "min_score"),
                                                      (0.7, -0.1, "max_iou"), (0.7, 1.0, "max_iou")])
def test_bad_settings_are_named(min_score, max_iou, match):
    with pytest.raises(ValueError, match=match):
        unlabelled_confident_negatives(torch.tensor([True]), torch.tensor([0.9]), torch.tensor([0.0]), min_score, max_iou)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        unlabelled_confident_negatives(torch.tensor([True, False]), torch.tensor([0.9]), torch.tensor([0.0]), 0.7, 0.1)
