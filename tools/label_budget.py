#!/usr/bin/env python
"""How much labelling can a lab skip? Label-budget curves (docs/label_budget.md).

  python tools/label_budget.py --dry-run                       # the plan, its time and disk; trains nothing
  python tools/label_budget.py --output output/label_budget    # the real study (plan "real": <= 2 h on 2 cores)
  python tools/label_budget.py --plan full --output output/label_budget_full   # every point of the issue
  python tools/label_budget.py --quick --output /tmp/label_budget              # synthetic, tiny (CI)
  python tools/label_budget.py --cells 50 25 --images 2 8 --others weak --noise 10:0 30:0.3 ...  # other points
  python tools/label_budget.py ... SISSI.EPOCHS 12                              # KEY VALUE overrides, every row

From the complete labels of the target training images (the Usiigaci oracle masks; --quick: the
synthetic set) degraded label sets are made with a fixed seed: missing cells (--cells P: every
image keeps P % of its boxes), fewer images (--images K: K images labelled, the others left out
or, with --others weak, given weak labels), noisy boxes (--noise S:R: each box side jittered by
S % of the box size, R false boxes per cell). Each set is trained by Plain (the Weak-only
setting), Cloning only and A+SISSI(S), scored on the test set (maxDets 400). Writes
<output>/budget.json, budget.md and figures/label_budget_<axis>.png.

Prints the plan, the time estimate and the disk it will write before training; one line per
trained epoch. Interrupted? Run the same command again: finished label sets are skipped, the
rows of an interrupted set resume at their last checkpoint.
"""
import argparse
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Passive OpenMP waiting: spinning threads cost CPU time on a machine shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore", category=FutureWarning)  # torch / Detectron2 0.6 deprecations
warnings.filterwarnings("ignore", category=UserWarning)


def _number(text: str):
    """50 -> 50, 12.5 -> 12.5 (so that errors and set names show the value as typed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def _noise_point(text: str):
    from sissi_d2.data.label_degradation import Degradation

    sigma, _, rate = text.partition(":")
    try:
        return Degradation("noise", _number(sigma), fp_rate=_number(rate or "0"))
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise argparse.ArgumentTypeError(f"--noise {text}: {e} (write SIGMA or SIGMA:RATE, e.g. 20:0.2)") from None


def parse_args(argv=None):
    from sissi_d2.experiments.label_budget import PLANS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=sorted(PLANS), default="real", help="study size (default: real, <= 2 h)")
    p.add_argument("--quick", action="store_true", help="the synthetic quick plan (same as --plan quick)")
    p.add_argument("--output", default=None, help="folder (default: output/label_budget[_<plan>])")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations (default 0)")
    p.add_argument("--dry-run", action="store_true", help="make the label sets, print the plan, train nothing")
    p.add_argument("--cells", type=_number, nargs="+", metavar="P", help="missing cells: percent of the boxes kept")
    p.add_argument("--images", type=int, nargs="+", metavar="K", help="fewer images: images that keep labels")
    p.add_argument("--others", choices=["left_out", "weak"], default=None,
                   help="fewer images: the other images are left out (default) or get weak labels")
    p.add_argument("--noise", type=_noise_point, nargs="+", metavar="S[:R]",
                   help="noisy boxes: jitter S %% of the box size, R false boxes per cell")
    p.add_argument("--truth", default=None, help="registered, completely labelled training set to degrade "
                   "(default: usiigaci_train_oracle; --quick: synth_target_train_oracle)")
    p.add_argument("--test-set", default=None, help="registered test set (default: usiigaci_test / synth_target_test)")
    p.add_argument("--weak", default=None, help="registered weak labels for --others weak (default: usiigaci_train_weak)")
    p.add_argument("--register", nargs="+", default=[], metavar="NAME=KIND:PATH",
                   help="register your own data sets first (kinds cellpose, coco, celllab, images)")
    p.add_argument("--figures", default=None, help="folder of the figures (default: <output>/figures)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for every row")
    args = p.parse_args(argv)
    if args.quick:
        args.plan = "quick"
    args.opts = [o for o in args.opts if o != "--"]
    if len(args.opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def _plan(args):
    """The named plan with the command line's points and overrides."""
    import dataclasses

    from sissi_d2.data.label_degradation import Degradation
    from sissi_d2.experiments.label_budget import PLANS

    plan = PLANS[args.plan]
    points = list(plan.points)
    others = args.others or "left_out"
    given = {"cells": [Degradation("cells", v) for v in args.cells or []],
             "images": [Degradation("images", k, others=others) for k in args.images or []],
             "noise": list(args.noise or [])}
    if args.others and not args.images:  # --others alone changes the plan's own image points
        given["images"] = [dataclasses.replace(p, others=others) for p in points if p.axis == "images"]
    for axis, new in given.items():
        if new:
            points = [p for p in points if p.axis != axis] + new
    return dataclasses.replace(plan, points=tuple(points), extra_opts=tuple(args.opts), truth=args.truth or plan.truth,
                               test_set=args.test_set or plan.test_set, weak=args.weak or plan.weak)


def _logging(output: str):
    """Everything into <output>/log.txt; on the console the study's own lines and all warnings."""
    os.makedirs(output, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fileh = logging.FileHandler(os.path.join(output, "log.txt"), encoding="utf-8")
    fileh.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith("sissi_d2.experiments"))
    root.addHandler(fileh)
    root.addHandler(console)
    for name in ("detectron2", "fvcore", "d2"):  # Detectron2's INFO lines (loss every 20 iterations): the log file
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def _register(plan_name: str, specs) -> None:
    from sissi_d2.config_builder import register_from_spec, synthetic_root
    from sissi_d2.data.builtin import register_shared_datasets, register_synthetic_datasets

    for spec in specs:
        register_from_spec(spec)
    if plan_name == "quick":
        from sissi_d2.data.synthetic import write_synthetic_dataset
        from sissi_d2.experiments.demo import QUICK_DATA

        root = synthetic_root() + "_quick"  # the demo's quick set (same root, same sizes): written once, shared
        sizes = dict(QUICK_DATA)
        size = sizes.pop("size")
        write_synthetic_dataset(root, size=(size, size), seed=0, **sizes)
        register_synthetic_datasets(root)
        return
    register_shared_datasets()  # what exists of it; a missing truth or test set is named later


def main(argv=None) -> int:
    args = parse_args(argv)
    import sissi_d2  # noqa: F401  (compatibility patches before detectron2)
    from sissi_d2.experiments.label_budget import run_budget

    try:
        plan = _plan(args)
    except ValueError as e:
        sys.exit(f"label_budget: {e}")
    default = "label_budget" + ("" if plan.name == "real" else f"_{plan.name}")
    output = os.path.abspath(args.output or os.path.join("output", default))
    _logging(output)
    try:
        _register(plan.name, args.register)
        budget = run_budget(plan, output, seed=args.seed, dry_run=args.dry_run, figure_dir=args.figures)
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad input: the message says what and how to fix it
        logging.getLogger("label_budget").info("stopped on bad input", exc_info=True)  # the traceback: log.txt only
        sys.exit(f"label_budget: {e.args[0] if e.args else e}")
    if not args.dry_run:
        with open(os.path.join(output, "budget.md"), encoding="utf-8") as f:
            print("\n" + f.read())
        print(f"Results: {os.path.join(output, 'budget.json')}; figures: {', '.join(budget['figures'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
