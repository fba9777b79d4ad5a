#!/usr/bin/env python
"""Draw labels on their images: a data set, a labels json, or two label sources side by side.

  # a registered data set (known ones are registered first; add more with --register)
  python tools/visualize.py --dataset synth_target_train_weak --output out/vis_weak
  # any COCO labels json: weak labels, a pseudo-label snapshot, tools/predict.py's detections.json
  python tools/visualize.py --labels output/demo/sissi_s/sissi/pseudo_labels/epoch_0005.json --output out/vis
  # two sources side by side, e.g. weak labels (left) vs corrected labels (right)
  python tools/visualize.py --labels synth_target_train_weak --compare corrected.json --output out/review

A source is a json file path or a registered data set name. One PNG per image of the first
source (--max-images of them). With --compare, boxes of one side that no box of the other side
overlaps at IoU >= --iou are drawn in a second colour (red on the left, orange on the right)
and counted in the titles, so additions and removals stand out (--no-diff: one colour).
Boxes with a score are drawn at --score-thresh and above (default: the threshold stored in the
json's info by tools/predict.py, else all).
"""
import argparse
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Torch / Detectron2 0.6 deprecation chatter on recent versions is not for the user of this tool.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")

import numpy as np  # noqa: E402

import sissi_d2  # noqa: E402,F401  (applies the Detectron2 compatibility patches first)
from sissi_d2.data.image_io import ImageReadError, read_bgr8  # noqa: E402
from sissi_d2.data.label_sets import load_labels, match_keys, register_sources  # noqa: E402

logger = logging.getLogger("sissi_d2.tools.visualize")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", metavar="SRC", help="labels json or registered data set name (drawn on the left)")
    src.add_argument("--dataset", metavar="NAME", help="registered data set name (same as --labels NAME)")
    p.add_argument("--compare", metavar="SRC", help="second labels json or data set, drawn on the right")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--max-images", type=int, default=20, help="draw at most this many images (default 20; 0 = all)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="draw scored boxes at this score or above (default: the json's info.score_thresh, else 0)")
    p.add_argument("--image-root", metavar="DIR", default=None,
                   help="folder that relative image file names of the (first) labels json are relative to "
                        "(default: a registered data set's image_root for that json, else the json's folder)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU at which boxes of the two sources match (default 0.5)")
    p.add_argument("--no-diff", action="store_true", help="with --compare: draw every box in its side's colour")
    p.add_argument("--scale", type=float, default=1.0, help="enlarge (or shrink) the images by this factor")
    p.add_argument("--show-scores", action="store_true", help="write each box's score above it")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images instead of stopping")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="a config whose SISSI.REGISTER data sets to register")
    p.add_argument("--register", action="append", default=[], metavar="NAME=KIND:PATH",
                   help="register a data set first (repeatable), e.g. mine=coco:/data/labels.json")
    args = p.parse_args(argv)
    if args.scale <= 0:
        p.error("--scale must be positive")
    return args


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of Nx4 and Mx4 XYXY boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _threshold(labels, override):
    if override is not None:
        return float(override)
    return float(labels.info.get("score_thresh", 0.0) or 0.0) if labels.has_scores else 0.0


def _panel(image, boxes, scores, scale, show_scores, unmatched=None, color="green", other="red"):
    from sissi_d2.utils.visualize import draw_boxes

    if scale != 1:
        import cv2

        h, w = image.shape[:2]
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
        boxes = boxes * scale
    thick = 1 if min(image.shape[:2]) < 600 else 2
    sc = scores if show_scores else None
    if unmatched is None:
        return draw_boxes(image, boxes, color=color, thickness=thick, scores=sc, show_scores=show_scores)
    out = draw_boxes(image, boxes[~unmatched], color=color, thickness=thick,
                     scores=None if sc is None else sc[~unmatched], show_scores=show_scores)
    return draw_boxes(out, boxes[unmatched], color=other, thickness=thick,
                      scores=None if sc is None else sc[unmatched], show_scores=show_scores)


