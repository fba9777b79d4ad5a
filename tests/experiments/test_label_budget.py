"""Label-budget curves (experiments/label_budget.py, tools/label_budget.py).

The quick plan end to end (synthetic data, 4 label sets x 3 methods, about a minute on 2 CPU
cores), its re-run (everything reused), and without training: the real plan's configs and its
time estimate, the label sets written and registered, the errors on bad input.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT

TOOL = os.path.join(ROOT, "tools", "label_budget.py")
METHODS = ("weak_only", "cloning_only", "adele_sissi_s")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick plan run twice into one folder (the second run must reuse everything)."""
    tmp = tmp_path_factory.mktemp("label_budget")
    env = {**os.environ, "SISSI_SYNTHETIC_ROOT": str(tmp / "synthetic"), "SISSI_CACHE_DIR": str(tmp / "cache"),
           "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, TOOL, "--quick", "--output", str(tmp / "out")]
    runs = []
    for _ in range(2):
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        runs.append(proc.stdout)
    yield {"out": tmp / "out", "first": runs[0], "again": runs[1]}
    shutil.rmtree(tmp, ignore_errors=True)  # ~1 GB of model_final.pth


def test_quick_plan_end_to_end(quick):
    out, stdout = quick["out"], quick["first"]
    # the plan, its time and its disk come before anything trains
    plan_at = stdout.index("Label-budget study, plan 'quick'")
    assert stdout.index("time:") < stdout.index("label set 1/4") and stdout.index("disk: at most") > plan_at
    assert "trained, " in stdout and "s per iteration" in stdout, "one progress line per trained epoch"
    budget = json.loads((out / "budget.json").read_text())
    assert list(budget["sets"]) == ["complete", "cells_p50", "images_k1", "noise_s20_r0.2"]
    for name, result in budget["sets"].items():
        assert set(result["rows"]) == set(METHODS), name
        for key, row in result["rows"].items():
            for metric in ("AP50", "AR"):
                assert row[metric] is not None and 0.0 <= row[metric] <= 100.0, (name, key, metric)
        a = result["rows"]["adele_sissi_s"]
        assert a["branched_from_epoch"] is not None or a["same_as"] == "weak_only", name
    assert budget["sets"]["images_k1"]["images"] == 1 and budget["sets"]["cells_p50"]["quality"]["precision50"] == 100.0
    table = (out / "budget.md").read_text()
    assert "| Plain AP50 / AR" in table and "| A+SISSI(S) AP50 / AR" in table and "Oracle (Plain on the complete" in table
    assert table in stdout, "the table is printed too"
    for axis in ("cells", "images", "noise"):
        png = out / "figures" / f"label_budget_quick_{axis}.png"
        img = cv2.imread(str(png))
        assert img is not None and img.shape[1] > 500, axis
    # the label sets on disk: exact per-image fractions of the truth, registered under their names
    from sissi_d2.data.label_degradation import kept_count
    from sissi_d2.data.label_files import read_label_json

    truth = read_label_json(str(out / "sets" / "complete" / "labels.json"))
    half = read_label_json(str(out / "sets" / "cells_p50" / "labels.json"))
    assert set(half) == set(truth) and all(len(half[k][0]) == kept_count(len(truth[k][0]), 50) for k in truth)
    # finished sets keep model_final.pth only
    assert not list((out / "sets").glob("*/*/model_0*.pth"))


def test_rerun_reuses_every_finished_set(quick):
    again = quick["again"]
    assert again.count("finished earlier, reused") == 4
    assert "trained, " not in again, "nothing is trained again"
    first = json.loads((quick["out"] / "budget.json").read_text())
    assert all(first["sets"][n]["rows"] for n in first["sets"])


# ---------------------------------------------------------------------------------------------
# without training
# ---------------------------------------------------------------------------------------------
def test_real_plan_rows_branch_and_fit_two_hours(tmp_path):
    from sissi_d2.experiments import label_budget as lb
    from sissi_d2.experiments.rows import past_differences

    plan = lb.PLANS["real"]
    cfgs = lb.set_configs(plan, str(tmp_path), "cells_p50", "label_budget_cells_p50", 25)
    trunk, cloning, adele = (cfgs[k] for k in METHODS)
    assert past_differences(adele, trunk) == [], "A+SISSI(S) branches from Plain"
    assert past_differences(cloning, trunk) == ["SISSI.CLONING.MODE"]
    assert cloning.SISSI.START_RULE == "never" and adele.SISSI.START_RULE == "adele"
    for cfg in cfgs.values():
        assert cfg.DATASETS.TEST == ("usiigaci_test",) and cfg.SISSI.EVAL.MAX_DETS == 400
        assert cfg.SISSI.TARGET_DATASETS == ("label_budget_cells_p50",)
        assert cfg.OUTPUT_DIR.startswith(str(tmp_path / "sets" / "cells_p50"))
    # every set trains about as many iterations, whatever its number of images
    sets = {name: 25 for name in ("complete", "cells_p50", "cells_p10", "noise_s15_r0.15", "noise_s30_r0.3")}
    sets.update(images_k2=2, images_k8=8)
    times = lb.estimate(plan, sets, n_test=10, output=str(tmp_path))
    iterations = [t["iterations"] for t in times["sets"].values()]
    assert max(iterations) - min(iterations) <= plan.draws_per_epoch // 3
    assert times["seconds"][1] <= 2 * 3600, "the real study is designed for <= 2 h on 2 cores"
    assert lb.plan_sets(plan, 25) == ["complete"] + [p.name for p in plan.points]


def test_complete_points_are_trained_once():
    from sissi_d2.data.label_degradation import Degradation
    from sissi_d2.experiments import label_budget as lb

    plan = lb.PLANS["quick"]
    import dataclasses

    plan = dataclasses.replace(plan, points=(Degradation("cells", 100), Degradation("images", 4), Degradation("images", 2),
                                             Degradation("noise", 0)))
    points = lb.plan_points(plan, n_images=4)
    assert [(a, p.value, n) for a, p, n in points] == [("cells", 100, "complete"), ("images", 4, "complete"),
                                                       ("images", 2, "images_k2"), ("noise", 0, "complete")]
    assert lb.plan_sets(plan, 4) == ["complete", "images_k2"]


@pytest.fixture
def tiny_truth(tmp_path):
    """tiny_truth (3 complete images), tiny_scored (boxes with scores), tiny_budget_test registered.

    Names of its own: the session fixture tiny_datasets owns tiny_test, and re-registering it here
    left later tests with a data set but no metadata."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    from sissi_d2.data.datasets import unregister_sissi_dataset


    for name, n, score in (("tiny_truth", 3, None), ("tiny_scored", 3, 0.8), ("tiny_budget_test", 1, None)):
        recs = []
        for i in range(n):
            path = str(tmp_path / f"{name}_{i}_img.png")
            cv2.imwrite(path, np.full((40, 50), 100, np.uint8))
            anns = [{"bbox": [5.0 + j * 10, 5.0, 12.0 + j * 10, 15.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                    for j in range(4)]
            if score is not None:
                for a in anns:
                    a["score"] = score
            recs.append({"file_name": path, "height": 40, "width": 50, "image_id": f"{name}_{i}", "annotations": anns})
        unregister_sissi_dataset(name)
        DatasetCatalog.register(name, lambda r=recs: [dict(x) for x in r])
    return tmp_path


def test_label_sets_are_written_registered_and_nested(tiny_truth):
    import dataclasses

    from detectron2.data import DatasetCatalog

    from sissi_d2.data.label_degradation import Degradation
    from sissi_d2.experiments import label_budget as lb

    plan = dataclasses.replace(lb.PLANS["quick"], truth="tiny_truth", test_set="tiny_budget_test",
                               points=(Degradation("cells", 25), Degradation("images", 1)))
    sets = lb.label_sets(plan, str(tiny_truth / "out"), seed=0)
    assert list(sets) == ["complete", "cells_p25", "images_k1"]
    assert sets["cells_p25"]["boxes"] == 3 and sets["cells_p25"]["labelled_fraction"] == 25.0  # 1 of 4 per image
    assert sets["images_k1"]["labelled_boxes"] == 4 and sets["images_k1"]["images"] == 1
    assert len(DatasetCatalog.get("label_budget_images_k1")) == 1
    assert [len(r["annotations"]) for r in DatasetCatalog.get("label_budget_cells_p25")] == [1, 1, 1]
    again = lb.label_sets(plan, str(tiny_truth / "out"), seed=0)
    assert again["cells_p25"]["hash"] == sets["cells_p25"]["hash"], "the seed makes the sets reproducible"

    # a folder trained on other labels is not silently reused
    (tiny_truth / "out" / "sets" / "cells_p25" / "set.json").write_text(json.dumps({"hash": "other"}))
    with pytest.raises(ValueError, match="rows trained on other labels"):
        lb.run_set(plan, str(tiny_truth / "out"), "cells_p25", sets["cells_p25"], seed=1)


@pytest.mark.parametrize("truth, points, match", [
    ("tiny_scored", (), "'tiny_scored' holds 12 boxes with a score"),
    ("tiny_truth", ("images", 5), r"k = 5 labelled images asked for, but the set has only 3 images"),
    ("nope", (), "'nope' is not registered"),
])
def test_bad_input_names_the_value(tiny_truth, truth, points, match):
    import dataclasses

    from sissi_d2.data.label_degradation import Degradation
    from sissi_d2.experiments import label_budget as lb

    plan = dataclasses.replace(lb.PLANS["quick"], truth=truth, test_set="tiny_budget_test",
                               points=(Degradation(*points),) if points else ())
    with pytest.raises((ValueError, KeyError), match=match):
        lb.label_sets(plan, str(tiny_truth / "out"), seed=0)


@pytest.mark.parametrize("argv, match", [
    (["--cells", "120"], "from 0 to 100, got 120"),
    (["--images", "0"], "whole number >= 1, got 0"),
    (["--noise", "20:-1"], "--noise 20:-1: the false-positive rate .* got -1"),
])
def test_the_tool_refuses_bad_values(argv, match, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import label_budget as tool
    finally:
        sys.path.pop(0)
    with pytest.raises(SystemExit) as exc:
        tool.main(["--quick", "--dry-run", *argv])
    message = str(exc.value.code) + capsys.readouterr().err
    import re

    assert re.search(match, message), message
