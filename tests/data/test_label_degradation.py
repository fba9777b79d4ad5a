"""Degraded label sets (data/label_degradation.py): exact kept fractions, seeded and nested draws,
boxes inside the image, empty images kept, exact false-positive counts, clear errors."""
import numpy as np
import pytest

from sissi_d2.data.label_degradation import (
    Degradation, add_false_positives, check_complete_labels, choose_images, false_positive_count, images_without_boxes,
    jitter_boxes, keep_boxes, keep_images, kept_count,
)


def _labels(n_images=6, seed=0, size=(100, 120)):
    """Six images with 10, 7, 4, 1, 11 and 6 boxes, all inside the image."""
    rng = np.random.default_rng(seed)
    labels, sizes = {}, {}
    for i in range(n_images):
        n = [10, 7, 4, 1, 11, 6][i % 6]
        xy = rng.uniform(0, 40, (n, 2))  # inside the smallest image of the tests (60 x 70)
        wh = rng.uniform(5, 20, (n, 2))
        labels[f"im{i}.png"] = np.concatenate([xy, xy + wh], axis=1)
        sizes[f"im{i}.png"] = size
    return labels, sizes


def _rows(boxes):
    return {tuple(np.round(b, 6)) for b in boxes}


def test_kept_count_rounds_half_up_exactly():
    assert [kept_count(10, p) for p in (100, 75, 50, 25, 10, 0)] == [10, 8, 5, 3, 1, 0]  # 7.5 -> 8, 2.5 -> 3
    assert kept_count(6, 25) == 2 and kept_count(4, 10) == 0 and kept_count(5, 10) == 1  # 1.5 -> 2, 0.4 -> 0, 0.5 -> 1
    assert kept_count(3, 50.0) == 2 and kept_count(20, 12.5) == 3  # 2.5 -> 3
    assert false_positive_count(10, 0.25) == 3 and false_positive_count(3, 0.1) == 0 and false_positive_count(5, 0.1) == 1


def test_kept_fraction_is_exact_per_image_seeded_and_nested():
    labels, _ = _labels()
    previous = None
    for p in (100, 75, 50, 25, 10):
        kept = keep_boxes(labels, p, seed=3)
        for key, boxes in labels.items():
            assert len(kept[key]) == kept_count(len(boxes), p), (p, key)
            assert _rows(kept[key]) <= _rows(boxes)
            if previous is not None:
                assert _rows(kept[key]) <= _rows(previous[key]), "a smaller budget keeps a subset"
        previous = kept
    again = keep_boxes(labels, 50, seed=3)
    other = keep_boxes(labels, 50, seed=4)
    assert all(np.array_equal(again[k], keep_boxes(labels, 50, seed=3)[k]) for k in labels)
    assert any(not np.array_equal(again[k], other[k]) for k in labels), "another seed, another draw"
    # the draw of an image does not depend on the other images of the set
    one = keep_boxes({"im0.png": labels["im0.png"]}, 50, seed=3)
    assert np.array_equal(one["im0.png"], again["im0.png"])


def test_an_image_left_without_boxes_stays_in_the_set():
    labels, _ = _labels()
    kept = keep_boxes(labels, 10, seed=0)  # im3 has 1 box: 0.1 -> 0; im2 has 4: 0.4 -> 0
    assert set(kept) == set(labels)
    assert images_without_boxes(kept) == ["im2.png", "im3.png"]
    assert kept["im3.png"].shape == (0, 4)


def test_fewer_images_nested_left_out_or_weak():
    labels, _ = _labels()
    sets = [choose_images(labels, k, seed=1) for k in range(1, 7)]
    assert [len(s) for s in sets] == list(range(1, 7))
    assert all(set(a) <= set(b) for a, b in zip(sets, sets[1:]))
    assert choose_images(reversed(list(labels)), 3, seed=1) == sets[2], "order of the keys does not matter"
    chosen = keep_images(labels, 2, seed=1)
    assert sorted(chosen) == sets[1] and all(np.array_equal(chosen[k], labels[k]) for k in chosen)
    weak = {k: np.array([[0, 0, 5, 5]], float) for k in labels}
    mixed = keep_images(labels, 2, seed=1, others=weak)
    assert set(mixed) == set(labels)
    assert all(np.array_equal(mixed[k], labels[k] if k in sets[1] else weak[k]) for k in labels)
    with pytest.raises(ValueError, match="no weak labels"):
        keep_images(labels, 2, seed=1, others={k: weak[k] for k in sets[1]})


