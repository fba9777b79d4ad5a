"""tools/benchmark.py --rows-at-once: times training steps in fresh processes and prints the table
that docs/performance.md quotes (the numbers themselves are the machine's, not asserted)."""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_rows_at_once_prints_one_line_per_setting_with_its_ratio():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--rows-at-once", "--steps", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| \d+ process", line)]
    assert [r.split("|")[1].strip() for r in rows] == [
        "1 process, 2 threads", "1 process, 1 thread", "2 processes at once, 1 thread each"]
    first = rows[0].split("|")
    assert float(first[4]) == 1.0  # the first setting is the reference
    for row in rows:
        cells = row.split("|")
        per_process = [float(x) for x in cells[2].split("/")]
        assert all(s > 0 for s in per_process)
        assert len(per_process) == (2 if "at once" in cells[1] else 1)
        assert abs(float(cells[3]) - sum(1 / s for s in per_process)) < 0.01


def _gmac_cells(line: str) -> list:
    return [float(cell.split("(")[0]) for cell in line.split("|")[2:-1]]


def test_model_cost_counts_each_part_and_times_the_model_with_and_without_the_overrides():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--model-cost", "--steps", "1",
                           "MODEL.FPN.OUT_CHANNELS", "32"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "configs/cpu/weak_only.yaml: training input 4 x 320x320 px" in out  # the recipe's crops, 1 + 3 images
    parts = {line.split("|")[1].strip(): _gmac_cells(line) for line in out.splitlines()
             if line.startswith("| ") and "GMAC" not in line}
    total = parts.pop("total")
    for column in range(2):
        assert abs(sum(p[column] for p in parts.values()) - total[column]) <= 0.01 * total[column]
    # a 32- instead of the recipe's 64-channel FPN: its 3x3 output convolutions and the RPN head's
    # (64 -> 64 channels, then 32 -> 32) cost a quarter; the ResNet before it is untouched
    as_is, lighter = parts["backbone.fpn_output"]
    assert abs(as_is / lighter - 4) <= 4 * (0.0005 / as_is + 0.0005 / lighter) + 0.01  # printed to 3 decimals
    assert parts["backbone.bottom_up.res3"][0] == parts["backbone.bottom_up.res3"][1]
    assert total[1] < total[0]
    timing = re.search(r"config as is ([\d.]+) \(1\.00x\), with the overrides ([\d.]+) \(([\d.]+)x\)", out)
    assert timing, out
    as_is, lighter, ratio = map(float, timing.groups())
    assert as_is > 0 and lighter > 0
    rounding = ratio * (0.005 / as_is + 0.005 / lighter) + 0.005  # the times are printed to 2 decimals
    assert abs(ratio - as_is / lighter) <= rounding
