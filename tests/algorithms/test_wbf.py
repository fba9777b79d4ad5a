"""Fusion of TTA views: agreement with ensemble-boxes, k/T scaling, paper eq. 1, garbage input."""
import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion
from torchvision.ops import box_iou

from sissi_d2.algorithms.wbf import clean_view_boxes, fuse_views

H, W = 240, 320


def _random_views(rng, n_views=6, n_cells=12):
    # Cells seen by each view with jitter and dropouts, plus random false positives.
    centers = rng.uniform([20, 20], [W - 20, H - 20], (n_cells, 2))
    sizes = rng.uniform(8, 30, (n_cells, 2))
    boxes_list, scores_list = [], []
    for _ in range(n_views):
        seen = rng.random(n_cells) < 0.8
        c = centers[seen] + rng.normal(0, 1.5, (seen.sum(), 2))
        s = sizes[seen] * rng.uniform(0.9, 1.1, (seen.sum(), 2))
        boxes = np.hstack([c - s / 2, c + s / 2])
        fp = rng.uniform(0, [W - 30, H - 30], (3, 2))
        boxes = np.vstack([boxes, np.hstack([fp, fp + 15])])
        boxes_list.append(boxes)
        scores_list.append(rng.uniform(0.02, 1.0, len(boxes)))
    return boxes_list, scores_list


def _sorted(boxes, scores):
    order = np.lexsort((boxes[:, 1], boxes[:, 0], -np.round(scores, 5)))
    return boxes[order], scores[order]


@pytest.mark.parametrize("seed", range(5))
def test_matches_ensemble_boxes_on_valid_input(seed):
    rng = np.random.default_rng(seed)
    boxes_list, scores_list = _random_views(rng)
    scale = np.array([W, H, W, H])
    ref_boxes, ref_scores, _ = weighted_boxes_fusion(
        [b / scale for b in boxes_list], scores_list, [np.zeros(len(s)) for s in scores_list],
        weights=None, iou_thr=0.5, skip_box_thr=0.25, conf_type="avg")
    ref_boxes = ref_boxes * scale

    # Without post-processing: the library's output, in pixels.
    boxes, scores = fuse_views(boxes_list, scores_list, H, W, score_thresh=0.0,
                               nms_thresh=None, topk=None)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert len(boxes) == len(ref_boxes) > 0
    assert np.all(np.diff(scores) <= 0)
    b1, s1 = _sorted(boxes.astype(np.float64), scores.astype(np.float64))
    b2, s2 = _sorted(ref_boxes, ref_scores)
    np.testing.assert_allclose(b1, b2, atol=1e-3)
    np.testing.assert_allclose(s1, s2, atol=1e-6)

    # With the default post-processing: threshold, NMS 0.2, top-k.
    boxes, scores = fuse_views(boxes_list, scores_list, H, W, topk=5)
    keep = ref_scores >= 0.25
    cand_b, cand_s = ref_boxes[keep], ref_scores[keep]
    assert 0 < len(boxes) <= 5
    assert scores.min() >= 0.25
    assert np.all(np.diff(scores) <= 0)
    iou = box_iou(torch.as_tensor(boxes), torch.as_tensor(boxes)).numpy()
    assert np.all(iou[~np.eye(len(boxes), dtype=bool)] <= 0.2)
    # every kept box is one of the library's boxes
    for b, s in zip(boxes, scores):
        match = np.where(np.all(np.abs(cand_b - b) < 1e-3, axis=1))[0]
        assert len(match) >= 1 and np.isclose(cand_s[match], s, atol=1e-6).any()
    # the highest-scoring library box always survives
    assert np.isclose(scores[0], cand_s.max(), atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_box_found_in_k_of_t_views_is_scaled_by_k_over_t(k):
    n_views = 8
    box = np.array([[50.0, 60.0, 80.0, 100.0]])
    boxes_list = [box if v < k else np.zeros((0, 4)) for v in range(n_views)]
    scores_list = [np.array([0.9]) if v < k else np.zeros(0) for v in range(n_views)]
    boxes, scores = fuse_views(boxes_list, scores_list, H, W, score_thresh=0.0)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], box[0], atol=1e-3)
    np.testing.assert_allclose(scores[0], 0.9 * k / n_views, rtol=1e-6)


