#!/usr/bin/env python
"""The paper's Table 1 on real microscopy: DSB2018 nuclei (source) -> Usiigaci fibroblasts (target).

  python tools/table1.py --output output/table1                 # lean CPU rows (configs/cpu/)
  python tools/table1.py --output output/table1 --configs configs   # paper rows (GPU)
  python tools/table1.py --output output/table1 SISSI.EPOCHS 12     # any config override

Weak labels of the 25 target training images come from the classical pipelines
(tools/make_weak_labels.py), never from the oracle masks. Rows: the weak labels themselves as
detections (made the same way on the test images), Weak-only, Baseline, SISSI(W), SISSI(S),
Plain A, A+SISSI(W), A+SISSI(S) and Oracle (true target labels), evaluated on
usiigaci_phase/test with AP50 / AP75 / AP / AR (maxDets 400). Rows share their common past
(sissi_d2.engine.rows): Weak-only is the trunk and every other row branches from its checkpoint
where its correction starts. Interrupted? Run the same command again: finished rows are reused
and the others resume from their last checkpoint.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Passive OpenMP waiting: spinning threads cost CPU time on a machine shared with loader workers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sissi_d2  # noqa: E402,F401

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ROWS = [  # (row name in the paper, config file)
    ("Weak-only", "weak_only.yaml"), ("Baseline", "baseline.yaml"), ("SISSI(W)", "sissi_w.yaml"),
    ("SISSI(S)", "sissi_s.yaml"), ("Plain A", "plain_adele.yaml"), ("A+SISSI(W)", "adele_sissi_w.yaml"),
    ("A+SISSI(S)", "adele_sissi_s.yaml"), ("Oracle", "oracle.yaml"),
]
METRICS = ("AP50", "AP75", "AP", "AR")


def weak_labels_json(args) -> str:
    """Weak labels of the target training images, made once (cached next to the data cache)."""
    from sissi_d2.data.datasets import cache_dir, shared_data_root

    path = os.path.join(cache_dir(), "usiigaci_train_weak.json")
    if not os.path.isfile(path):
        src = os.path.join(shared_data_root(), "usiigaci_phase", "train")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_weak_labels.py"), src,
                        "--output", path] + args.weak_args, check=True)
    return path


def weak_labels_as_detections(args, out_dir) -> dict:
    """The weak-label pipeline run on the TEST images, scored against the test truth."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.datasets import load_coco_boxes, shared_data_root
    from sissi_d2.evaluation.box_metrics import coco_box_metrics
    from sissi_d2.evaluation.evaluator import records_ground_truth

    path = os.path.join(out_dir, "weak_labels_test.json")
    if not os.path.isfile(path):
        src = os.path.join(shared_data_root(), "usiigaci_phase", "test")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_weak_labels.py"), src,
                        "--output", path] + args.weak_args, check=True)
    weak = {os.path.basename(r["file_name"]): (
        [a["bbox"] for a in r["annotations"]], [a.get("score", 1.0) for a in r["annotations"]])
        for r in load_coco_boxes(path)}
    gt = records_ground_truth(DatasetCatalog.get("usiigaci_test"))
    m = coco_box_metrics(gt, weak, max_dets=400)
    return {k: m[k] for k in METRICS}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/table1")
    parser.add_argument("--configs", default=os.path.join(ROOT, "configs", "cpu"), help="folder of the row configs")
    parser.add_argument("--rows", nargs="*", default=None, help="subset of config names (e.g. weak_only adele_sissi_s)")
    parser.add_argument("--weak-args", nargs="*", default=[], help="extra arguments for make_weak_labels.py")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for every row")
    args = parser.parse_args()

    from detectron2.utils.logger import setup_logger

    from sissi_d2.data.builtin import register_shared_datasets
    from sissi_d2.data.datasets import shared_data_root
    from sissi_d2.engine.rows import run_rows
    from sissi_d2.setup import build_config
    from sissi_d2.utils.atomic import atomic_write_json

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    setup_logger(os.path.join(out, "log.txt"))
    setup_logger(os.path.join(out, "log.txt"), name="sissi_d2")
    if not os.path.isdir(os.path.join(shared_data_root(), "usiigaci_phase")):
        sys.exit(f"The real data is not at {shared_data_root()}: set SISSI_SHARED_DATA (see datasets/README.md).")
    weak_labels_json(args)
    register_shared_datasets()

    wanted = [(name, f) for name, f in ROWS if args.rows is None or f[:-5] in args.rows]
    if not any(f == "weak_only.yaml" for _, f in wanted):
        wanted.insert(0, ("Weak-only", "weak_only.yaml"))  # the trunk every other row branches from
    rows = {}
    for name, fname in wanted:
        rows[name] = build_config(os.path.join(args.configs, fname), [
            "SISSI.ADELE.TRACK", "True", "OUTPUT_DIR", os.path.join(out, fname[:-5])] + list(args.opts))
    summary = run_rows(rows, trunk="Weak-only")

    table = {"Weak labels": weak_labels_as_detections(args, out)}
    for name, _ in wanted:
        entry = summary[name]
        table[name] = {k: entry["metrics"].get("usiigaci_test", {}).get(k) for k in METRICS}
        table[name]["branched_from_epoch"] = entry["branched_from_epoch"]
        table[name]["same_as"] = entry["same_as"]
    atomic_write_json(os.path.join(out, "results.json"), {"rows": table, "configs": args.configs, "opts": args.opts})
    lines = ["| row | AP50 | AP75 | AP | AR | note |", "|---|---|---|---|---|---|"]
    for name, m in table.items():
        note = (f"= {m['same_as']} (rule never fired)" if m.get("same_as") else
                f"branched at epoch {m['branched_from_epoch']}" if m.get("branched_from_epoch") else "")
        vals = " | ".join("-" if m[k] is None else f"{m[k]:.1f}" for k in METRICS)
        lines.append(f"| {name} | {vals} | {note} |")
    text = "\n".join(lines)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(json.dumps({"output": out}))


if __name__ == "__main__":
    main()
