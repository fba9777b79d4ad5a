"""Table 1 over seeds (sissi_d2.experiments.seeds): spreads, paired differences between rows of the
same seed, and the refusals that keep a spread honest. Table folders are written by hand here:
only results.json and the trunk's row_settings.json are read."""
import json
import math
import os
import subprocess
import sys

import pytest

from sissi_d2.experiments.seeds import (comparisons, label_quality_table, load_seed_runs, mean_sd,
                                        settings_differences, write_seed_report)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _rounds(f1s, first_epoch=14):
    return [{"epoch": first_epoch + i, "F1_50": f} for i, f in enumerate(f1s)]


def _table(folder, seed, ap50: dict, rounds: dict = None, weak_f1=58.0, same_as: dict = None, **settings):
    rows = {name: {"AP50": v, "AP75": v / 10, "AP": v / 3, "AR": v / 2, "same_as": (same_as or {}).get(name)}
            for name, v in ap50.items()}
    lq = {"weak_labels": {"F1_50": weak_f1}, "trunk_final_pseudo_labels": {"F1_50": 65.0},
          "pseudo_labels": {k: _rounds(v) for k, v in (rounds or {}).items()}}
    os.makedirs(os.path.join(folder, "weak_only", "sissi"), exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"rows": rows, "label_quality": lq}, f)
    with open(os.path.join(folder, "weak_only", "sissi", "row_settings.json"), "w") as f:
        json.dump({"SEED": seed, "SOLVER.BASE_LR": 0.02, "SISSI.DISK.MAX_GB": 1.0, **settings}, f)
    return str(folder)


def test_mean_and_sample_sd():
    m, sd = mean_sd([50.0, 52.0, 54.0])
    assert m == pytest.approx(52.0) and sd == pytest.approx(2.0)  # sample sd (n - 1), not 1.63
    assert mean_sd([3.0]) == (3.0, None)
    assert mean_sd([None, float("nan")]) == (None, None)


def test_differences_pair_rows_of_the_same_seed(tmp_path):
    # Seed 2 is better everywhere: a pooled comparison would mix that into the spread, a paired one does not.
    a = _table(tmp_path / "s0", 0, {"Weak-only": 50.0, "Plain A": 46.0, "A+SISSI(S)": 45.0})
    b = _table(tmp_path / "s2", 2, {"Weak-only": 60.0, "Plain A": 57.0, "A+SISSI(S)": 61.0})
    c = _table(tmp_path / "s1", 1, {"Weak-only": 55.0, "Plain A": 50.0, "A+SISSI(S)": 53.0})
    runs = load_seed_runs([a, b, c])
    assert [r.seed for r in runs] == [0, 1, 2]
    by_name = {(x["row"], x["minus"]): x for x in comparisons(runs)}
    main = by_name[("A+SISSI(S)", "Weak-only")]
    assert main["differences"]["AP50"] == pytest.approx([-5.0, -2.0, 1.0])
    assert main["positive_AP50"] == 1
    cloning = by_name[("A+SISSI(S)", "Plain A")]
    assert cloning["differences"]["AP50"] == pytest.approx([-1.0, 3.0, 4.0])
    # Rows these tables do not have are not compared.
    assert ("SISSI(S)", "Baseline") not in by_name and ("A+SISSI(S)", "Baseline") not in by_name


def test_a_rule_that_never_fired_measures_no_difference(tmp_path):
    # Seed 1's Baseline never fired: it is the trunk, so Baseline - Weak-only and SISSI(S) - Baseline
    # compare a training with itself there and must not count as a zero difference.
    a = _table(tmp_path / "s0", 0, {"Weak-only": 52.0, "Baseline": 35.0, "SISSI(S)": 30.0, "A+SISSI(S)": 41.0})
    b = _table(tmp_path / "s1", 1, {"Weak-only": 50.0, "Baseline": 50.0, "SISSI(S)": 50.0, "A+SISSI(S)": 44.0},
               same_as={"Baseline": "Weak-only", "SISSI(S)": "Weak-only"})
    c = _table(tmp_path / "s2", 2, {"Weak-only": 51.0, "Baseline": 33.0, "SISSI(S)": 34.0, "A+SISSI(S)": 40.0},
               rounds={"SISSI(S)": [60.0, 50.0], "A+SISSI(S)": [62.0]})
    runs = load_seed_runs([a, b, c])
    by_name = {(x["row"], x["minus"]): x for x in comparisons(runs)}
    base = by_name[("Baseline", "Weak-only")]
    assert base["differences"]["AP50"] == [pytest.approx(-17.0), None, pytest.approx(-18.0)]
    assert base["measured"] == 2 and base["same_training"] == [False, True, False]
    assert by_name[("SISSI(S)", "Baseline")]["differences"]["AP50"] == [pytest.approx(-5.0), None, pytest.approx(1.0)]
    # A real difference against a Baseline that is the trunk is still measured.
    assert by_name[("A+SISSI(S)", "Baseline")]["differences"]["AP50"] == pytest.approx([6.0, -6.0, 7.0])
    write_seed_report([a, b, c], str(tmp_path / "out"))
    md = open(tmp_path / "out" / "seeds.md", encoding="utf-8").read()
    assert "50.0 (= Weak-only)" in md and "same run" in md and "-17.5 ± 0.7" in md
    assert "SISSI(S) pseudo-labels (1 of 3 seeds corrected)" in md


