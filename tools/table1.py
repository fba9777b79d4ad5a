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
import time

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

    from sissi_d2.data.datasets import shared_data_root
    from sissi_d2.evaluation.box_metrics import coco_box_metrics
    from sissi_d2.evaluation.evaluator import records_ground_truth
    from sissi_d2.evaluation.label_quality import read_label_json

    path = os.path.join(out_dir, "weak_labels_test.json")
    if not os.path.isfile(path):
        src = os.path.join(shared_data_root(), "usiigaci_phase", "test")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_weak_labels.py"), src,
                        "--output", path] + args.weak_args, check=True)
    gt = records_ground_truth(DatasetCatalog.get("usiigaci_test"))
    m = coco_box_metrics(gt, read_label_json(path), max_dets=400)
    return {k: m[k] for k in METRICS}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/table1")
    parser.add_argument("--configs", default=os.path.join(ROOT, "configs", "cpu"), help="folder of the row configs")
    parser.add_argument("--rows", nargs="*", default=None, help="subset of config names (e.g. weak_only adele_sissi_s)")
    parser.add_argument("--weak-args", nargs="*", default=[], help="extra arguments for make_weak_labels.py")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for every row")
    args = parser.parse_args()
    known = [f[:-5] for _, f in ROWS]
    unknown = [r for r in (args.rows or []) if r not in known]
    if unknown:  # e.g. config overrides typed after --rows, which takes every word that follows it
        sys.exit(f"unknown row(s) {unknown} in --rows; rows are {known}. --rows takes every word that "
                 "follows it: end it with another option, e.g. --rows weak_only oracle --output DIR KEY VALUE")

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
    weak_json = weak_labels_json(args)
    register_shared_datasets()

    wanted = [(name, f) for name, f in ROWS if args.rows is None or f[:-5] in args.rows]
    if not any(f == "weak_only.yaml" for _, f in wanted):
        wanted.insert(0, ("Weak-only", "weak_only.yaml"))  # the trunk every other row branches from
    rows = {}
    for name, fname in wanted:
        rows[name] = build_config(os.path.join(args.configs, fname), [
            "SISSI.ADELE.TRACK", "True", "OUTPUT_DIR", os.path.join(out, fname[:-5])] + list(args.opts))
    t0 = time.time()
    summary = run_rows(rows, trunk="Weak-only")
    train_s = time.time() - t0

    table = {"Weak labels": weak_labels_as_detections(args, out)}
    for name, _ in wanted:
        entry = summary[name]
        table[name] = {k: entry["metrics"].get("usiigaci_test", {}).get(k) for k in METRICS}
        table[name]["branched_from_epoch"] = entry["branched_from_epoch"]
        table[name]["same_as"] = entry["same_as"]
    quality = label_quality(weak_json, summary, rows["Weak-only"])
    figures = make_figures(out, summary, quality, weak_json)
    atomic_write_json(os.path.join(out, "results.json"), {
        "rows": table, "label_quality": quality, "figures": figures, "configs": args.configs, "opts": args.opts,
        "command": " ".join(["python"] + sys.argv), "rows_wall_time_s": train_s})
    text = results_markdown(table, quality, figures, out)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(json.dumps({"output": out}))


