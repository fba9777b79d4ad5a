"""tools/compare_labels.py: AP50/AP75/AP/AR and counts of one label source against another."""
import copy
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, write_tiny_dataset

TOOL = os.path.join(ROOT, "tools", "compare_labels.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("_tool_compare_labels", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    """gt.json (3 images, 5 boxes each), corrected.json (img000 lost a box, img001 gained one),
    detections.json (tools/predict.py form: the gt boxes + low-score extras) and a Label Studio
    style export (``images/<8 hex>-<name>`` file names, no scores)."""
    from sissi_d2.data.datasets import records_to_coco, save_records_as_coco
    from sissi_d2.engine.predict import Prediction, predictions_to_coco

    root = tmp_path_factory.mktemp("compare")
    recs = write_tiny_dataset(str(root / "imgs"), 3, seed=11)
    paths = {"gt": save_records_as_coco(recs, root / "gt.json")}

    corrected = copy.deepcopy(recs)
    corrected[0]["annotations"] = corrected[0]["annotations"][1:]
    corrected[1]["annotations"].append(dict(corrected[1]["annotations"][0], bbox=[1.0, 1.0, 20.0, 20.0]))
    paths["corrected"] = save_records_as_coco(corrected, root / "corrected.json")

    preds = []
    for r in recs:
        gt = np.array([a["bbox"] for a in r["annotations"]], np.float32)
        extra = np.array([[0, 60, 30, 90], [60, 0, 90, 30]], np.float32)
        preds.append(Prediction(r["file_name"], 96, 96, np.concatenate([gt, extra]),
                                np.array([0.9] * len(gt) + [0.2, 0.1], np.float32)))
    det = predictions_to_coco(preds, {"score_thresh": 0.5})
    paths["detections"] = str(root / "detections.json")
    with open(paths["detections"], "w") as f:
        json.dump(det, f)

    ls = records_to_coco(recs)
    for img in ls["images"]:
        img["file_name"] = "images/1a2b3c4d-" + os.path.basename(img["file_name"])
    paths["label_studio"] = str(root / "label_studio.json")
    with open(paths["label_studio"], "w") as f:
        json.dump(ls, f)
    return paths


def test_labels_against_themselves_subprocess(label_files, tmp_path):
    out_json = tmp_path / "metrics.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, TOOL, "--gt", label_files["gt"], "--pred", label_files["gt"],
                          "--output", str(out_json)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for col in ("AP50", "AP75", "AP", "AR", "img000.png", "img002.png"):
        assert col in out.stdout
    result = json.loads(out_json.read_text())
    m = result["metrics"]
    assert m["AP50"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(100.0) and m["AR"] == pytest.approx(100.0)
    assert m["num_gt"] == m["num_pred"] == 15
    rows = result["counts"]["per_image"]
    assert [r["file"] for r in rows] == ["img000.png", "img001.png", "img002.png"]
    assert all(r["gt"] == r["pred"] == 5 and r["diff"] == 0 for r in rows)
    assert result["counts"]["mean_abs_error"] == 0


def test_corrected_labels_lose_ap_and_counts_show_the_edits(label_files):
    tool = load_tool()
    res = tool.compare(label_files["gt"], label_files["corrected"])
    assert [r["diff"] for r in res["counts"]["per_image"]] == [-1, +1, 0]
    assert res["counts"]["mean_abs_error"] == pytest.approx(2 / 3)
    # one of 15 boxes missed, one false positive scored like every true box
    assert 80 < res["metrics"]["AP50"] < 100 and res["metrics"]["AR"] == pytest.approx(100 * 14 / 15)
    # and the other way round: recall against the corrected labels is 14/15 as well
    back = tool.compare(label_files["corrected"], label_files["gt"])
    assert back["metrics"]["AR"] == pytest.approx(100 * 14 / 15)


def test_detections_json_counts_at_its_threshold(label_files):
    tool = load_tool()
    res = tool.compare(label_files["gt"], label_files["detections"])
    # AP uses every box: the low-score extras rank below all true boxes and cost nothing
    assert res["metrics"]["AP50"] == pytest.approx(100.0) and res["metrics"]["num_pred"] == 21
    # counts use the threshold stored by predict.py (0.5): the extras are not cells
    assert res["counts"]["score_thresh"] == 0.5
    assert all(r["pred"] == 5 for r in res["counts"]["per_image"])
    low = tool.compare(label_files["gt"], label_files["detections"], score_thresh=0.05)
    assert all(r["pred"] == 7 and r["diff"] == 2 for r in low["counts"]["per_image"])


def test_label_studio_names_and_dataset_names(label_files, capsys):
    tool = load_tool()
    res = tool.compare(label_files["gt"], label_files["label_studio"])
    assert res["metrics"]["AP50"] == pytest.approx(100.0)
    # a registered data set name works on either side
    assert tool.main(["--register", f"cmp_tiny_gt=coco:{label_files['gt']}", "--gt", "cmp_tiny_gt",
                      "--pred", label_files["corrected"], "--max-rows", "1"]) == 0
    printed = capsys.readouterr().out
    assert "img000.png" in printed and "img001.png" not in printed and "2 more images" in printed


def test_errors_are_clear(label_files, tmp_path, capsys):
    tool = load_tool()
    other = tmp_path / "other.json"
    data = json.loads(open(label_files["gt"]).read())
    for img in data["images"]:
        img["file_name"] = "elsewhere_" + os.path.basename(img["file_name"])
    other.write_text(json.dumps(data))
    assert tool.main(["--gt", label_files["gt"], "--pred", str(other)]) == 2
    assert "No image of" in capsys.readouterr().err
    assert tool.main(["--gt", label_files["gt"], "--pred", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
    assert tool.main(["--gt", "no_such_dataset_xyz", "--pred", label_files["gt"]]) == 2
    assert "no_such_dataset_xyz" in capsys.readouterr().err
    (tmp_path / "list.json").write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    assert tool.main(["--gt", label_files["gt"], "--pred", str(tmp_path / "list.json")]) == 2
    assert "bare list" in capsys.readouterr().err