def test_fused_box_is_score_weighted_mean_of_the_cluster():
    # Paper eq. 1: the fused box is sum(s_i * b_i) / sum(s_i) over the cluster; the score is
    # the mean score, times k/T.
    cluster = np.array([[100.0, 100.0, 140.0, 150.0],
                        [102.0, 98.0, 143.0, 149.0],
                        [97.0, 103.0, 139.0, 152.0]])
    cluster_scores = np.array([0.9, 0.5, 0.3])
    far = np.array([[10.0, 10.0, 30.0, 30.0]])
    boxes_list = [cluster[[0]], np.vstack([cluster[[1]], far]), cluster[[2]], np.zeros((0, 4))]
    scores_list = [cluster_scores[[0]], np.array([0.5, 0.8]), cluster_scores[[2]], []]
    boxes, scores = fuse_views(boxes_list, scores_list, H, W, score_thresh=0.0)
    assert len(boxes) == 2
    expected = (cluster_scores[:, None] * cluster).sum(0) / cluster_scores.sum()
    i = int(np.argmin(np.abs(boxes[:, 0] - expected[0])))
    np.testing.assert_allclose(boxes[i], expected, atol=1e-3)
    np.testing.assert_allclose(scores[i], cluster_scores.mean() * 3 / 4, rtol=1e-6)
    np.testing.assert_allclose(scores[1 - i], 0.8 / 4, rtol=1e-6)


def test_low_scores_threshold_and_min_view_score():
    box = np.array([[50.0, 60.0, 80.0, 100.0]])
    # 0.3 survives skip_box_thr 0.25, but the fused score 0.3 * 1/2 < score_thresh.
    boxes, scores = fuse_views([box, box + 100], [[0.3], [0.9]], H, W)
    assert len(boxes) == 1 and np.isclose(scores[0], 0.45)
    # min_view_score drops boxes before fusion: with a higher one the single view is gone.
    boxes, _ = fuse_views([box], [[0.3]], H, W, min_view_score=0.3, skip_box_thr=0.0,
                          score_thresh=0.0)
    assert len(boxes) == 0


def test_nms_and_topk_are_applied_after_fusion():
    # Two separate clusters overlapping with IoU ~0.33 (> 0.2, < 0.5): WBF keeps both,
    # NMS keeps the better one.
    a = np.array([[0.0, 0.0, 40.0, 40.0]])
    b = np.array([[20.0, 0.0, 60.0, 40.0]])
    boxes, scores = fuse_views([np.vstack([a, b])], [[0.9, 0.6]], H, W, nms_thresh=None)
    assert len(boxes) == 2
    boxes, scores = fuse_views([np.vstack([a, b])], [[0.9, 0.6]], H, W)
    assert len(boxes) == 1 and np.isclose(scores[0], 0.9)
    many = np.array([[x, 0.0, x + 10.0, 10.0] for x in range(0, 300, 12)])
    boxes, scores = fuse_views([many], [np.linspace(0.3, 0.99, len(many))], H, W, topk=7)
    assert len(boxes) == 7
    np.testing.assert_allclose(scores, np.linspace(0.3, 0.99, len(many))[::-1][:7], rtol=1e-6)


def test_garbage_input_never_crashes():
    nan = float("nan")
    garbage_boxes = [
        np.array([[nan, 0, 10, 10], [5, 5, 15, 15], [30, 40, 10, 20], [-50, -50, 500, 400],
                  [400, 300, 500, 400], [10, 10, 10, 30], [0, 0, np.inf, 10]]),
        np.zeros((0, 4)),
        [],
        np.array([[5.0, 5.0, 15.0, 15.0]]),
    ]
    garbage_scores = [np.array([0.9, nan, 0.8, 0.7, 0.9, 0.9, 0.9]), np.zeros(0), [], [0.6]]
    boxes, scores = fuse_views(garbage_boxes, garbage_scores, H, W, score_thresh=0.0)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
    assert np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))
    assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= W
    assert boxes[:, [1, 3]].min() >= 0 and boxes[:, [1, 3]].max() <= H
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    # the inverted box was repaired, not dropped
    assert np.any(np.all(np.abs(boxes - [10, 20, 30, 40]) < 1e-3, axis=1))
    # the box outside the image (x1 = 400 > W) has zero area after clipping: gone
    assert not np.any(boxes[:, 0] >= W)

    for boxes_list, scores_list in [([], []), ([[]], [[]]), ([np.zeros((0, 4))] * 20, [[]] * 20),
                                    ([np.array([[nan] * 4])], [[0.9]]),
                                    ([np.array([[1.0, 2, 3, 4]])], [[0.005]])]:
        boxes, scores = fuse_views(boxes_list, scores_list, H, W)
        assert boxes.shape == (0, 4) and scores.shape == (0,)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32


