#!/usr/bin/env python
"""Training from point annotations (centre clicks): boxes from an export, a preview of the
cut-paste images, and the measured comparison (docs/points.md).

  # 1. a Label Studio / CVAT / CSV export of clicks -> COCO boxes json (one box per click)
  python tools/points.py boxes export.json --images /data/lab/images --cell-size 40 --output lab_boxes.json
  python tools/points.py boxes clicks.csv --images /data/lab/images --pipeline phase --output lab_boxes.json
  # 2. what SISSI.SYNTH will train on: cut-paste images made from those boxes, with their boxes
  python tools/points.py preview lab_boxes.json --output lab_cutpaste.png [SISSI.SYNTH.CANVAS blank ...]
  # the comparison: boxes from clicks vs cut-paste images (+ 10 % real, + SISSI)
  python tools/points.py compare --plan-only                 # the plan and its time; trains nothing
  python tools/points.py compare                             # real data (../shared/data): 25 + 100 % clicked,
                                                             #   rows of 250 iterations, < 1 h (output/points)
  python tools/points.py compare --fractions 25 50 100       # the same with the 50 % click set too
  python tools/points.py compare --full                      # the issue's plan: 25/50/100 %, the recipe's
                                                             #   1000 iterations, ~5.5 h (output/points_full)
  python tools/points.py compare --quick --output /tmp/pts   # synthetic, about a minute (tests)
  python tools/points.py compare ... SISSI.SYNTH.CANVAS blank # KEY VALUE overrides for every row

Box sizes (``boxes``): --cell-size W[xH] for every click, --class-size CLASS=W[xH] per class, or
by default estimated per image from the components of a weak-label pipeline (--pipeline, default
alive; phase for phase contrast). ``compare`` prints its plan first and a line per trained epoch;
run the same command again to resume (finished rows are reused).
"""
import argparse
import logging
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Passive OpenMP waiting: spinning threads cost CPU time on a machine shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore", category=FutureWarning)  # torch / Detectron2 0.6 deprecations
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


