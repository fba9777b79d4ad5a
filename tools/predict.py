#!/usr/bin/env python
"""Detect and count cells on image files with a trained model.

  python tools/predict.py --config-file configs/cpu/sissi_s.yaml --weights output/cpu/model_final.pth \\
      --output out/pred path/to/images/ 'more/*.tif' one.png [--overlays] [--tta] [KEY VALUE ...]

Inputs are files, folders (their image files) or glob patterns; any bit depth, gray / RGB / RGBA.
Writes to --output:

  detections.json   COCO json: images (absolute file names) + every detection with its score
  counts.csv        file, count (score >= --score-thresh), mean_score -- one row per image
  overlays/*.png    with --overlays: each image with its counted boxes

KEY VALUE pairs override the config (e.g. MODEL.DEVICE cuda, INPUT.MIN_SIZE_TEST 1024).
--tta uses the pseudo-label path of training (test-time views of SISSI.PSEUDO fused by WBF).
"""
import argparse
import logging
import os
import re
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Torch / Detectron2 0.6 deprecation chatter on recent versions is not for the user of this tool.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")

import sissi_d2  # noqa: E402,F401  (applies the Detectron2 compatibility patches first)
from sissi_d2.data.image_io import ImageReadError  # noqa: E402
from sissi_d2.engine.predict import run_prediction  # noqa: E402
from sissi_d2.config_builder import build_config  # noqa: E402


_ROOTS = None


def is_config_key(item: str) -> bool:
    """Whether ``item`` is a config key such as MODEL.DEVICE or SISSI.PSEUDO.SCALES (not a file)."""
    global _ROOTS
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*", item) or os.path.exists(item):
        return False
    if _ROOTS is None:
        from detectron2.config import get_cfg

        from sissi_d2.config import add_sissi_config

        _ROOTS = set(add_sissi_config(get_cfg()).keys())
    return item.split(".")[0] in _ROOTS


def split_config_opts(items):
    """(inputs, KEY VALUE overrides): the overrides start at the first config key."""
    for i, item in enumerate(items):
        if is_config_key(item):
            return list(items[:i]), [o for o in items[i:] if o != "--"]
    return list(items), []


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders or (quoted) glob patterns, then optional config overrides KEY VALUE ...")
    p.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    p.add_argument("--weights", default=None, metavar="PTH",
                   help="checkpoint (e.g. OUTPUT_DIR/model_final.pth); default MODEL.WEIGHTS of the config")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for detections.json, counts.csv, overlays/")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="a detection counts as a cell at this score or above (default 0.5); "
                        "detections.json keeps every detection")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per forward pass (with --tta: views per forward pass); default 4")
    p.add_argument("--tta", action="store_true", help="test-time augmentation + weighted boxes fusion (SISSI.PSEUDO)")
    p.add_argument("--overlays", action="store_true", help="also write overlays/<image>.png with the boxes drawn")
    p.add_argument("--skip-bad", action="store_true", help="log unreadable images and go on instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_intermixed_args(argv)
    # Detectron2-style KEY VALUE overrides follow the inputs: split them off at the first config key
    args.inputs, args.opts = split_config_opts(args.inputs)
    if len(args.opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="sissi_d2", abbrev_name="sissi")
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    try:
        cfg = build_config(args.config_file, args.opts)
        result = run_prediction(cfg, args.inputs, args.output, weights=args.weights or cfg.MODEL.WEIGHTS,
                                batch_size=args.batch_size, tta=args.tta, score_thresh=args.score_thresh,
                                overlays=args.overlays, skip_bad=args.skip_bad, show_progress=not args.no_progress)
    except (ImageReadError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        hint = " (pass --skip-bad to leave unreadable images out and go on)" if isinstance(e, ImageReadError) else ""
        print(f"predict.py: error: {msg}{hint}", file=sys.stderr)
        return 2
    n = result["images"]
    print(f"{n} image(s), {result['cells']} cells at score >= {args.score_thresh:g} "
          f"({result['cells'] / max(n, 1):.1f} per image)"
          + (f"; {len(result['skipped'])} unreadable image(s) skipped" if result["skipped"] else ""))
    print(f"detections: {result['detections']}")
    print(f"counts:     {result['counts']}")
    if args.overlays:
        print(f"overlays:   {os.path.join(args.output, 'overlays')} ({len(result['overlays'])} PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