def test_malformed_shapes_raise_value_error_not_exit():
    with pytest.raises(ValueError, match="scores"):
        fuse_views([np.zeros((2, 4))], [[0.5]], H, W)
    with pytest.raises(ValueError, match="Nx4"):
        fuse_views([np.zeros((2, 3))], [[0.5, 0.5]], H, W)
    with pytest.raises(ValueError, match="score arrays"):
        fuse_views([np.zeros((1, 4))], [], H, W)
    with pytest.raises(ValueError, match="conf_type"):
        fuse_views([np.zeros((1, 4))], [[0.5]], H, W, conf_type="mean")


def test_clean_view_boxes():
    boxes, scores = clean_view_boxes(
        [[30, 40, 10, 20], [-5, -5, 5, 5], [0, 0, 0, 10], [1, 1, 2, 2]],
        [0.5, 0.5, 0.5, 0.01], 50, 50)
    assert boxes.tolist() == [[10, 20, 30, 40], [0, 0, 5, 5]]
    assert scores.tolist() == [0.5, 0.5]


def test_weak_label_anchor_votes_as_one_weighted_view():
    # T = 4 views, anchor weight 2: fused score = (sum of view scores + 2 if a weak box joins)
    # / (4 + 2).
    cell = np.array([[10.0, 10.0, 30.0, 30.0]])
    missed = np.array([[60.0, 60.0, 80.0, 80.0]])  # found by the model only
    weak_only = np.array([[10.0, 60.0, 30.0, 80.0]])  # in the weak labels only
    views_b = [np.concatenate([cell, missed])] * 4
    views_s = [np.array([0.9, 0.6])] * 4
    anchor = np.concatenate([cell + 2.0, weak_only])
    kw = dict(iou_thr=0.5, skip_box_thr=0.0, min_view_score=0.0, score_thresh=0.0, nms_thresh=None, topk=None)
    boxes, scores = fuse_views(views_b, views_s, 100, 100, anchor_boxes=anchor, anchor_weight=2.0, **kw)
    def score_at(x, y):
        return [float(sc) for bx, sc in zip(boxes, scores) if abs(bx[0] - x) < 5 and abs(bx[1] - y) < 5]

    np.testing.assert_allclose(score_at(10, 10), [(4 * 0.9 + 2) / 6], rtol=1e-5)  # both agree
    np.testing.assert_allclose(score_at(60, 60), [4 * 0.6 / 6], rtol=1e-5)  # model only
    np.testing.assert_allclose(score_at(10, 60), [2 / 6], rtol=1e-5)  # weak labels only
    # The weak box pulls the fused corners by its weight (score 1 x weight 2 vs 4 x 0.9).
    fused_cell = [bx for bx in boxes if bx[1] < 40 and bx[0] < 40][0]
    np.testing.assert_allclose(fused_cell[0], (4 * 0.9 * 10 + 2 * 12) / (4 * 0.9 + 2), rtol=1e-4)


def test_zero_anchor_weight_is_the_paper():
    rng = np.random.default_rng(0)
    views_b = [np.sort(rng.uniform(0, 100, (6, 4)).reshape(6, 2, 2), axis=1).transpose(0, 2, 1).reshape(6, 4)
               for _ in range(3)]
    views_s = [rng.uniform(0.3, 1.0, 6) for _ in range(3)]
    plain = fuse_views(views_b, views_s, 100, 100)
    anchored = fuse_views(views_b, views_s, 100, 100, anchor_boxes=views_b[0], anchor_weight=0.0)
    np.testing.assert_array_equal(plain[0], anchored[0])
    np.testing.assert_array_equal(plain[1], anchored[1])
    with pytest.raises(ValueError, match="anchor_weight"):
        fuse_views(views_b, views_s, 100, 100, anchor_boxes=views_b[0], anchor_weight=-1.0)
