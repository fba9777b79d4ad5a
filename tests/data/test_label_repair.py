"""Weak labels with one kind of error repaired from the truth (data/label_repair.py)."""
import numpy as np
import pytest

from sissi_d2.data.label_repair import REPAIRS, missed_cells, repair_labels
from sissi_d2.evaluation.box_metrics import label_failure_modes

# three cells: one boxed tightly, one boxed loosely (IoU 0.45 with its cell: found, not tight),
# one missed; plus a box on no cell
TRUTH = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)}
WEAK = {"a": np.array([[0, 0, 10, 10], [20, 20, 36, 34], [80, 80, 90, 90]], float)}


def _rows(boxes):
    return sorted(map(tuple, np.asarray(boxes).tolist()))


def test_each_repair_removes_exactly_its_failure_mode():
    before = label_failure_modes(TRUTH, WEAK)
    assert before["missed_cells"] > 0 and before["false_positives"] > 0 and before["loose_boxes"] > 0
    for repair, gone in (("false_positives", "false_positives"), ("missed_cells", "missed_cells"),
                         ("loose_boxes", "loose_boxes")):
        after = label_failure_modes(TRUTH, repair_labels(WEAK, TRUTH, [repair]))
        assert after[gone] == 0.0, repair
        # the other two kinds of error stay (counted in cells / matched boxes, which a repair may change)
        for other in {"missed_cells", "false_positives", "loose_boxes"} - {gone}:
            assert after[other] > 0, (repair, other)


def test_the_repaired_boxes():
    fp = repair_labels(WEAK, TRUTH, ["false_positives"])["a"]
    assert _rows(fp) == _rows(WEAK["a"][:2])
    missed = repair_labels(WEAK, TRUTH, ["missed_cells"])["a"]
    assert _rows(missed) == _rows(np.vstack([WEAK["a"], TRUTH["a"][2:]]))
    loose = repair_labels(WEAK, TRUTH, ["loose_boxes"])["a"]
    assert _rows(loose) == _rows(np.vstack([TRUTH["a"][:2], WEAK["a"][2:]]))


def test_all_repairs_give_the_truth_back_and_scores_are_dropped():
    scored = {"a": (WEAK["a"], np.array([0.9, 0.5, 0.1]))}
    assert _rows(repair_labels(scored, TRUTH, REPAIRS)["a"]) == _rows(TRUTH["a"])


def test_images_without_labels_and_bad_arguments():
    truth = {**TRUTH, "b": np.array([[5, 5, 15, 15]], float)}
    out = repair_labels(WEAK, truth, ["false_positives"])
    assert out["b"].shape == (0, 4)  # nothing to pair: only missed_cells would box it
    assert _rows(repair_labels(WEAK, truth, ["missed_cells"])["b"]) == _rows(truth["b"])
    with pytest.raises(ValueError, match="no true labels"):
        repair_labels({**WEAK, "c": np.zeros((0, 4))}, TRUTH, ["loose_boxes"])
    with pytest.raises(ValueError, match="name one or more of"):
        repair_labels(WEAK, TRUTH, ["typo"])
    with pytest.raises(ValueError, match="name one or more of"):
        repair_labels(WEAK, TRUTH, [])
    with pytest.raises(ValueError, match="found_iou"):
        repair_labels(WEAK, TRUTH, ["loose_boxes"], found_iou=0.0)


def test_the_missed_cells_are_what_the_missed_cell_repair_adds_and_become_crowd_regions(tmp_path):
    from sissi_d2.data.label_files import image_key, load_coco_boxes, records_with_boxes, save_records_as_coco
    from sissi_d2.evaluation.evaluator import records_ground_truth

    truth = {**TRUTH, "b": np.array([[5, 5, 15, 15]], float)}
    missed = missed_cells(WEAK, truth)
    assert _rows(missed["a"]) == _rows(TRUTH["a"][2:]) and _rows(missed["b"]) == _rows(truth["b"])
    assert _rows(np.vstack([WEAK["a"], missed["a"]])) == _rows(repair_labels(WEAK, truth, ["missed_cells"])["a"])
    with pytest.raises(ValueError, match="no true labels"):
        missed_cells({**WEAK, "c": np.zeros((0, 4))}, TRUTH)
    # written as crowd regions: kept in the file, and no label to anything that reads labels
    import cv2

    records = [{"file_name": str(tmp_path / f"{k}.png"), "height": 100, "width": 100, "image_id": k} for k in "ab"]
    for r in records:
        cv2.imwrite(r["file_name"], np.zeros((100, 100), np.uint8))
    truth, missed = {image_key(r): truth[k] for k, r in zip("ab", records)}, {image_key(r): missed[k] for k, r in zip("ab", records)}
    weak = {image_key(records[0]): WEAK["a"], image_key(records[1]): np.zeros((0, 4))}
    path = save_records_as_coco(records_with_boxes(records, weak, missed), str(tmp_path / "labels.json"))
    back = load_coco_boxes(path)
    assert [a.get("iscrowd", 0) for a in back[0]["annotations"]] == [0, 0, 0, 1]
    assert [a.get("iscrowd", 0) for a in back[1]["annotations"]] == [1]
    labels = records_ground_truth(back)
    assert _rows(labels[image_key(records[0])]) == _rows(WEAK["a"]) and labels[image_key(records[1])].shape == (0, 4)
