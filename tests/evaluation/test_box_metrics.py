"""Label-set scores: one-to-one matching, F1 at IoU 0.5, and the three failure modes of weak labels."""
import numpy as np
import pytest

from sissi_d2.evaluation.box_metrics import cell_scores_by_labelling, label_failure_modes, label_set_f1, one_to_one_matches


def test_one_to_one_matching_never_reuses_a_box():
    t = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], float)
    p = np.array([[0, 0, 10, 10]], float)
    i, j, iou = one_to_one_matches(t, p, 0.3)
    assert len(i) == 1 and j.tolist() == [0] and iou[0] == pytest.approx(1.0)
    assert len(one_to_one_matches(t, np.zeros((0, 4)), 0.3)[0]) == 0


def test_failure_modes_count_missed_false_and_loose_labels():
    truth = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], float)}
    labels = {"a": (np.array([
        [0, 0, 10, 10],  # exact
        [20, 20, 33, 33],  # IoU 100/169 = 0.59: tight enough
        [39, 39, 55, 55],  # IoU 100/256 = 0.39: found but loose
        [80, 80, 90, 90],  # on no cell: a false positive
    ], float), np.ones(4))}
    m = label_failure_modes(truth, labels)
    assert m["missed_cells"] == pytest.approx(25.0)  # the cell at 60-70 has no label
    assert m["false_positives"] == pytest.approx(25.0)
    assert m["loose_boxes"] == pytest.approx(100 / 3)
    assert m["size_ratio"] == [1.3, 1.3]  # median of 1.0, 1.3, 1.6
    assert m["cells"] == 4 and m["labels"] == 4
    # the same set at IoU 0.5: the loose box is a miss and a false positive there
    f1 = label_set_f1(truth, labels)
    assert f1["precision50"] == pytest.approx(50.0) and f1["recall50"] == pytest.approx(50.0)


def test_failure_modes_of_nothing():
    truth = {"a": np.array([[0, 0, 10, 10]], float)}
    m = label_failure_modes(truth, {})
    assert m["missed_cells"] == 100.0 and m["false_positives"] == 0.0 and m["size_ratio"] is None


def test_boxes_beyond_counts_labels_away_from_every_reference_box_and_the_cells_among_them():
    import numpy as np

    from sissi_d2.evaluation.box_metrics import boxes_beyond

    gt = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float), "b": np.zeros((0, 4))}
    weak = {"a": np.array([[0, 0, 10, 10]], float)}
    labels = {"a": (np.array([[1, 1, 10, 10],      # on the weak box: not beyond
                               [20, 20, 30, 31],    # a cell the weak labels miss
                               [52, 52, 58, 58],    # near a missed cell, IoU 0.36 < 0.5: beyond, not a cell
                               [80, 80, 90, 90]], float), np.ones(4)),  # on no cell
              "b": np.array([[5, 5, 9, 9]], float)}  # an image without weak labels: all of its labels are beyond
    got = boxes_beyond(gt, weak, labels)
    assert got == {"boxes": 4, "cells": 1, "cells_percent": 100.0 / 3}
    assert boxes_beyond(gt, weak, labels, iou_thr=0.3)["cells"] == 2
    assert boxes_beyond(gt, labels, labels)["boxes"] == 0  # nothing is beyond itself


def test_reference_boxes_kept_splits_the_kept_weak_boxes_into_false_positives_and_boxes_on_cells():
    import numpy as np

    from sissi_d2.evaluation.box_metrics import reference_boxes_kept

    gt = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)}
    weak = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [80, 80, 90, 90]], float)}
    labels = {"a": (np.array([[0, 0, 10, 11], [50, 50, 61, 60], [200, 200, 210, 210]], float), np.ones(3))}
    assert reference_boxes_kept(gt, weak, labels) == {"false_positives": 2, "false_positives_kept": 1,
                                                      "on_cells": 2, "on_cells_kept": 1}
    assert reference_boxes_kept(gt, weak, {})["on_cells_kept"] == 0


def test_cells_are_scored_apart_by_whether_the_weak_labels_box_them():
    truth = {"a": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], "b": [[0, 0, 20, 20]]}
    weak = {"a": np.array([[0, 0, 10, 11.0]]), "b": np.zeros((0, 4))}  # boxes cell a0; a1, a2, b0 unboxed
    preds = {"a": (np.array([[0, 0, 10, 10], [20, 20, 30, 31], [0, 0, 9, 10], [40, 40, 44, 44.0]]),
                   np.array([0.9, 0.3, 0.95, 0.99])),  # the last one is too small for a2 (IoU 0.16)
             "b": (np.array([[0, 0, 20, 19.0]]), np.array([0.6]))}
    got = cell_scores_by_labelling(truth, weak, preds, score_levels=(0.2, 0.5))
    assert got["labelled"] == {"cells": 1, "median_score": 0.95, "scored_at_least": {"0.2": 1, "0.5": 1}}
    # the unlabelled cells score 0.3 (a1), 0 (a2: no prediction at IoU >= 0.5) and 0.6 (b0)
    assert got["unlabelled"] == {"cells": 3, "median_score": 0.3, "scored_at_least": {"0.2": 2, "0.5": 1}}
    # an image without predictions scores its cells 0
    empty = cell_scores_by_labelling(truth, weak, {})
    assert empty["unlabelled"]["median_score"] == 0.0 and empty["labelled"]["scored_at_least"]["0.05"] == 0
