#!/usr/bin/env python
"""Re-run any entry of the CPU recipe study (docs/experiments.md).

  python tools/experiments.py list
  python tools/experiments.py run r1_weak_only [--output output/experiments]
  python tools/experiments.py test r1_weak_only      # final entries only: scored once on usiigaci_test
  python tools/experiments.py report [--figures docs/figures]   # tables of every entry that has run
  python tools/experiments.py measure r1_weak_only --weights output/experiments/r1_weak_only/model_0000149.pth
  python tools/experiments.py run r6_repair_missed_cells --seed 1   # another SEED, in <output>/seed1

Entries, their settings and why they were tried live in sissi_d2/experiments/study.py. A run
resumes where it stopped; results land in <output>/<entry>/study.json (and test.json).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["list", "run", "test", "report", "measure"])
    parser.add_argument("entries", nargs="*")
    parser.add_argument("--output", default="output/experiments")
    parser.add_argument("--figures", default=None, help="report: folder for the figures")
    parser.add_argument("--weights", default=None, help="measure: a checkpoint of the entry")
    parser.add_argument("--seed", type=int, default=None,
                        help="run / test / measure / report with this SEED instead of the configs' (in <output>/seed<N>, "
                             "so that no seed resumes another's checkpoints)")
    args = parser.parse_args()

    from sissi_d2.experiments import study

    if args.action == "list":
        for e in study.ENTRIES:
            print(f"{e.name:25s} {e.kind:8s} {'final ' if e.final else ''}{e.why}")
        return
    out, extra = study.seed_setting(args.output, args.seed)
    if args.action == "report":
        print(study.study_report(out, args.figures))
        return
    if not args.entries:
        parser.error("name at least one entry (see: list)")
    for name in args.entries:
        study.entry(name)  # unknown names fail before anything runs

    from detectron2.utils.logger import setup_logger

    from sissi_d2.data.builtin import register_shared_datasets
    from sissi_d2.data.paths import shared_data_root

    if not os.path.isdir(os.path.join(shared_data_root(), "usiigaci_phase")):
        sys.exit(f"The real data is not at {shared_data_root()}: set SISSI_SHARED_DATA (see datasets/README.md).")
    os.makedirs(out, exist_ok=True)
    setup_logger(os.path.join(out, "log.txt"))
    setup_logger(os.path.join(out, "log.txt"), name="sissi_d2")
    register_shared_datasets()
    for name in args.entries:
        if args.action == "measure":
            if not args.weights:
                parser.error("measure needs --weights")
            result = study.measure_weights(name, out, args.weights, extra)
        else:
            result = (study.run_entry if args.action == "run" else study.test_entry)(name, out, extra)
        print(json.dumps(result, indent=1)[:3000])


if __name__ == "__main__":
    main()
