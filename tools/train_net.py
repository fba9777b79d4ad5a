#!/usr/bin/env python
"""Train or evaluate a SISSI detector (Detectron2 style).

  python tools/train_net.py --config-file configs/sissi_s.yaml
  python tools/train_net.py --config-file configs/cpu/adele_sissi_s.yaml --num-gpus 2   # 2 gloo processes on CPU
  python tools/train_net.py --config-file configs/cpu/weak_only.yaml --resume
  python tools/train_net.py --config-file configs/cpu/weak_only.yaml --eval-only MODEL.WEIGHTS output/cpu/model_final.pth
"""
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sissi_d2  # noqa: E402  (applies the Detectron2 compatibility patches first)
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from sissi_d2.engine import SISSITrainer, launch  # noqa: E402
from sissi_d2.engine.checkpoint import load_weights  # noqa: E402
from sissi_d2.evaluation.evaluator import format_results  # noqa: E402
from sissi_d2.config_builder import build_config, register_known_datasets  # noqa: E402


def setup(args):
    cfg = build_config(args.config_file, args.opts, freeze=False)
    if args.eval_readers:
        cfg.SISSI.EVAL.READERS = tuple(args.eval_readers)
    cfg.freeze()
    default_setup(cfg, args)
    register_known_datasets(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = SISSITrainer.build_model(cfg)
        load_weights(model, cfg.MODEL.WEIGHTS)
        results = SISSITrainer.test(cfg, model)
        if comm.is_main_process():
            print(format_results(results))
        return results
    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--eval-reader", dest="eval_readers", action="append", default=None, metavar="JSON",
        help="another reader's COCO json for the test images (repeat for several): one row each plus the mean",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
