#!/usr/bin/env python
"""Score one label source against another: COCO AP50 / AP75 / AP / AR and cell counts per image.

  # pseudo-labels of epoch 5 against the true (oracle) labels of the same images
  python tools/compare_labels.py --gt synth_target_train_oracle \\
      --pred output/demo/sissi_s/sissi/pseudo_labels/epoch_0005.json --output metrics.json
  # predictions of tools/predict.py against a labels json
  python tools/compare_labels.py --gt test_labels.json --pred out/pred/detections.json

A source is a COCO json (weak labels, a pseudo-label snapshot, labels exported from CVAT or
Label Studio, tools/predict.py's detections.json) or a registered data set name. Images are
matched by file basename; the images of --gt are the ones scored (a --gt image missing from
--pred counts as one with no boxes). --pred scores rank the boxes for AP (no score = 1); AP
uses every box, the counts those with score >= --score-thresh (default: the json's
info.score_thresh, written by tools/predict.py, else every box). AR is at --max-dets (400).
"""
import argparse
import logging
import math
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
from sissi_d2.data.label_sets import load_labels, match_keys, register_sources  # noqa: E402
from sissi_d2.evaluation.box_metrics import METRIC_KEYS, coco_box_metrics  # noqa: E402
from sissi_d2.utils.atomic import atomic_write_json  # noqa: E402

logger = logging.getLogger("sissi_d2.tools.compare_labels")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, metavar="SRC", help="reference labels: json or registered data set name")
    p.add_argument("--pred", required=True, metavar="SRC", help="labels to score: json or registered data set name")
    p.add_argument("--output", metavar="JSON", default=None, help="also write the metrics and counts here")
    p.add_argument("--max-dets", type=int, default=400, help="boxes per image scored (default 400)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="count --pred boxes at this score or above (default: the json's info.score_thresh, else all)")
    p.add_argument("--max-rows", type=int, default=30, help="per-image count rows printed (default 30; 0 = all)")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="a config whose SISSI.REGISTER data sets to register")
    p.add_argument("--register", action="append", default=[], metavar="NAME=KIND:PATH",
                   help="register a data set first (repeatable), e.g. oracle=cellpose:/data/target/train")
    return p.parse_args(argv)


def compare(gt_src: str, pred_src: str, max_dets: int = 400, score_thresh=None) -> dict:
    """Metrics and per-image counts of ``pred_src`` against ``gt_src`` (both already resolvable)."""
    gt = load_labels(gt_src)
    pred = load_labels(pred_src)
    if not gt.images:
        raise ValueError(f"{gt_src} holds no images.")
    to_gt = match_keys(gt.images, pred.images)
    if not to_gt:
        raise ValueError(
            f"No image of {pred_src} is in {gt_src} (images are matched by file name, e.g. "
            f"{next(iter(gt.images))!r} vs {next(iter(pred.images), None)!r}). Are they labels of the same images?")
    extra = [k for k in pred.images if k not in to_gt]
    if extra:
        logger.warning("%d image(s) of %s are not in %s and are ignored, e.g. %s", len(extra), pred.name, gt.name,
                       extra[0])
    missing = len(gt.images) - len(set(to_gt.values()))
    if missing:
        logger.warning("%d image(s) of %s are not in %s: scored as images with no boxes.", missing, gt.name, pred.name)

    thr = score_thresh if score_thresh is not None else (
        float(pred.info.get("score_thresh", 0.0) or 0.0) if pred.has_scores else 0.0)
    gt_boxes = {k: v["boxes"] for k, v in gt.images.items()}
    pred_boxes = {}
    for pk, gk in to_gt.items():
        entry = pred.images[pk]
        scores = entry["scores"] if entry["scores"] is not None else np.ones(len(entry["boxes"]))
        pred_boxes[gk] = (entry["boxes"], scores)
    metrics = coco_box_metrics(gt_boxes, pred_boxes, max_dets=max_dets)

    rows = []
    for key in gt.images:
        n_gt = len(gt_boxes[key])
        if key in pred_boxes:
            boxes, scores = pred_boxes[key]
            n_pred = int((np.asarray(scores) >= thr).sum())
        else:
            n_pred = 0
        rows.append({"file": key, "gt": n_gt, "pred": n_pred, "diff": n_pred - n_gt})
    diffs = np.array([r["diff"] for r in rows], np.float64)
    gts = np.array([r["gt"] for r in rows], np.float64)
    counts = {
        "score_thresh": thr, "images": len(rows), "gt_total": int(gts.sum()),
        "pred_total": int(sum(r["pred"] for r in rows)),
        "mean_abs_error": float(np.abs(diffs).mean()), "mean_diff": float(diffs.mean()),
        "mean_abs_rel_error": (float(np.mean(np.abs(diffs[gts > 0]) / gts[gts > 0])) if (gts > 0).any()
                               else float("nan")),
        "per_image": rows,
    }
    return {"gt": gt_src, "pred": pred_src, "max_dets": max_dets, "metrics": metrics, "counts": counts}


def _fmt(v) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else (f"{v:.1f}" if isinstance(v, float) else str(v))


def format_report(result: dict, max_rows: int = 30) -> str:
    from tabulate import tabulate

    m, c = result["metrics"], result["counts"]
    lines = [f"{result['pred']}  vs  {result['gt']}  ({c['images']} images, maxDets {result['max_dets']})", ""]
    lines.append(tabulate([[_fmt(m[k]) for k in METRIC_KEYS] + [m["num_gt"], m["num_pred"]]],
                          headers=list(METRIC_KEYS) + ["gt boxes", "pred boxes"], tablefmt="pipe",
                          stralign="right"))
    lines += ["", f"Cell counts (pred boxes with score >= {c['score_thresh']:g}): gt {c['gt_total']}, pred "
                  f"{c['pred_total']}, mean abs error {c['mean_abs_error']:.2f} per image, mean diff "
                  f"{c['mean_diff']:+.2f}, mean abs relative error {_fmt(100 * c['mean_abs_rel_error'])}%", ""]
    rows = c["per_image"] if max_rows <= 0 else c["per_image"][:max_rows]
    lines.append(tabulate([[r["file"], r["gt"], r["pred"], f"{r['diff']:+d}"] for r in rows],
                          headers=["file", "gt", "pred", "diff"], tablefmt="pipe"))
    if len(rows) < len(c["per_image"]):
        lines.append(f"... {len(c['per_image']) - len(rows)} more images (all in --output)")
    return "\n".join(lines)


def _json_safe(obj):
    """NaN -> null, so that the file is strict json."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="sissi_d2", abbrev_name="sissi")
    try:
        register_sources(args.config_file, args.register)
        result = compare(args.gt, args.pred, max_dets=args.max_dets, score_thresh=args.score_thresh)
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"compare_labels.py: error: {msg}", file=sys.stderr)
        return 2
    print(format_report(result, args.max_rows))
    if args.output:
        atomic_write_json(args.output, _json_safe(result))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