def _size_options(p):
    p.add_argument("--images", default=None, help="folder of the images (default: the point file's folder)")
    p.add_argument("--cell-size", default=None, metavar="W[xH]", help="one box size in pixels for every click")
    p.add_argument("--class-size", action="append", default=[], metavar="CLASS=W[xH]", help="a box size per class")
    p.add_argument("--pipeline", default="alive", help="weak-label pipeline whose components give the cell size "
                   "per image when no size is given (alive, inhibited, dead, phase)")
    p.add_argument("--merge-distance", type=float, default=2.0, help="clicks closer than this (px) are one click")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("boxes", help="point file -> COCO boxes json")
    b.add_argument("points", help="CSV (image,x,y[,class]), Label Studio json, CVAT xml or COCO keypoints json")
    b.add_argument("--output", required=True, help="the COCO json to write (absolute image paths)")
    _size_options(b)
    v = sub.add_parser("preview", help="cut-paste images of a label file, with their boxes, as one PNG")
    v.add_argument("labels", help="COCO boxes json (e.g. from `boxes`) or a point file")
    v.add_argument("--output", required=True, help="PNG to write")
    v.add_argument("--count", type=int, default=4)
    v.add_argument("--seed", type=int, default=0)
    _size_options(v)
    c = sub.add_parser("compare", help="the measured comparison (docs/points.md)")
    plan = c.add_mutually_exclusive_group()
    plan.add_argument("--full", action="store_true", help="the issue's plan: 25/50/100 %% clicked, rows at the CPU "
                      "recipe's length (1000 iterations), about 5.5 h; default: 25/100 %%, rows of 250 iterations, < 1 h")
    plan.add_argument("--quick", action="store_true", help="synthetic data, tiny model: the machinery in about a minute")
    c.add_argument("--output", default=None, help="default output/points (--full: output/points_full, --quick: "
                   "output/points_quick)")
    c.add_argument("--fractions", type=int, nargs="+", default=None, help="percent of the cells clicked "
                   "(default 25 100; --full 25 50 100; --quick 50)")
    c.add_argument("--plan-only", action="store_true", help="print the plan and its time estimate, train nothing")
    c.add_argument("--synthetic-root", default=None, help="--quick: the synthetic data folder (default: the demo's, _quick)")
    # KEY VALUE config overrides may follow anywhere (preview: SISSI.SYNTH.*; compare: every row)
    args, opts = p.parse_known_args(argv)
    opts = [o for o in opts if o != "--"]
    unknown = [o for o in opts if o.startswith("-")]
    if unknown or (opts and args.command == "boxes"):
        p.error(f"unrecognized arguments: {' '.join(unknown or opts)}")
    if len(opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {opts}")
    args.opts = opts
    return args


def _load(path, args):
    """Records of a COCO boxes json or of a point file (boxes from the size options)."""
    from sissi_d2.data.label_files import load_coco_boxes, load_point_boxes
    from sissi_d2.data.points import PointFileError, point_file_format

    try:
        point_file_format(path)
    except PointFileError:
        return load_coco_boxes(path, args.images)  # a COCO json of boxes
    return load_point_boxes(path, args.images, **_size_kwargs(args))


def _size_kwargs(args) -> dict:
    return {"cell_size": args.cell_size, "class_sizes": ",".join(args.class_size) or None,
            "pipeline": args.pipeline, "merge_distance": args.merge_distance}


def cmd_boxes(args) -> int:
    from sissi_d2.data.label_files import save_records_as_coco
    from sissi_d2.data.points import BoxSizeRule, point_boxes

    kw = _size_kwargs(args)
    rule = BoxSizeRule.make(cell_size=kw["cell_size"], class_sizes=kw["class_sizes"], pipeline=kw["pipeline"])
    records, info = point_boxes(args.points, args.images, rule=rule, merge_distance=args.merge_distance)
    path = save_records_as_coco(records, args.output)
    for i in info:
        size = "x".join(f"{v:.0f}" for v in i["cell_size"]) if i["cell_size"] else "-"
        print(f"  {i['image']}: {i['clicks']} clicks -> {i['boxes']} boxes"
              + (f" + {i['negatives']} negatives" if i["negatives"] else "")
              + (f", cell size {size} px from {i['size_from']}" if rule.size_from == "weak_labels" else ""))
    print(f"{sum(i['boxes'] for i in info)} boxes on {len(info)} images ({rule.size_from} sizes) -> {path}")
    return 0


def cmd_preview(args) -> int:
    from sissi_d2.config_builder import build_config
    from sissi_d2.experiments.points import synthesized_examples
    from sissi_d2.utils.visualize import draw_boxes, save_png, side_by_side

    records = [r for r in _load(args.labels, args) if r.get("annotations")]
    if not records:
        sys.exit(f"{args.labels} holds no box to cut cells from.")
    cfg = build_config(None, args.opts + ["MODEL.DEVICE", "cpu"])
    examples, n_patches = synthesized_examples(records, cfg, args.count, args.seed)
    grid = side_by_side([draw_boxes(img, boxes, "green") for img, boxes in examples],
                        [f"{len(b)} cells" for _, b in examples], ncols=min(4, args.count))
    print(f"{n_patches} patches from {len(records)} images; canvas {cfg.SISSI.SYNTH.CANVAS}, blend "
          f"{cfg.SISSI.SYNTH.BLEND} -> {save_png(args.output, grid)}")
    return 0


def _setup_logging(output: str):
    t0 = time.time()

    class Stamp(logging.Formatter):
        def format(self, record):
            s = int(time.time() - t0)
            level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
            return f"[points {s // 60:02d}:{s % 60:02d}] {level}{record.getMessage()}"

    os.makedirs(output, exist_ok=True)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(Stamp())
    console.setLevel(logging.INFO)
    # sissi_d2's progress on the console (not the per-row data and test tables: the report has
    # them); everything, Detectron2 too, in the log file
    console.addFilter(lambda r: r.levelno >= logging.WARNING or (
        r.name.startswith("sissi_d2") and not r.getMessage().startswith(("Distribution of instances", "Evaluation of "))))
    logfile = logging.FileHandler(os.path.join(output, "log.txt"), encoding="utf-8")
    logfile.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(console)
    root.addHandler(logfile)
    for name in ("detectron2", "fvcore", "d2"):
        logging.getLogger(name).setLevel(logging.INFO)  # SISSITrainer then adds no console handler of its own
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def cmd_compare(args) -> int:
    from sissi_d2.experiments.points import SETTINGS, run_comparison

    setting = SETTINGS["quick" if args.quick else "full" if args.full else "real"]
    # each plan its own folder: a row's folder is reused only with the settings it was trained with
    output = os.path.abspath(args.output or os.path.join("output", {"real": "points"}.get(setting.name,
                                                                                       f"points_{setting.name}")))
    _setup_logging(output)
    if args.quick:
        from sissi_d2.config_builder import synthetic_root
        from sissi_d2.data.builtin import register_synthetic_datasets
        from sissi_d2.data.synthetic import write_synthetic_dataset
        from sissi_d2.experiments.demo import QUICK_DATA

        root = os.path.abspath(args.synthetic_root or synthetic_root() + "_quick")
        sizes = dict(QUICK_DATA)
        side = sizes.pop("size")
        write_synthetic_dataset(root, **sizes, size=(side, side), seed=0)  # kept when already there
        register_synthetic_datasets(root)
    else:
        from sissi_d2.data.builtin import register_shared_datasets
        from sissi_d2.data.paths import shared_data_root

        if not os.path.isdir(os.path.join(shared_data_root(), "usiigaci_phase")):
            sys.exit(f"The real data is not at {shared_data_root()}: set SISSI_SHARED_DATA (see datasets/README.md), "
                     "or run --quick.")
        register_shared_datasets()
    run_comparison(setting, output, args.fractions, args.opts, plan_only=args.plan_only)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    import sissi_d2  # noqa: F401  (compatibility patches before detectron2)

    return {"boxes": cmd_boxes, "preview": cmd_preview, "compare": cmd_compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
