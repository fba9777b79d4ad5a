#!/usr/bin/env python
"""Table 1 over several seeds: each row's spread, and the row differences that survive it.

  # one table per seed (any rows; the same rows in each), then the report over them
  python tools/table1.py --output output/table1_seed1 --rows weak_only plain_adele adele_sissi_s --jobs 2 SEED 1
  python tools/table1.py --output output/table1_seed2 --rows weak_only plain_adele adele_sissi_s --jobs 2 SEED 2
  python tools/table1_seeds.py output/table1 output/table1_seed1 output/table1_seed2 --output output/table1_seeds

Writes seeds.md (rows per seed with mean ± sd; differences between rows of the same seed, e.g.
A+SISSI(S) − Weak-only; first / best / last pseudo-label quality), seeds.json, seeds_ap50.png and seeds_label_f1.png.
Reads only the folders' results.json and their trunks' recorded settings: nothing is trained.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="tools/table1.py output folders, one per seed")
    parser.add_argument("--output", default="output/table1_seeds")
    args = parser.parse_args(argv)

    from sissi_d2.experiments.seeds import write_seed_report

    try:
        summary = write_seed_report(args.folders, args.output)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"table1_seeds: {e}")
    print(open(os.path.join(args.output, "seeds.md"), encoding="utf-8").read())
    print(f"seeds {summary['seeds']}: report in {os.path.join(args.output, 'seeds.md')}")


if __name__ == "__main__":
    main()
