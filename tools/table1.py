#!/usr/bin/env python
"""The paper's Table 1 on real microscopy: DSB2018 nuclei (source) -> Usiigaci fibroblasts (target).

  python tools/table1.py --output output/table1                 # lean CPU rows (configs/cpu/)
  python tools/table1.py --output output/table1 --configs configs   # paper rows (GPU)
  python tools/table1.py --output output/table1 SISSI.EPOCHS 12     # any config override
  python tools/table1.py --output output/table1 --pretrain configs/cpu/pretrain_source.yaml   # shared pretraining

Weak labels of the 25 target training images come from the classical pipelines
(tools/make_weak_labels.py), never from the oracle masks. Rows: the weak labels themselves as
detections (made the same way on the test images), Weak-only, Baseline, SISSI(W), SISSI(S),
Plain A, A+SISSI(W), A+SISSI(S) and Oracle (true target labels), evaluated on
usiigaci_phase/test with AP50 / AP75 / AP / AR (maxDets 400). Rows share their common past
(sissi_d2.experiments.rows): Weak-only is the trunk and every other row branches from its checkpoint
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


def weak_labels_json(args) -> str:
    """Weak labels of the target training images, made once (cached next to the data cache)."""
    from sissi_d2.data.paths import cache_dir, shared_data_root

    path = os.path.join(cache_dir(), "usiigaci_train_weak.json")
    if not os.path.isfile(path):
        src = os.path.join(shared_data_root(), "usiigaci_phase", "train")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_weak_labels.py"), src,
                        "--output", path] + args.weak_args, check=True)
    return path


def weak_labels_as_detections(args, out_dir) -> dict:
    """The weak-label pipeline run on the TEST images, scored against the test truth."""
    from sissi_d2.data.label_files import read_label_json
    from sissi_d2.data.paths import shared_data_root
    from sissi_d2.evaluation.box_metrics import coco_box_metrics
    from sissi_d2.experiments.report import dataset_truth, four

    path = os.path.join(out_dir, "weak_labels_test.json")
    if not os.path.isfile(path):
        src = os.path.join(shared_data_root(), "usiigaci_phase", "test")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_weak_labels.py"), src,
                        "--output", path] + args.weak_args, check=True)
    return four(coco_box_metrics(dataset_truth("usiigaci_test"), read_label_json(path), max_dets=400))


def main():
    from sissi_d2.experiments.specs import TRUNK, row_configs, select_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/table1")
    parser.add_argument("--configs", default=os.path.join(ROOT, "configs", "cpu"), help="folder of the row configs")
    parser.add_argument("--rows", nargs="*", default=None, help="subset of config names (e.g. weak_only adele_sissi_s)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="rows trained at once, each in its own process sharing the cores (default: 2 on a CPU "
                             "with 2 or more cores, 1 on a GPU; docs/performance.md)")
    parser.add_argument("--weak-args", nargs="*", default=[], help="extra arguments for make_weak_labels.py")
    parser.add_argument("--pretrain", default=None, metavar="CONFIG",
                        help="a pretraining stage shared by every row (sissi_d2/experiments/pretrain.py): trained once "
                             "with CONFIG (on the rows' MODEL.DEVICE; other settings: a config with _BASE_), cached "
                             "under a key of its settings in <cache>/pretrain, given to every row as MODEL.WEIGHTS; "
                             "e.g. configs/cpu/pretrain_source.yaml (supervised, on the source) or "
                             "configs/cpu/pretrain_target_pretext.yaml (self-supervised, on the target images)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... for every row")
    args = parser.parse_args()
    try:
        wanted = select_rows(args.rows)
    except KeyError as e:  # e.g. config overrides typed after --rows, which takes every word that follows it
        sys.exit(f"{e.args[0]} in --rows. --rows takes every word that follows it: end it with another option, "
                 "e.g. --rows weak_only oracle --output DIR KEY VALUE")

    from detectron2.utils.logger import setup_logger

    from sissi_d2.data.builtin import register_shared_datasets
    from sissi_d2.data.paths import shared_data_root
    from sissi_d2.experiments import report
    from sissi_d2.experiments.pretrain import stage_record
    from sissi_d2.experiments.row_jobs import default_jobs
    from sissi_d2.experiments.rows import run_rows
    from sissi_d2.utils.atomic import atomic_write_json

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    setup_logger(os.path.join(out, "log.txt"))
    setup_logger(os.path.join(out, "log.txt"), name="sissi_d2")
    if not os.path.isdir(os.path.join(shared_data_root(), "usiigaci_phase")):
        sys.exit(f"The real data is not at {shared_data_root()}: set SISSI_SHARED_DATA (see datasets/README.md).")
    weak_json = weak_labels_json(args)
    register_shared_datasets()

    t0 = time.time()
    stage = pretrain_opts(args)
    opts = list(args.opts) + stage
    # The trunk records the memorisation curve for the ADELE rows and the report's figure (the
    # paper configs leave it off); every other row records what its own rule reads.
    cfgs = row_configs(wanted, args.configs, out, opts, trunk_opts=["SISSI.ADELE.TRACK", "True"])
    jobs = args.jobs if args.jobs is not None else default_jobs(cfgs.values())
    summary = run_rows(cfgs, trunk=TRUNK, jobs=jobs)
    train_s = time.time() - t0

    names = {r.key: r.name for r in wanted}
    table = {"Weak labels": weak_labels_as_detections(args, out)}
    for row in wanted:
        entry = summary[row.key]
        table[row.name] = report.four(entry["metrics"].get("usiigaci_test", {}))
        table[row.name]["branched_from_epoch"] = entry["branched_from_epoch"]
        table[row.name]["same_as"] = names.get(entry["same_as"])
    quality = label_quality(weak_json, summary, names, cfgs[TRUNK])
    figures = make_figures(out, summary, names, quality, weak_json)
    atomic_write_json(os.path.join(out, "results.json"), {
        "rows": table, "label_quality": quality, "figures": figures, "configs": args.configs, "opts": args.opts,
        "command": " ".join(["python"] + sys.argv), "rows_wall_time_s": train_s, "jobs": jobs,
        "pretrain": stage_record(stage[1]) if stage else None})
    text = results_markdown(table, quality, figures)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(json.dumps({"output": out}))


def pretrain_opts(args) -> list:
    """["MODEL.WEIGHTS", <the stage's weights>] after training the stage if it is not cached; [] without
    --pretrain. The stage runs on the rows' MODEL.DEVICE."""
    if not args.pretrain:
        return []
    if "MODEL.WEIGHTS" in args.opts[:-1]:
        sys.exit("--pretrain gives every row the stage's MODEL.WEIGHTS: drop MODEL.WEIGHTS from the overrides, "
                 "or drop --pretrain to start the rows from your weights")
    from sissi_d2.data.paths import cache_dir
    from sissi_d2.experiments.pretrain import pretrained_weights

    stage_opts = []
    if "MODEL.DEVICE" in args.opts[:-1]:
        stage_opts = ["MODEL.DEVICE", args.opts[args.opts.index("MODEL.DEVICE") + 1]]
    return ["MODEL.WEIGHTS", pretrained_weights(args.pretrain, os.path.join(cache_dir(), "pretrain"), stage_opts)]


def label_quality(weak_json: str, summary: dict, names: dict, trunk_cfg) -> dict:
    """The labels each row trained on, against the oracle masks of the target training images:
    the weak labels, every correction row's pseudo-label snapshot per epoch, and the pseudo-labels
    the trunk's final model would make (TTA + WBF, never trained on): if even those are worse than
    the weak labels, no correction within these epochs can help."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.engine.inference import RecordPredictor
    from sissi_d2.engine.predict import build_inference_model
    from sissi_d2.evaluation.label_quality import label_set_quality
    from sissi_d2.experiments.report import dataset_truth, training_label_quality

    gt = dataset_truth("usiigaci_train_oracle")
    corrected = {names[k]: e["output_dir"] for k, e in summary.items() if e["branched_from_epoch"] and not e["same_as"]}
    q = training_label_quality(gt, weak_json, corrected)
    model = build_inference_model(trunk_cfg, os.path.join(trunk_cfg.OUTPUT_DIR, "model_final.pth"))
    trunk_labels = RecordPredictor(trunk_cfg).pseudo_labels(model, DatasetCatalog.get(trunk_cfg.SISSI.TARGET_DATASETS[0]),
                                                             desc="pseudo-labels of the trunk's final model")
    return label_quality_columns(q, label_set_quality(gt, trunk_labels, max_dets=400))


def label_quality_columns(training_quality: dict, trunk_quality: dict) -> dict:
    """What results.json and the label table keep of ``report.training_label_quality`` and of the
    trunk's own labels' quality."""
    return {"weak_labels": _label_columns(training_quality["weak_labels"]),
            "trunk_final_pseudo_labels": _label_columns(trunk_quality),
            "pseudo_labels": {name: [{"epoch": s["epoch"], **_label_columns(s)} for s in qs]
                              for name, qs in training_quality["pseudo_labels"].items()}}


def _label_columns(quality: dict) -> dict:
    """What results.json keeps of a label set's quality: AP (ranked), F1 at IoU 0.5 (what training
    sees), the failure modes and, for pseudo-labels, what they hold beyond the weak labels."""
    keys = ("AP50", "AP75", "AP", "AR", "F1_50", "precision50", "recall50", "missed_cells", "false_positives",
            "loose_boxes", "beyond_weak_labels", "weak_labels_kept")
    return {k: quality[k] for k in keys if k in quality}


def make_figures(out: str, summary: dict, names: dict, quality: dict, weak_json: str) -> dict:
    """The trunk's memorisation curve (paper Fig. 7), the pseudo-label quality per epoch of every
    correction row, the pseudo-labels of the longest-corrected row on one training image, and test
    predictions of a few rows over the truth."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.data.label_files import image_key, read_label_json
    from sissi_d2.evaluation.label_quality import snapshot_paths
    from sissi_d2.experiments import report
    from sissi_d2.utils.visualize import plot_label_quality, save_png, side_by_side

    fig_dir = os.path.join(out, "figures")
    dirs = {names[k]: e["output_dir"] for k, e in summary.items()}
    figs = {"memorisation": report.memorisation_figure(
        dirs["Weak-only"], os.path.join(fig_dir, "memorisation_curve.png"),
        "Weak-only trunk: AP50 vs the weak labels, ADELE fit")}
    series = {name: [(q["epoch"], q["AP50"]) for q in qs] for name, qs in quality["pseudo_labels"].items()}
    if series:
        figs["label_quality"] = plot_label_quality(
            series, os.path.join(fig_dir, "pseudo_label_quality.png"), reference=quality["weak_labels"]["AP50"],
            title="Usiigaci train: pseudo-labels vs oracle masks")
    corrected = {n: len(snapshot_paths(dirs[n])) for n in quality["pseudo_labels"]}
    corrected = {n: c for n, c in corrected.items() if c}
    if corrected:  # one target training image (paper Fig. 8), the row with the longest correction
        row = max(corrected, key=corrected.get)
        train = DatasetCatalog.get("usiigaci_train_oracle")
        record = train[len(train) // 2]
        key = image_key(record)
        panels, titles, _ = report.pseudo_label_panels(
            read_bgr8(record["file_name"]), key, report.dataset_truth("usiigaci_train_oracle")[key],
            read_label_json(weak_json)[key][0], dirs[row], 4, label=f"{row}, pseudo-labels epoch", thickness=2)
        figs["pseudo_labels"] = save_png(os.path.join(fig_dir, "pseudo_labels.png"), side_by_side(panels, titles, ncols=3))
    # the test image with the most cells: truth and each row's top-k boxes
    gt = report.dataset_truth("usiigaci_test")
    record = max(DatasetCatalog.get("usiigaci_test"), key=lambda r: len(gt[image_key(r)]))
    key = image_key(record)
    preds = {}
    for name in ("Weak-only", "Baseline", "A+SISSI(S)", "Oracle"):
        entry = next((e for k, e in summary.items() if names[k] == name), None)
        if entry is not None:
            src = summary[entry["same_as"]]["output_dir"] if entry["same_as"] else entry["output_dir"]
            pred = report.row_predictions(src, "usiigaci_test").get(key)
            if pred is not None:
                preds[name] = pred
    panels, titles = report.test_prediction_panels(read_bgr8(record["file_name"]), gt[key], preds, thickness=2)
    figs["test_predictions"] = save_png(os.path.join(fig_dir, "test_predictions.png"),
                                        side_by_side(panels, titles, ncols=min(3, len(panels))))
    return {k: os.path.relpath(v, out) for k, v in figs.items() if v}


def results_markdown(table: dict, quality: dict, figures: dict) -> str:
    from sissi_d2.experiments.report import METRICS, fmt

    lines = ["| row | AP50 | AP75 | AP | AR | note |", "|---|---|---|---|---|---|"]
    for name, m in table.items():
        note = (f"= {m['same_as']} (rule never fired)" if m.get("same_as") else
                f"branched at epoch {m['branched_from_epoch']}" if m.get("branched_from_epoch") else "")
        lines.append(f"| {name} | {' | '.join(fmt(m[k], '-') for k in METRICS)} | {note} |")
    lines += ["", "Labels trained on, against the oracle masks of the 25 target training images: F1 at IoU 0.5 with "
              "scores ignored (what training sees), AP50 of the scored boxes in brackets; beyond the weak labels: "
              "pseudo-labels away from every weak box (IoU < 0.1), and the cells among them, in the first and "
              "last round (the cells correction could add):", "",
              "| labels | first epoch | best | last epoch | beyond the weak labels: boxes / cells, first -> last |",
              "|---|---|---|---|---|",
              f"| weak labels | {_f1_ap(quality['weak_labels'])} | | | |",
              f"| Weak-only trunk, final model, TTA + WBF (not trained on) | | | "
              f"{_f1_ap(quality['trunk_final_pseudo_labels'])} | |"]
    for name, qs in quality["pseudo_labels"].items():
        if qs:
            best = max(qs, key=lambda q: q["F1_50"])
            lines.append(f"| {name} pseudo-labels | {_f1_ap(qs[0])} (ep {qs[0]['epoch']}) | "
                         f"{_f1_ap(best)} (ep {best['epoch']}) | {_f1_ap(qs[-1])} (ep {qs[-1]['epoch']}) | "
                         f"{_beyond(qs[0])} -> {_beyond(qs[-1])} |")
    lines += [""] + [f"![{k}]({v})" for k, v in figures.items()]
    return "\n".join(lines)


def _beyond(q: dict) -> str:
    b = q.get("beyond_weak_labels")
    return f"{b['boxes']} / {b['cells']}" if b else "-"


def _f1_ap(q: dict) -> str:
    from sissi_d2.experiments.report import fmt

    return f"{fmt(q.get('F1_50'), '-')} ({fmt(q.get('AP50'), '-')})"


if __name__ == "__main__":
    main()
