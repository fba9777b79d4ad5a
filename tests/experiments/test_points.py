"""tools/points.py compare --quick end to end: plan, clicks -> boxes, four rows, report, figures, resume.

The quick comparison (about 10 s of training) run twice into a temporary folder with its own synthetic
root and cache; a second run must reuse every row.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from tests.conftest import ROOT

TOOL = os.path.join(ROOT, "tools", "points.py")
ROWS = ("boxes", "cutpaste", "cutpaste_real10", "cutpaste_real10_sissi")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick comparison run twice into one folder: the second run must reuse every row."""
    tmp = tmp_path_factory.mktemp("points")
    env = {**os.environ, "SISSI_SYNTHETIC_ROOT": str(tmp / "synthetic"), "SISSI_CACHE_DIR": str(tmp / "cache"),
           "PYTHONWARNINGS": "ignore"}
    stdout = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, TOOL, "compare", "--quick", "--output", str(tmp / "out")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        stdout.append(proc.stdout)
    yield {"out": tmp / "out", "first": stdout[0], "second": stdout[1]}
    shutil.rmtree(tmp, ignore_errors=True)  # four model_final.pth of ~90 MB


def test_plan_then_progress_then_report(quick):
    lines = quick["first"].splitlines()
    plan = next(i for i, ln in enumerate(lines) if "Training from clicks, setting 'quick'" in ln)
    trained = [i for i, ln in enumerate(lines) if "done in" in ln and "epoch" in ln]
    assert any("estimated time" in ln for ln in lines[plan:plan + 12])
    assert trained and plan < trained[0], "the plan is printed before anything trains"
    assert len(trained) == 3 * 3 + 1, "one line per epoch: three rows of 3 epochs, the branch's 1 epoch"
    report = (quick["out"] / "report.md").read_text()
    for name in ("Boxes from clicks", "Cut-paste only", "Cut-paste + 10 % real", "Cut-paste + 10 % real + SISSI"):
        assert f"| {name}" in report, name
    for fig in ("points_boxes_from_clicks.png", "points_synthesized.png"):
        assert f"figures/{fig}" in report
        img = cv2.imread(str(quick["out"] / "figures" / fig))
        assert img is not None and img.shape[1] > 400, fig


def test_clicks_boxes_and_rows(quick):
    from sissi_d2.data.label_files import load_coco_boxes, read_point_file

    out = quick["out"]
    results = json.loads((out / "results.json").read_text())
    clicks = read_point_file(out / "clicks" / "clicks_50.csv")
    boxes = load_coco_boxes(out / "clicks" / "boxes_50.json")
    q = results["click_boxes"]["50"]
    assert q["clicks"] == len(clicks.clicks) == sum(len(r["annotations"]) for r in boxes) > 0
    assert q["clicks"] == round(q["cells"] / 2) or abs(q["clicks"] - q["cells"] / 2) <= 4, "about half the cells"
    # 2 or 3 clicks per quick image: each image's own estimate or, below 3 clicked components, the set's
    assert set(q["size_from"]) <= {"weak_labels", "weak_labels, all images"} and 0 < q["recall50"] <= 100
    assert q["cell_size_vs_true_median"] and q["cell_size_error_percent"] is not None
    rows = results["rows"]["50"]
    assert list(rows) == list(ROWS)
    for key, m in rows.items():
        assert all(0.0 <= m[k] <= 100.0 for k in ("AP50", "AP75", "AP", "AR")), key
    assert rows["cutpaste_real10_sissi"]["branched_from_epoch"] == 2
    assert (out / "f50" / "cutpaste_real10_sissi" / "sissi" / "pseudo_labels" / "epoch_0002.json").is_file()
    assert not list((out / "f50" / "boxes").glob("model_0*.pth")), "only model_final.pth is kept"


def test_second_run_reuses_everything(quick):
    assert not [ln for ln in quick["second"].splitlines() if "done in" in ln and "epoch" in ln]
    results = json.loads((quick["out"] / "results.json").read_text())
    assert list(results["rows"]["50"]) == list(ROWS)
