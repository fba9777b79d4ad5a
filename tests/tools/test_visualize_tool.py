"""tools/visualize.py: a data set or a labels json drawn on its images; two sources side by side
with the boxes only one of them has in a second colour."""
import copy
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, write_tiny_dataset

TOOL = os.path.join(ROOT, "tools", "visualize.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("_tool_visualize", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_color(image, bgr, tol=3):
    return bool(np.all(np.abs(image.astype(int) - np.array(bgr)) <= tol, axis=2).any())


def free_box(record, size=16):
    """A box of the image that overlaps none of its labelled boxes."""
    boxes = np.array([a["bbox"] for a in record["annotations"]])
    for y in range(0, 96 - size, 4):
        for x in range(0, 96 - size, 4):
            if np.all((boxes[:, 0] >= x + size) | (boxes[:, 2] <= x) | (boxes[:, 1] >= y + size) | (boxes[:, 3] <= y)):
                return [float(x), float(y), float(x + size), float(y + size)]
    raise AssertionError("no free place in the test image")


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    """weak.json with file names relative to the image folder (stored elsewhere), corrected.json
    (img000 lost a box, img001 gained one) with absolute names, a 16-bit image among them, and a
    predict.py-style detections.json."""
    from sissi_d2.data.datasets import save_records_as_coco
    from sissi_d2.engine.predict import Prediction, predictions_to_coco

    root = tmp_path_factory.mktemp("visualize")
    recs = write_tiny_dataset(str(root / "imgs"), 3, seed=21)
    img = cv2.imread(recs[2]["file_name"], cv2.IMREAD_UNCHANGED)
    cv2.imwrite(recs[2]["file_name"], img.astype(np.uint16) * 250)  # 16-bit: drawn after stretching
    (root / "labels").mkdir()
    paths = {"images": str(root / "imgs"),
             "weak": save_records_as_coco(recs, root / "labels" / "weak.json", image_root=root / "imgs")}
    corrected = copy.deepcopy(recs)
    corrected[0]["annotations"] = corrected[0]["annotations"][1:]
    corrected[1]["annotations"].append(dict(corrected[1]["annotations"][0], bbox=free_box(recs[1])))
    paths["corrected"] = save_records_as_coco(corrected, root / "corrected.json")
    preds = [Prediction(r["file_name"], 96, 96, np.array([[10, 10, 40, 40], [50, 50, 90, 90]], np.float32),
                        np.array([0.9, 0.1], np.float32)) for r in recs]
    paths["detections"] = str(root / "detections.json")
    with open(paths["detections"], "w") as f:
        json.dump(predictions_to_coco(preds, {"score_thresh": 0.5}), f)
    return paths


def test_side_by_side_subprocess(label_files, tmp_path):
    out_dir = tmp_path / "review"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, TOOL, "--labels", label_files["weak"], "--image-root", label_files["images"],
                          "--compare", label_files["corrected"], "--output", str(out_dir), "--max-images", "2"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(out_dir)) == ["img000.png", "img001.png"]
    assert "wrote 2 PNG(s)" in out.stdout
    from sissi_d2.utils.visualize import COLORS

    first = cv2.imread(str(out_dir / "img000.png"))
    second = cv2.imread(str(out_dir / "img001.png"))
    assert first.shape[1] > 2 * 96 and first.shape[0] > 96  # two panels with titles
    half = first.shape[1] // 2
    # img000: the weak box the correction removed is red on the left; nothing is orange
    assert has_color(first[:, :half], COLORS["red"]) and not has_color(first, COLORS["orange"])
    assert has_color(first[:, half:], COLORS["green"]) and not has_color(first[:, half:], COLORS["red"])
    # img001: the added box is orange on the right
    assert has_color(second[:, half:], COLORS["orange"]) and not has_color(second[:, :half], COLORS["red"])


def test_dataset_by_name_and_detections(label_files, tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--register", f"vis_tiny_corrected=coco:{label_files['corrected']}",
                      "--dataset", "vis_tiny_corrected", "--output", str(tmp_path / "ds"), "--scale", "2"]) == 0
    names = sorted(os.listdir(tmp_path / "ds"))
    assert names == ["img000.png", "img001.png", "img002.png"]
    assert cv2.imread(str(tmp_path / "ds" / "img002.png")).shape[1] == 192
    assert "vis_tiny_corrected: 3 images, 15 boxes" in capsys.readouterr().out

    # detections.json: only boxes at its stored score threshold are drawn (one per image here)
    assert tool.main(["--labels", label_files["detections"], "--output", str(tmp_path / "det"),
                      "--max-images", "1"]) == 0
    assert os.listdir(tmp_path / "det") == ["img000.png"]
    drawn = cv2.imread(str(tmp_path / "det" / "img000.png"))
    from sissi_d2.utils.visualize import COLORS

    green = np.all(np.abs(drawn.astype(int) - np.array(COLORS["green"])) <= 3, axis=2)
    ys, xs = np.nonzero(green)
    assert xs.min() >= 10 and xs.max() <= 40  # the 0.9 box [10, 40]; the 0.1 box at x 50..90 is not drawn
    assert tool.main(["--labels", label_files["detections"], "--output", str(tmp_path / "all"), "--max-images", "1",
                      "--score-thresh", "0"]) == 0
    drawn = cv2.imread(str(tmp_path / "all" / "img000.png"))
    green = np.all(np.abs(drawn.astype(int) - np.array(COLORS["green"])) <= 3, axis=2)
    assert np.nonzero(green)[1].max() > 80


def test_errors_name_the_problem(label_files, tmp_path, capsys):
    tool = load_tool()
    # relative file names without the right --image-root: the missing image is named
    assert tool.main(["--labels", label_files["weak"], "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "img000.png" in err and "--image-root" in err
    assert tool.main(["--dataset", "no_such_dataset_xyz", "--output", str(tmp_path / "x")]) == 2
    assert "no_such_dataset_xyz" in capsys.readouterr().err
