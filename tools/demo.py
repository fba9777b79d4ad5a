#!/usr/bin/env python
"""The SISSI demo on synthetic data: data -> weak labels -> three training rows -> report.

  python tools/demo.py --output output/demo            # `make demo`, 12-17 min on 2 CPU cores
  python tools/demo.py --output /tmp/demo --quick      # a tiny run (tests), ~1-2 min
  python tools/demo.py --output output/demo SISSI.EPOCHS 12   # KEY VALUE overrides for every row

The experiment itself is ``sissi_d2.experiments.demo``; this is its command line. Steps (each
prints what it does; training prints a line per epoch):

1. Synthetic data (``sissi_d2.data.synthetic``) in ``synthetic_root()`` (env SISSI_SYNTHETIC_ROOT,
   else <cache>/synthetic; ``--quick`` uses <root>_quick): fluorescent nuclei as the labelled
   source, phase-contrast fibroblasts as the target. Skipped when already there.
2. Weak labels of the target training images by classical image processing
   (``sissi_d2.weak_labels``) -> ``<root>/target_train_weak.json``; the same pipeline on the target
   TEST images gives the "weak labels as detections" row.
3. Registration of the ``synth_*`` data sets.
4. Training of the rows Weak-only, Baseline and A+SISSI(S) (``configs/demo/*.yaml``) sharing
   their common past (``sissi_d2.experiments.rows.run_rows``): until its start rule fires every row
   trains on the same weak labels with the same seeded draws, so the early phase is trained once.
   Weak-only is the trunk (it records the memorisation curve and the source validation loss);
   A+SISSI(S) resumes from the trunk's checkpoint of the epoch ADELE fired, Baseline from the one
   where its source-validation-loss rule fires.
5. Evaluation on the target test set (COCO AP50 / AP75 / AP / AR, maxDets 400) and figures.
6. ``<output>/report.md`` (+ ``results.json``, ``figures/*.png``, ``log.txt``).

Re-running reuses what is finished (data, weak labels, trained rows, evaluations) and resumes a
row that was interrupted; other settings or data retrain the rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

_T0 = time.time()  # the reported wall time includes the heavy imports below (torch, Detectron2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# OpenMP threads that spin while waiting cost twice the CPU time and more when the cores are
# shared with other work; passive waiting keeps a loaded machine usable (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Torch / Detectron2 0.6 emit many deprecation warnings on recent versions: not for the demo.
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import sissi_d2  # noqa: E402,F401  (compatibility patches before detectron2)
from sissi_d2.experiments.demo import (  # noqa: E402
    FULL_DATA, LABEL_MODES, METRICS, QUICK_DATA, QUICK_OPTS, TEST_SET, TRUNK, Clock, _read_json, _write_json, gt_boxes, label_quality,
    make_figures, prepare_data, prepare_weak_labels, prune_checkpoints, register, results_table, row_evaluation,
    setup_logging, train_rows, write_report,
)


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo", help="report, figures, rows (default: output/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (128 px, a few images and epochs): for tests")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--synthetic-root", default=None,
                   help="synthetic data folder (default: synthetic_root(), i.e. env SISSI_SYNTHETIC_ROOT or "
                        "<cache>/synthetic; with --quick <that>_quick)")
    p.add_argument("--oracle", action="store_true",
                   help="also train the Oracle (the true labels of the target training images) beside the trunk: "
                        "the budget's ceiling; a few more minutes (docs/demo.md)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every epoch's checkpoint (the branch points); default: only model_final.pth")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides for every row, e.g. SISSI.EPOCHS 12")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock(_T0)
    output = os.path.abspath(args.output)
    setup_logging(output, clock)
    from sissi_d2.config_builder import synthetic_root

    if args.synthetic_root is None:
        args.synthetic_root = synthetic_root() + ("_quick" if args.quick else "")
    root = os.path.abspath(args.synthetic_root)
    opts = (QUICK_OPTS if args.quick else []) + [o for o in args.opts if o != "--"]
    if len(opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    sizes = QUICK_DATA if args.quick else FULL_DATA
    resumed = os.path.isfile(os.path.join(output, "results.json"))
    clock.say(f"SISSI demo{' (quick)' if args.quick else ''}: output {output}")

    manifest = prepare_data(root, sizes, args.seed, clock)
    weak = prepare_weak_labels(root, output, manifest, clock)
    register(root, clock)
    info = train_rows(output, opts, args.seed, clock, [manifest["params"], weak["hash"]], oracle=args.oracle)

    clock.say("Step 5/6: results on the target test set")
    from sissi_d2.evaluation.box_metrics import coco_box_metrics

    max_dets = int(info["cfgs"][TRUNK].SISSI.EVAL.MAX_DETS)
    test_gt = gt_boxes(TEST_SET)
    evals = {row: row_evaluation(row, info) for row in info["cfgs"]}
    weak_test = coco_box_metrics(test_gt, weak["test"], max_dets=max_dets)
    # The same boxes with every score 1: what the pipeline's ranking adds to them as detections,
    # which a detector trained on the boxes never sees (training counts every box alike).
    unranked = {k: (b, np.ones(len(b), np.float32)) for k, (b, _) in weak["test"].items()}
    weak_test_unranked = coco_box_metrics(test_gt, unranked, max_dets=max_dets)
    weak_train = coco_box_metrics(gt_boxes("synth_target_train_oracle"), weak["train"], max_dets=max_dets)
    fired = info["adele_fired_epoch"]
    plan_a, plan_b = info["plans"].get("adele_sissi_s"), info["plans"].get("baseline")
    table_rows = [
        {"key": "weak_labels_train", "name": "Weak labels (as detections)", "on": "target train (oracle)",
         "rule": "-", "cloning": "-", "start": "-", "metrics": weak_train},
        {"key": "weak_labels_test", "name": "Weak labels (as detections)", "on": "target test", "rule": "-",
         "cloning": "-", "start": "-", "metrics": weak_test},
        {"key": "weak_labels_test_unranked", "name": "Weak labels (unranked: scores all 1)", "on": "target test",
         "rule": "-", "cloning": "-", "start": "-", "metrics": weak_test_unranked},
        {"key": "weak_only", "name": "Weak-only", "on": "target test", "rule": "never", "cloning": "never",
         "start": "-", "metrics": evals["weak_only"]["metrics"]},
        {"key": "baseline", "name": "Baseline", "on": "target test", "rule": "source val loss", "cloning": "never",
         "start": f"epoch {plan_b[0]}" if plan_b else "never", "metrics": evals["baseline"]["metrics"]},
        {"key": "adele_sissi_s", "name": "A+SISSI(S)", "on": "target test", "rule": "ADELE", "cloning": "strong",
         "start": f"epoch {plan_a[0]}" if plan_a else "never", "metrics": evals["adele_sissi_s"]["metrics"]},
    ]
    if "oracle" in evals:
        table_rows.append({"key": "oracle", "name": "Oracle (true labels)", "on": "target test", "rule": "never",
                           "cloning": "never", "start": "-", "metrics": evals["oracle"]["metrics"]})
    table = results_table(table_rows)
    print("\n" + table + "\n", flush=True)
    quality = label_quality(weak, info, max_dets)

    clock.say("Step 6/6: figures and report")
    figs = make_figures(output, root, info, weak, evals, test_gt, clock)
    if not args.keep_checkpoints:
        prune_checkpoints(info)
    wall = clock.elapsed()
    previous = _read_json(os.path.join(output, "results.json"), {}) if resumed else {}
    if info["iterations_trained_now"]:
        training_run = {"wall_time_s": wall, "iterations_trained": info["iterations_trained_now"]}
    else:
        training_run = previous.get("training_run")
    results = {
        "wall_time_s": wall, "training_run": training_run, "quick": args.quick, "seed": args.seed, "synthetic_root": root,
        "data": manifest, "weak_label_settings": weak["settings"],
        "rows": {r["key"]: {"name": r["name"], "evaluated_on": r["on"], "correction_from": r["start"],
                            **{m: r["metrics"].get(m) for m in METRICS}} for r in table_rows},
        "training_label_quality": [{"labels": q["labels"], **{m: q["metrics"].get(m) for m in list(METRICS) + LABEL_MODES},
                                    "num_boxes": q["metrics"].get("num_pred")} for q in quality],
        "adele_fired_epoch": fired, "memorisation": info["memorisation"],
        "baseline_start_epoch": plan_b[0] if plan_b else None, "baseline_best_epoch": plan_b[1] if plan_b else None,
        "source_val_history": info["source_val_history"],
        "branches": {row: {"branched_from_epoch": e.get("branched_from_epoch"), "same_as": e.get("same_as")}
                     for row, e in info["summary"].items()},
        "epochs": info["epochs"],
        "figures": {k: os.path.relpath(v, output) for k, v in figs.items()},
    }
    _write_json(os.path.join(output, "results.json"), results)
    report = write_report(output, args, manifest, weak, info, table_rows, quality, figs, wall, training_run)
    clock.say(f"Done in {wall / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