def test_jittered_boxes_stay_inside_the_image_and_scale_with_sigma():
    labels, sizes = _labels(size=(60, 70))
    labels["edge.png"] = np.array([[0, 0, 3, 2], [65, 55, 70, 60]], float)  # at the borders, tiny
    sizes["edge.png"] = (60, 70)
    for sigma in (10, 30, 100):
        out = jitter_boxes(labels, sizes, sigma, seed=2)
        for key, boxes in out.items():
            h, w = sizes[key]
            assert len(boxes) == len(labels[key])
            assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0), (sigma, key)
            assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h), (sigma, key)
            assert np.all(boxes[:, 2] - boxes[:, 0] >= 1 - 1e-9) and np.all(boxes[:, 3] - boxes[:, 1] >= 1 - 1e-9)
    zero = jitter_boxes(labels, sizes, 0, seed=2)
    assert all(np.allclose(zero[k], labels[k]) for k in labels)
    # away from the borders, 20 % moves each side twice as far as 10 % (the same draws)
    big = {"c.png": np.array([[200, 200, 240, 260]], float)}
    s10 = jitter_boxes(big, {"c.png": (1000, 1000)}, 10, seed=5)["c.png"]
    s20 = jitter_boxes(big, {"c.png": (1000, 1000)}, 20, seed=5)["c.png"]
    np.testing.assert_allclose(s20 - big["c.png"], 2 * (s10 - big["c.png"]))
    assert np.array_equal(s10, jitter_boxes(big, {"c.png": (1000, 1000)}, 10, seed=5)["c.png"])


def test_false_positive_rate_is_respected():
    labels, sizes = _labels()
    for rate in (0.1, 0.25, 0.5, 1.0):
        out = add_false_positives(labels, sizes, rate, seed=0)
        for key, boxes in labels.items():
            added = out[key][len(boxes):]
            assert np.array_equal(out[key][: len(boxes)], boxes), "true boxes come first, unchanged"
            assert len(added) == false_positive_count(len(boxes), rate), (rate, key)
            h, w = sizes[key]
            assert np.all(added[:, :2] >= 0) and np.all(added[:, 2] <= w) and np.all(added[:, 3] <= h)
    total = sum(len(b) for b in labels.values())
    added = sum(len(b) for b in add_false_positives(labels, sizes, 0.5, seed=0).values()) - total
    assert abs(added - 0.5 * total) <= len(labels) / 2, "per-image rounding only"
    # false boxes avoid the cells where there is room: none overlaps a true box by IoU >= 0.1
    sparse = {"s.png": np.array([[10, 10, 20, 20], [50, 50, 60, 60]], float)}
    out = add_false_positives(sparse, {"s.png": (200, 200)}, 2.0, seed=1)["s.png"]
    assert len(out) == 6
    from torchvision.ops import box_iou
    import torch

    assert float(box_iou(torch.as_tensor(out[2:]), torch.as_tensor(sparse["s.png"])).max()) < 0.1


def test_degradation_points_names_and_apply():
    labels, sizes = _labels()
    assert Degradation("cells", 50).name == "cells_p50" and Degradation("cells", 100).complete
    assert Degradation("images", 4, others="weak").name == "images_k4_weak"
    point = Degradation("noise", 20, fp_rate=0.2)
    assert point.name == "noise_s20_r0.2" and not point.complete and Degradation("noise", 0).complete
    noisy = point.apply(labels, sizes, seed=0)
    assert all(len(noisy[k]) == len(b) + false_positive_count(len(b), 0.2) for k, b in labels.items())
    assert sorted(Degradation("images", 2).apply(labels, sizes, seed=0)) == choose_images(labels, 2, seed=0)


@pytest.mark.parametrize("make, match", [
    (lambda: Degradation("cells", 120), "from 0 to 100, got 120"),
    (lambda: Degradation("cells", -5), "from 0 to 100, got -5"),
    (lambda: kept_count(10, 101), "got 101"),
    (lambda: Degradation("noise", 150), "jitter sigma.*got 150"),
    (lambda: Degradation("noise", 10, fp_rate=-1), "false-positive rate.*got -1"),
    (lambda: Degradation("images", 0), "whole number >= 1, got 0"),
    (lambda: Degradation("images", 2.5), "got 2.5"),
    (lambda: Degradation("cells", 50, fp_rate=0.1), "belongs to the noise axis"),
    (lambda: Degradation("pixels", 1), "unknown budget axis 'pixels'"),
    (lambda: Degradation("images", 7).apply(_labels()[0], _labels()[1], seed=0), "k = 7 .* only 6 images"),
    (lambda: choose_images(["a", "b"], 3, seed=0), "from 1 to 2 .* got 3"),
])
def test_bad_values_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_set_without_complete_labels_is_refused():
    good = [{"file_name": "a.png", "annotations": [{"bbox": [0, 0, 1, 1]}]}]
    check_complete_labels(good, "truth")
    with pytest.raises(ValueError, match="'imgs' has no labels at all"):
        check_complete_labels([{"file_name": "a.png", "annotations": []}], "imgs")
    with pytest.raises(ValueError, match="'part' is not completely labelled: 1 of its 2 images"):
        check_complete_labels(good + [{"file_name": "b.png", "annotations": []}], "part")
    with pytest.raises(ValueError, match="'usiigaci_train_weak' holds 1 boxes with a score.*usiigaci_train_oracle"):
        check_complete_labels([{"file_name": "a.png", "annotations": [{"bbox": [0, 0, 1, 1], "score": 0.9}]}],
                              "usiigaci_train_weak")
    with pytest.raises(ValueError, match="has no images"):
        check_complete_labels([], "empty")