def label_quality(weak_json: str, summary: dict, trunk_cfg) -> dict:
    """The labels each row trained on, against the oracle masks of the target training images
    (scoring only; training never reads them): the weak labels, then every correction row's
    pseudo-label snapshot per epoch. This is what tells whether correction could help. Also the
    pseudo-labels the trunk's final model would make (TTA + WBF, as in training; never trained
    on): if even those are worse than the weak labels, no correction within these epochs can help."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.engine.inference import RecordPredictor
    from sissi_d2.engine.predict import build_inference_model
    from sissi_d2.evaluation.box_metrics import coco_box_metrics
    from sissi_d2.evaluation.evaluator import records_ground_truth
    from sissi_d2.evaluation.label_quality import pseudo_label_quality, read_label_json

    def four(m):
        return {k: m[k] for k in METRICS}

    gt = records_ground_truth(DatasetCatalog.get("usiigaci_train_oracle"))
    weak = coco_box_metrics(gt, read_label_json(weak_json), max_dets=400)
    rows = {name: pseudo_label_quality(gt, entry["output_dir"], max_dets=400)
            for name, entry in summary.items() if entry["branched_from_epoch"] and not entry["same_as"]}
    final = os.path.join(trunk_cfg.OUTPUT_DIR, "model_final.pth")
    model = build_inference_model(trunk_cfg, final)
    trunk_labels = RecordPredictor(trunk_cfg).pseudo_labels(model, DatasetCatalog.get(trunk_cfg.SISSI.TARGET_DATASETS[0]),
                                                             desc="pseudo-labels of the trunk's final model")
    return {"weak_labels": four(weak),
            "trunk_final_pseudo_labels": four(coco_box_metrics(gt, trunk_labels, max_dets=400)),
            "pseudo_labels": {name: [{"epoch": q["epoch"], **four(q)} for q in qs] for name, qs in rows.items()}}


def make_figures(out: str, summary: dict, quality: dict, weak_json: str) -> dict:
    """The trunk's memorisation curve (paper Fig. 7), the pseudo-label quality per epoch of every
    correction row, and test predictions of a few rows over the truth."""
    import numpy as np
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.evaluation.evaluator import records_ground_truth
    from sissi_d2.evaluation.label_quality import read_label_json, snapshot_paths
    from sissi_d2.utils.visualize import draw_boxes, plot_label_quality, plot_memorisation_curve, save_png, side_by_side

    fig_dir = os.path.join(out, "figures")
    figs = {}
    mem = os.path.join(summary["Weak-only"]["output_dir"], "sissi", "memorisation.json")
    if os.path.isfile(mem):
        figs["memorisation"] = plot_memorisation_curve(
            mem, os.path.join(fig_dir, "memorisation_curve.png"),
            title="Weak-only trunk: AP50 vs the weak labels, ADELE fit")
    series = {name: [(q["epoch"], q["AP50"]) for q in qs] for name, qs in quality["pseudo_labels"].items()}
    if series:
        figs["label_quality"] = plot_label_quality(
            series, os.path.join(fig_dir, "pseudo_label_quality.png"), reference=quality["weak_labels"]["AP50"],
            title="Usiigaci train: pseudo-labels vs oracle masks")
    # one target training image (paper Fig. 8): truth, weak labels and the pseudo-labels of the row
    # with the longest correction at up to 4 epochs, first and last included
    corrected = {n: snapshot_paths(summary[n]["output_dir"]) for n in quality["pseudo_labels"]}
    corrected = {n: snaps for n, snaps in corrected.items() if snaps}
    if corrected:
        row = max(corrected, key=lambda n: len(corrected[n]))
        snaps = corrected[row]
        snaps = [snaps[i] for i in sorted(set(np.linspace(0, len(snaps) - 1, 4).round().astype(int)))]
        train = DatasetCatalog.get("usiigaci_train_oracle")
        train_gt = records_ground_truth(train)
        key = os.path.basename(train[len(train) // 2]["file_name"])
        image = read_bgr8(train[len(train) // 2]["file_name"])
        weak = read_label_json(weak_json)[key][0]
        panels = [draw_boxes(image, train_gt[key], "green", thickness=2), draw_boxes(image, weak, "yellow", thickness=2)]
        titles = [f"truth (oracle, {len(train_gt[key])})", f"weak labels ({len(weak)})"]
        for epoch, path in snaps:
            boxes = read_label_json(path)[key][0]
            panels.append(draw_boxes(image, boxes, "red", thickness=2))
            titles.append(f"{row}, pseudo-labels epoch {epoch} ({len(boxes)})")
        figs["pseudo_labels"] = save_png(os.path.join(fig_dir, "pseudo_labels.png"), side_by_side(panels, titles, ncols=3))
    # the test image with the most cells: truth (green) and each row's top-k boxes (red), k = number of true cells
    records = DatasetCatalog.get("usiigaci_test")
    gt = records_ground_truth(records)
    record = max(records, key=lambda r: len(gt[os.path.basename(r["file_name"])]))
    key = os.path.basename(record["file_name"])
    image = read_bgr8(record["file_name"])
    truth = draw_boxes(image, gt[key], "green", thickness=2)
    panels, titles = [truth], [f"truth ({len(gt[key])} cells)"]
    for name in ("Weak-only", "Baseline", "A+SISSI(S)", "Oracle"):
        entry = summary.get(name)
        if entry is None:
            continue
        src = summary[entry["same_as"]]["output_dir"] if entry["same_as"] else entry["output_dir"]
        path = os.path.join(src, "inference", "usiigaci_test", "predictions.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            pred = {p["file"]: p for p in json.load(f)}.get(key)
        if pred is None:
            continue
        boxes = np.asarray(pred["boxes"], np.float32).reshape(-1, 4)
        top = np.argsort(-np.asarray(pred["scores"]))[: len(gt[key])]
        panels.append(draw_boxes(truth, boxes[top], "red", thickness=2))
        titles.append(f"{name}: top {len(top)}")
    figs["test_predictions"] = save_png(os.path.join(fig_dir, "test_predictions.png"),
                                        side_by_side(panels, titles, ncols=min(3, len(panels))))
    return {k: os.path.relpath(v, out) for k, v in figs.items()}


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.1f}"


def results_markdown(table: dict, quality: dict, figures: dict, out: str) -> str:
    lines = ["| row | AP50 | AP75 | AP | AR | note |", "|---|---|---|---|---|---|"]
    for name, m in table.items():
        note = (f"= {m['same_as']} (rule never fired)" if m.get("same_as") else
                f"branched at epoch {m['branched_from_epoch']}" if m.get("branched_from_epoch") else "")
        lines.append(f"| {name} | {' | '.join(_fmt(m[k]) for k in METRICS)} | {note} |")
    lines += ["", "Labels trained on, against the oracle masks of the 25 target training images (AP50):", "",
              "| labels | first epoch | best | last epoch |", "|---|---|---|---|",
              f"| weak labels | {_fmt(quality['weak_labels']['AP50'])} | | |",
              f"| Weak-only trunk, final model, TTA + WBF (not trained on) | | | "
              f"{_fmt(quality['trunk_final_pseudo_labels']['AP50'])} |"]
    for name, qs in quality["pseudo_labels"].items():
        if qs:
            best = max(qs, key=lambda q: q["AP50"])
            lines.append(f"| {name} pseudo-labels | {_fmt(qs[0]['AP50'])} (ep {qs[0]['epoch']}) | "
                         f"{_fmt(best['AP50'])} (ep {best['epoch']}) | {_fmt(qs[-1]['AP50'])} (ep {qs[-1]['epoch']}) |")
    lines += [""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
