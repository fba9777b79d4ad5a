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