def test_the_report_is_written_with_its_figure_and_numbers(tmp_path):
    ap = [{"Weak labels": 46.1, "Weak-only": 52.0, "A+SISSI(S)": 44.0},
          {"Weak labels": 46.1, "Weak-only": 54.0, "A+SISSI(S)": 40.0}]
    folders = [_table(tmp_path / f"s{i}", i, ap[i], rounds={"A+SISSI(S)": [66.0 - i, 60.0, 57.0 + i]})
               for i in range(2)]
    summary = write_seed_report(folders, str(tmp_path / "out"))
    md = open(tmp_path / "out" / "seeds.md", encoding="utf-8").read()
    assert summary["rows"]["Weak-only"]["AP50"]["mean"] == pytest.approx(53.0)
    assert summary["rows"]["Weak-only"]["AP50"]["sd"] == pytest.approx(math.sqrt(2.0))
    assert "| Weak-only" in md and "53.0 ± 1.4" in md
    assert "A+SISSI(S) − Weak-only" in md and "-11.0 ± 4.2" in md  # 44 - 52 and 40 - 54
    # first round 66 / 65 (above 58 both times), last 57 / 58: rounds above the weak labels 2/3 and 2/3
    assert "65.5 ± 0.7" in md and "seed 0: 2/3, seed 1: 2/3" in md
    assert os.path.getsize(tmp_path / "out" / "seeds_ap50.png") > 5000
    assert os.path.getsize(tmp_path / "out" / "seeds_label_f1.png") > 5000 and "seeds_label_f1.png" in md
    assert json.load(open(tmp_path / "out" / "seeds.json"))["seeds"] == [0, 1]
    assert "other than the seed" not in md


def test_settings_other_than_the_seed_are_named(tmp_path):
    a = _table(tmp_path / "a", 0, {"Weak-only": 50.0})
    b = _table(tmp_path / "b", 1, {"Weak-only": 51.0}, **{"SOLVER.BASE_LR": 0.01, "SISSI.DISK.MAX_GB": 9.0})
    runs = load_seed_runs([a, b])
    assert settings_differences(runs) == ["SOLVER.BASE_LR"]  # disk limits do not change weights
    summary = write_seed_report([a, b], str(tmp_path / "out"))
    assert "SOLVER.BASE_LR" in open(tmp_path / "out" / "seeds.md", encoding="utf-8").read()
    assert summary["figures"] == ["seeds_ap50.png"]  # no row corrected: no label curve


def test_refusals_name_the_folder_and_the_fix(tmp_path):
    a = _table(tmp_path / "a", 0, {"Weak-only": 50.0})
    b = _table(tmp_path / "b", 0, {"Weak-only": 51.0})
    with pytest.raises(ValueError, match="seed\\(s\\) \\[0\\] appear in more than one folder"):
        load_seed_runs([a, b])
    with pytest.raises(FileNotFoundError, match="results.json is missing: not a finished tools/table1.py"):
        load_seed_runs([a, str(tmp_path / "nowhere")])
    (tmp_path / "b" / "results.json").write_text("{ cut off")
    with pytest.raises(ValueError, match="b/results.json is not valid JSON"):
        load_seed_runs([str(tmp_path / "b")])
    with pytest.raises(ValueError, match="at least two seeds"):
        write_seed_report([a], str(tmp_path / "out"))
    r = _table(tmp_path / "r", -1, {"Weak-only": 50.0})
    with pytest.raises(ValueError, match="SEED -1"):
        load_seed_runs([a, r])


def test_the_tool_prints_the_report_and_refuses_a_missing_folder(tmp_path):
    folders = [_table(tmp_path / f"s{i}", i, {"Weak-only": 50.0 + i, "Plain A": 45.0}) for i in range(2)]
    tool = os.path.join(ROOT, "tools", "table1_seeds.py")
    ok = subprocess.run([sys.executable, tool, *folders, "--output", str(tmp_path / "out")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Plain A − Weak-only" in ok.stdout and "seeds [0, 1]" in ok.stdout
    bad = subprocess.run([sys.executable, tool, folders[0], str(tmp_path / "missing"),
                          "--output", str(tmp_path / "o2")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "missing/results.json is missing" in bad.stderr
