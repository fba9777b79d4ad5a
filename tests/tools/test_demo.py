"""tools/demo.py --quick end to end: data, weak labels, three rows sharing their past, report.

One quick run (about a minute on 2 CPU cores) into a temporary folder with its own synthetic
root and cache; a second run must reuse everything.
"""
import glob
import json
import math
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT

TOOL = os.path.join(ROOT, "tools", "demo.py")
ROW_NAMES = ("Weak-only", "Baseline", "A+SISSI(S)")


def _run(out, tmp, timeout=900, extra=()):
    env = dict(os.environ, SISSI_SYNTHETIC_ROOT=str(tmp / "synthetic"), SISSI_CACHE_DIR=str(tmp / "cache"),
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, TOOL, "--quick", "--output", str(out), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "out"
    return {"tmp": tmp, "out": out, "stdout": _run(out, tmp)}


def test_report_table_and_figures(demo):
    out, stdout = demo["out"], demo["stdout"]
    report = (out / "report.md").read_text()
    for name in ROW_NAMES + ("Weak labels (as detections)",):
        assert f"| {name}" in report, name
        assert f"| {name}" in stdout, f"the table is printed too: {name}"
    assert "| AP50" in report and "| AR" in report
    for fig in ("memorisation_curve.png", "pseudo_labels.png", "synthetic_like.png", "test_predictions.png"):
        path = out / "figures" / fig
        assert f"figures/{fig}" in report, fig
        img = cv2.imread(str(path))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 100, fig
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"weak_labels_train", "weak_labels_test", "weak_labels_test_unranked", "weak_only",
                                    "baseline", "adele_sissi_s"}
    # the same boxes without their ranking can only lose AP (scores all 1: ties in file order)
    assert results["rows"]["weak_labels_test_unranked"]["AP50"] <= results["rows"]["weak_labels_test"]["AP50"] + 1e-6
    for key, row in results["rows"].items():
        for m in ("AP50", "AP75", "AP", "AR"):
            assert row[m] is None or math.isnan(row[m]) or 0.0 <= row[m] <= 100.0, (key, m, row[m])
    assert results["rows"]["weak_labels_train"]["AP50"] > 0, "weak labels must find some true cells"


def test_progress_is_printed(demo):
    lines = [ln for ln in demo["stdout"].splitlines() if ln.startswith("[demo ")]
    assert any("Step 1/6" in ln for ln in lines) and any("Step 6/6" in ln for ln in lines)
    assert sum("done in" in ln and "epoch" in ln for ln in lines) >= 5, "one line per trained epoch"


def test_adele_row_fired_and_wrote_pseudo_labels(demo):
    out = demo["out"]
    results = json.loads((out / "results.json").read_text())
    fired = results["adele_fired_epoch"]
    assert fired is not None and fired + 1 < results["epochs"], "ADELE must fire with a correction epoch left"
    snaps = sorted(glob.glob(str(out / "rows" / "adele_sissi_s" / "sissi" / "pseudo_labels" / "epoch_*.json")))
    assert snaps and os.path.basename(snaps[0]) == f"epoch_{fired + 1:04d}.json"
    coco = json.loads(open(snaps[0]).read())
    assert len(coco["images"]) == 4 and coco["categories"][0]["name"] == "cell"
    assert results["branches"]["adele_sissi_s"]["branched_from_epoch"] == fired + 1
    mem = json.loads((out / "rows" / "weak_only" / "sissi" / "memorisation.json").read_text())
    assert mem["fired_epoch"] == fired


def test_rows_share_their_past(demo):
    out = demo["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["branches"]["weak_only"]["branched_from_epoch"] == 0  # the trunk
    for row in ("baseline", "adele_sissi_s"):
        b = results["branches"][row]
        assert b["same_as"] == "weak_only" or b["branched_from_epoch"] >= 1, (row, b)
    assert "shared early phase" in (out / "report.md").read_text()
    # only the final weights are kept, for every row trained (a row whose rule never fired is the trunk)
    assert not glob.glob(str(out / "rows" / "*" / "model_0*.pth"))
    for row in ("weak_only", "baseline", "adele_sissi_s"):
        if not results["branches"][row]["same_as"]:
            assert os.path.isfile(out / "rows" / row / "model_final.pth"), row


def test_second_run_reuses_everything(demo):
    before = json.loads((demo["out"] / "results.json").read_text())
    stdout = _run(demo["out"], demo["tmp"])
    assert "up to date" in stdout
    trained = [r for r, b in before["branches"].items() if not b["same_as"]]
    assert stdout.count("trained earlier, reused") == len(trained)
    assert "done in" not in stdout.replace("Done in", ""), "no epoch is trained again"
    after = json.loads((demo["out"] / "results.json").read_text())
    for key in before["rows"]:
        assert after["rows"][key]["AP50"] == pytest.approx(before["rows"][key]["AP50"]), key


def test_oracle_added_to_a_finished_demo_trains_the_oracle_only(demo):
    before = json.loads((demo["out"] / "results.json").read_text())
    stdout = _run(demo["out"], demo["tmp"], extra=("--oracle",))
    assert "training again" not in stdout, "the trunk and its branches keep their weights"
    trained = [r for r, b in before["branches"].items() if not b["same_as"]]
    assert stdout.count("trained earlier, reused") == len(trained)
    assert "Oracle: epoch 0/" in stdout and "trained on true labels" in stdout, "the Oracle trains, on the true labels"
    after = json.loads((demo["out"] / "results.json").read_text())
    assert after["rows"]["oracle"]["name"] == "Oracle (true labels)"
    assert 0.0 <= after["rows"]["oracle"]["AP50"] <= 100.0
    for key in before["rows"]:
        assert after["rows"][key]["AP50"] == pytest.approx(before["rows"][key]["AP50"]), key
    report = (demo["out"] / "report.md").read_text()
    assert "| Oracle (true labels)" in report and "**Oracle** (`oracle.yaml`, `--oracle`)" in report
    assert os.path.isfile(demo["out"] / "rows" / "oracle" / "model_final.pth")


def test_weak_labels_without_debris_sized_boxes(demo):
    """The demo's weak labels drop the boxes under a quarter of their set's median box (debris)."""
    from sissi_d2.data.label_files import read_label_json

    log = (demo["out"] / "log.txt").read_text()
    found = re.search(r"dropped (\d+) of (\d+) boxes smaller than 0.25 x the median box \((\d+) px²\)", log)
    assert found, "the first weak-label set (target train) reports what it dropped"
    kept, threshold = int(found.group(2)) - int(found.group(1)), float(found.group(3))
    assert "`drop_small_boxes`" in (demo["out"] / "report.md").read_text()
    labels = read_label_json(demo["tmp"] / "synthetic_quick" / "target_train_weak.json")
    areas = np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b, _ in labels.values()])
    assert len(areas) == kept > 0
    assert areas.min() >= threshold - 0.5  # the log rounds the threshold
