"""tools/table1.py end to end on the real data, shrunk to one epoch of tiny images: the table,
label quality, figures, reuse on a re-run, and a clear stop when the settings changed."""
import json
import os
import subprocess
import sys

import pytest

from sissi_d2.data.datasets import shared_data_root

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REAL = os.path.join(shared_data_root(), "usiigaci_phase")
TINY = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "128", "SISSI.EPOCHS", "1", "DATALOADER.NUM_WORKERS", "0",
        "SISSI.SOURCE_VAL.MAX_IMAGES", "2", "SISSI.TARGET_REPEATS", "1", "SISSI.ADELE.TRACK", "False"]


def _table1(out, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "table1.py"), "--rows", "weak_only",
                           "oracle", "--output", str(out), *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=1200)


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL, "train")),
                    reason=f"shared real data not found at {REAL} (set SISSI_SHARED_DATA to run this test)")
def test_table1_rows_quality_figures_and_reuse(tmp_path):
    proc = _table1(tmp_path, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["Weak labels", "Weak-only", "Oracle"]
    for name, metrics in rows.items():
        assert all(0.0 <= metrics[k] <= 100.0 for k in ("AP50", "AP75", "AP", "AR")), name
    # the weak labels of the test images, scored as detections, are far from nothing
    assert rows["Weak labels"]["AP50"] > 20
    assert 20 < results["label_quality"]["weak_labels"]["AP50"] < 100
    assert 0 <= results["label_quality"]["trunk_final_pseudo_labels"]["AP50"] <= 100
    for rel in results["figures"].values():
        assert (tmp_path / rel).stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert "| Oracle |" in md and "weak labels" in md

    # a re-run reuses the trained rows: nothing is trained again
    mtime = (tmp_path / "oracle" / "model_final.pth").stat().st_mtime
    again = _table1(tmp_path, *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "oracle" / "model_final.pth").stat().st_mtime == mtime
    assert json.loads((tmp_path / "results.json").read_text())["rows"]["Oracle"] == rows["Oracle"]

    # other settings in the same folder: a clear error, not a silent mix of runs
    changed = _table1(tmp_path, *TINY, "SOLVER.BASE_LR", "0.002")
    assert changed.returncode != 0
    assert "SOLVER.BASE_LR" in changed.stderr and "other settings" in changed.stderr


def test_table1_rejects_unknown_rows(tmp_path):
    """Overrides typed after --rows are taken as row names: say so instead of ignoring them."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "table1.py"), "--output", str(tmp_path),
                           "--rows", "weak_only", "SISSI.EPOCHS", "1"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode != 0
    assert "unknown row(s) ['SISSI.EPOCHS', '1']" in proc.stderr and "--rows weak_only oracle --output DIR KEY VALUE" in proc.stderr
    assert not (tmp_path / "weak_only").exists()


def test_the_label_table_shows_what_each_rows_pseudo_labels_found_beyond_the_weak_labels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("table1_tool", os.path.join(ROOT, "tools", "table1.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    q = {"F1_50": 60.0, "AP50": 50.0, "size_ratio": 1.1}
    training_quality = {"weak_labels": q, "pseudo_labels": {  # as report.training_label_quality gives it
        "A+SISSI(S)": [dict(q, epoch=14, beyond_weak_labels={"boxes": 39, "cells": 11, "cells_percent": 0.7}),
                       dict(q, epoch=15, beyond_weak_labels={"boxes": 52, "cells": 9, "cells_percent": 0.6})],
        "Plain A": [dict(q, epoch=14)]}}  # a run recorded before the column existed
    # what results.json and the markdown keep of it: the beyond column survives
    quality = tool.label_quality_columns(training_quality, q)
    assert "size_ratio" not in quality["weak_labels"]
    md = tool.results_markdown({"Weak-only": {"AP50": 1.0, "AP75": 1.0, "AP": 1.0, "AR": 1.0}}, quality, {})
    assert "| 39 / 11 -> 52 / 9 |" in md
    assert "| - -> - |" in md


def test_pretrain_gives_every_row_the_stage_weights_and_runs_the_stage_on_the_rows_device(monkeypatch):
    import argparse
    import importlib.util

    import sissi_d2.experiments.pretrain as pretrain

    spec = importlib.util.spec_from_file_location("table1_tool", os.path.join(ROOT, "tools", "table1.py"))
    table1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table1)
    calls = []
    monkeypatch.setattr(pretrain, "pretrained_weights",
                        lambda config, cache, opts: calls.append((config, cache, opts)) or "/stage/model_final.pth")
    assert table1.pretrain_opts(argparse.Namespace(pretrain=None, opts=["MODEL.DEVICE", "cuda"])) == []
    assert calls == []
    args = argparse.Namespace(pretrain="configs/cpu/pretrain_source.yaml", opts=["SEED", "2", "MODEL.DEVICE", "cuda"])
    assert table1.pretrain_opts(args) == ["MODEL.WEIGHTS", "/stage/model_final.pth"]
    (config, cache, opts), = calls
    assert config == "configs/cpu/pretrain_source.yaml" and cache.endswith("pretrain")
    assert opts == ["MODEL.DEVICE", "cuda"]  # the rows' device, not their seed
    with pytest.raises(SystemExit, match="drop MODEL.WEIGHTS"):  # two weights for the rows: refused, not guessed
        table1.pretrain_opts(argparse.Namespace(pretrain="configs/cpu/pretrain_source.yaml",
                                                opts=["MODEL.WEIGHTS", "zoo.pth"]))
    assert len(calls) == 1
