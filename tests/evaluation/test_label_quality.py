"""Pseudo-label snapshots scored against the truth."""
import json
import os

import numpy as np
import pytest

from sissi_d2.data.label_files import read_label_json
from sissi_d2.evaluation.label_quality import pseudo_label_quality, snapshot_paths


def _write_snapshot(path, boxes_by_file, with_scores=True):
    images, anns = [], []
    for i, (name, boxes) in enumerate(boxes_by_file.items(), start=1):
        images.append({"id": i, "file_name": f"/data/{name}", "height": 100, "width": 100})
        for x0, y0, x1, y1 in boxes:
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}
            if with_scores:
                ann["score"] = 0.9
            anns.append(ann)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}, f)


def test_read_label_json_keeps_empty_images_and_defaults_scores(tmp_path):
    path = str(tmp_path / "weak.json")
    _write_snapshot(path, {"a_img.png": [(10, 10, 30, 40)], "b_img.png": []}, with_scores=False)
    labels = read_label_json(path)
    assert set(labels) == {"a_img.png", "b_img.png"}
    np.testing.assert_allclose(labels["a_img.png"][0], [[10, 10, 30, 40]])
    np.testing.assert_allclose(labels["a_img.png"][1], [1.0])
    assert labels["b_img.png"][0].shape == (0, 4)


def test_pseudo_label_quality_per_epoch_in_order(tmp_path):
    truth = {"a_img.png": np.array([[10, 10, 30, 30], [50, 50, 80, 80]], np.float32)}
    run = tmp_path / "run"
    # epoch 12: one of two cells; epoch 3: both cells; a stray file that is not a snapshot
    _write_snapshot(str(run / "sissi" / "pseudo_labels" / "epoch_0012.json"), {"a_img.png": [(10, 10, 30, 30)]})
    _write_snapshot(str(run / "sissi" / "pseudo_labels" / "epoch_0003.json"),
                    {"a_img.png": [(10, 10, 30, 30), (50, 50, 80, 80)]})
    (run / "sissi" / "pseudo_labels" / "notes.json").write_text("{}")
    assert [e for e, _ in snapshot_paths(str(run))] == [3, 12]
    quality = pseudo_label_quality(truth, str(run))
    assert [q["epoch"] for q in quality] == [3, 12]
    assert quality[0]["AP50"] == pytest.approx(100.0)
    assert quality[1]["AR"] == pytest.approx(50.0)
    assert quality[1]["AP50"] < quality[0]["AP50"]
    assert pseudo_label_quality(truth, str(tmp_path / "no_run")) == []


def test_label_set_f1_counts_one_to_one_matches_and_ignores_scores():
    import numpy as np

    from sissi_d2.evaluation.box_metrics import label_set_f1

    truth = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)}
    labels = {"a": (np.array([[0, 0, 10, 11], [1, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]], float),
                    np.array([0.1, 0.9, 0.2, 1.0]))}
    m = label_set_f1(truth, labels)
    # 2 true boxes matched once each (the duplicate is a false positive), 1 missed, 2 false
    assert (m["precision50"], m["recall50"], m["labels"]) == (50.0, 100.0 * 2 / 3, 4)
    assert abs(m["F1_50"] - 2 * 50 * (200 / 3) / (50 + 200 / 3)) < 1e-9
    # scores do not matter; plain arrays are accepted; an image without labels is all misses
    assert label_set_f1(truth, {"a": labels["a"][0]}) == m
    assert label_set_f1(truth, {})["recall50"] == 0.0