def _unique_png_names(keys):
    used, names = set(), []
    for key in keys:
        stem = os.path.splitext(key)[0]
        name, k = stem + ".png", 2
        while name.lower() in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def visualize(args) -> dict:
    from sissi_d2.utils.visualize import save_png, side_by_side

    register_sources(args.config_file, args.register)
    left = load_labels(args.labels or args.dataset, image_root=args.image_root)
    right = load_labels(args.compare) if args.compare else None
    thr_l, thr_r = _threshold(left, args.score_thresh), _threshold(right, args.score_thresh) if right else 0.0

    keys = list(left.images)
    if not keys:
        raise ValueError(f"{left.name} holds no images.")
    to_right = {}
    if right is not None:
        to_right = {ref: k for k, ref in match_keys(keys, right.images).items()}
        missing = [k for k in keys if k not in to_right]
        if len(missing) == len(keys):
            raise ValueError(
                f"No image of {left.name} is in {right.name} (images are matched by file name, e.g. "
                f"{keys[0]!r} vs {next(iter(right.images), None)!r}). Are they labels of the same images?")
        if missing:
            logger.warning("%d of %d images of %s are not in %s (drawn with no boxes on the right), e.g. %s",
                           len(missing), len(keys), left.name, right.name, missing[0])
    if args.max_images > 0:
        keys = keys[: args.max_images]

    def side(labels, key, thr):
        if key is None:
            return np.zeros((0, 4)), None
        entry = labels.images[key]
        boxes, scores = entry["boxes"], entry["scores"]
        if scores is not None:
            keep = scores >= thr
            boxes, scores = boxes[keep], scores[keep]
        return boxes, scores

    os.makedirs(args.output, exist_ok=True)
    written, skipped = [], []
    for key, name in zip(keys, _unique_png_names(keys)):
        file_name = left.images[key]["file_name"]
        try:
            image = read_bgr8(file_name)
        except ImageReadError as e:
            if not args.skip_bad:
                raise
            logger.warning("Skipping %s: %s", file_name, e)
            skipped.append(file_name)
            continue
        bl, sl = side(left, key, thr_l)
        if right is None:
            panel = _panel(image, bl, sl, args.scale, args.show_scores)
            canvas = side_by_side([panel], [f"{key}  {left.name}: {len(bl)} boxes"], pad=0)
        else:
            rkey = to_right.get(key)
            br, sr = side(right, rkey, thr_r)
            um_l = um_r = None
            if not args.no_diff:
                iou = box_iou(bl, br)
                um_l = ~(iou >= args.iou).any(axis=1) if len(br) else np.ones(len(bl), bool)
                um_r = ~(iou >= args.iou).any(axis=0) if len(bl) else np.ones(len(br), bool)
            pl = _panel(image, bl, sl, args.scale, args.show_scores, um_l, "green", "red")
            pr = _panel(image, br, sr, args.scale, args.show_scores, um_r, "magenta" if args.no_diff else "green",
                        "orange")
            diff_l = f" ({int(um_l.sum())} only here)" if um_l is not None else ""
            diff_r = f" ({int(um_r.sum())} only here)" if um_r is not None else ""
            right_title = f"{right.name}: {len(br)}{diff_r}" if rkey is not None else f"{right.name}: image not in file"
            canvas = side_by_side([pl, pr], [f"{left.name}: {len(bl)}{diff_l}", right_title])
            canvas = side_by_side([canvas], [key], pad=0)
        written.append(save_png(os.path.join(args.output, name), canvas))
    return {"written": written, "skipped": skipped, "left": left, "right": right}


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="sissi_d2", abbrev_name="sissi")
    try:
        result = visualize(args)
    except (ImageReadError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        hint = (" (relative file names are resolved against --image-root, default the json's folder; "
                "--skip-bad leaves unreadable images out)") if isinstance(e, ImageReadError) else ""
        print(f"visualize.py: error: {msg}{hint}", file=sys.stderr)
        return 2
    for labels in (result["left"], result["right"]):
        if labels is not None:
            print(f"{labels.name}: {len(labels.images)} images, {labels.num_boxes()} boxes")
    print(f"wrote {len(result['written'])} PNG(s) to {args.output}"
          + (f"; skipped {len(result['skipped'])} unreadable image(s)" if result["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
