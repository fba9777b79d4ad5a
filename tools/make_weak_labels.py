#!/usr/bin/env python
"""Weak box labels for a folder of cell images, by classical image processing (SISSI appendix A).

Examples:
  # every *_img.png of the Usiigaci training folder, phase-contrast pipeline, scored on the masks
  python tools/make_weak_labels.py ../shared/data/usiigaci_phase/train -o weak.json \\
      --oracle-dir ../shared/data/usiigaci_phase/train_oracle_masks
  # one pipeline per image, as the paper sorted CellLab images into alive / inhibited / dead
  python tools/make_weak_labels.py "images/*.jpg" --pipeline-map sorted.csv -o weak.json

Input: a folder (its ``*_img.*`` files when there are any, Cellpose layout; else every image file)
or a glob pattern. Output: COCO json (images with absolute file_name, height, width, id;
annotations with bbox [x, y, w, h], category_id 1 and the pipeline's score; one category
"cell"), written atomically. ``--oracle-dir`` scores the labels against instance masks
(box AP50 / AP75 / AP / AR, maxDets 400): for measuring label quality only.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import sissi_d2  # noqa: E402,F401  (applies the detectron2 patches first)
from sissi_d2.data.image_io import ImageReadError, read_gray8  # noqa: E402
from sissi_d2.data.label_files import IMAGE_EXTENSIONS, detections_to_coco, list_image_files, write_coco_json  # noqa: E402
from sissi_d2.utils.atomic import atomic_write_json  # noqa: E402
from sissi_d2.weak_labels.pipelines import available_pipelines, make_weak_labels, nms  # noqa: E402

DEFAULT_PIPELINE = "phase"


def image_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def list_images(source: str) -> list:
    """Image files of a folder (``*_img.*`` if present) or of a glob pattern, sorted."""
    if os.path.isdir(source):
        files = list_image_files(source, cellpose_first=True)
    elif os.path.isfile(source):
        files = [source]
    else:
        files = [f for f in glob.glob(source) if os.path.isfile(f)]
        if not files and not glob.has_magic(source):
            raise SystemExit(f"error: input {source} is neither a folder, a file nor a glob pattern that "
                             "matches files")
    files = sorted(os.path.abspath(f) for f in files)
    if not files:
        raise SystemExit(f"error: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {source}")
    return files


def read_pipeline_map(path: str) -> dict:
    """CSV rows ``stem,pipeline`` (an optional header row, ``#`` comments) -> {stem: pipeline}."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: pipeline map {path} not found")
    valid = set(available_pipelines())
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise SystemExit(f"error: {path}:{lineno}: expected 'stem,pipeline', got {','.join(row)!r}")
            stem, name = row[0], row[1]
            if lineno == 1 and stem.lower() in ("stem", "image", "file", "file_name") and name not in valid:
                continue  # header
            if name not in valid:
                raise SystemExit(f"error: {path}:{lineno}: unknown pipeline {name!r} for {stem!r}; valid "
                                 f"names: {', '.join(sorted(valid))}")
            out[os.path.splitext(os.path.basename(stem))[0]] = name
    return out


def pipeline_for(path: str, mapping: dict | None, default: str | None) -> str | None:
    if mapping:
        stem = image_stem(path)
        for key in (stem, stem[:-4] if stem.endswith("_img") else None):
            if key is not None and key in mapping:
                return mapping[key]
    return default


def _init_worker():
    import cv2

    cv2.setNumThreads(1)  # one image per process; no nested thread pools


def _work(job):
    """Read one image and label it. Returns (path, h, w, boxes, scores, seconds) or an error."""
    path, pipeline, cell_size, nms_iou = job
    try:
        image = read_gray8(path)
    except ImageReadError as e:
        return path, None, str(e)
    t0 = time.perf_counter()
    boxes, scores = make_weak_labels(image, pipeline=pipeline, cell_size=cell_size)
    if nms_iou is not None and len(boxes):
        keep = nms(boxes, scores, nms_iou)
        boxes, scores = boxes[keep], scores[keep]
    return path, (image.shape[0], image.shape[1], boxes, scores, time.perf_counter() - t0), None


def to_coco(results: list, pipelines: dict, cell_size: float) -> dict:
    info = {"description": "SISSI weak labels (classical image processing)",
            "pipelines": sorted(set(pipelines.values())), "cell_size": cell_size}
    return detections_to_coco(({"file_name": path, "height": h, "width": w, "weak_label_pipeline": pipelines[path],
                                "boxes": boxes, "scores": scores} for path, (h, w, boxes, scores, _) in results), info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="folder of images (*_img.* if present, else all images) or a glob pattern")
    p.add_argument("-o", "--output", required=True, help="output COCO json")
    names = available_pipelines()
    p.add_argument("--pipeline", choices=names, default=None,
                   help=f"pipeline for every image (default {DEFAULT_PIPELINE}; with --pipeline-map: for the "
                        "images the map does not list)")
    p.add_argument("--pipeline-map", metavar="CSV", help="CSV 'stem,pipeline' choosing a pipeline per image")
    p.add_argument("--cell-size", type=float, default=1.0,
                   help="linear cell size relative to the pipelines' defaults (2 = cells twice as long)")
    p.add_argument("--nms", type=float, default=None, metavar="IOU",
                   help="extra NMS on every image's boxes at this IoU (the pipelines already apply their own)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="warn about and leave out images that cannot be read, instead of stopping")
    p.add_argument("--oracle-dir", metavar="DIR",
                   help="instance masks (<stem>_masks.png) to score the weak labels against (quality only)")
    p.add_argument("--max-dets", type=int, default=400, help="maxDets for the oracle scoring (default 400)")
    p.add_argument("--metrics-json", metavar="PATH", help="also write the oracle metrics and timing here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.cell_size > 0 and np.isfinite(args.cell_size)):
        raise SystemExit(f"error: --cell-size must be a positive number, got {args.cell_size}")
    if args.nms is not None and not 0.0 <= args.nms <= 1.0:
        raise SystemExit(f"error: --nms must be an IoU in [0, 1], got {args.nms}")
    if args.oracle_dir and not os.path.isdir(args.oracle_dir):
        raise SystemExit(f"error: --oracle-dir {args.oracle_dir} is not a folder")
    files = list_images(args.input)
    mapping = read_pipeline_map(args.pipeline_map) if args.pipeline_map else None
    default = args.pipeline or (None if mapping else DEFAULT_PIPELINE)
    pipelines = {f: pipeline_for(f, mapping, default) for f in files}
    unmapped = [image_stem(f) for f, name in pipelines.items() if name is None]
    if unmapped:
        raise SystemExit(f"error: {len(unmapped)} image(s) are not in {args.pipeline_map} and no --pipeline "
                         f"is given for them, e.g. {', '.join(unmapped[:5])}")

    from sissi_d2.utils.progress import progress

    jobs = [(f, pipelines[f], args.cell_size, args.nms) for f in files]
    t_start = time.perf_counter()
    results, failed = [], []

    def consume(it):
        for path, res, err in progress(it, desc="weak labels", total=len(jobs), disable=args.quiet):
            if err is not None:
                if not args.skip_unreadable:
                    raise SystemExit(f"error: {err}")
                print(f"warning: skipped: {err}", file=sys.stderr)
                failed.append(path)
                continue
            results.append((path, res))

    if args.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        # fork (Linux) starts workers at once; spawn would re-import torch in each of them
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(args.workers, len(jobs)), initializer=_init_worker) as pool:
            consume(pool.imap(_work, jobs))
    else:
        consume(map(_work, jobs))
    wall = time.perf_counter() - t_start
    if not results:
        raise SystemExit("error: no image could be read")

    coco = to_coco(results, pipelines, args.cell_size)
    write_coco_json(args.output, coco)
    per_image = [r[1][4] for r in results]
    counts = [len(r[1][2]) for r in results]
    used = ", ".join(f"{n} x{list(pipelines[p] for p, _ in results).count(n)}"
                     for n in sorted({pipelines[p] for p, _ in results}))
    print(f"wrote {args.output}: {len(results)} images, {sum(counts)} boxes "
          f"(per image min {min(counts)}, median {int(np.median(counts))}, max {max(counts)}); "
          f"pipelines: {used}; {np.mean(per_image):.2f} s/image pipeline time, {wall:.1f} s wall")
    summary = {"output": os.path.abspath(args.output), "num_images": len(results), "num_boxes": int(sum(counts)),
               "skipped": failed, "seconds_per_image": float(np.mean(per_image)), "wall_seconds": wall}
    if args.oracle_dir:
        from sissi_d2.weak_labels.quality import score_against_masks

        weak = {image_stem(p): (r[2], r[3]) for p, r in results}
        m = score_against_masks(weak, args.oracle_dir, max_dets=args.max_dets,
                                image_paths={image_stem(p): p for p, _ in results})
        print(f"oracle ({args.oracle_dir}): AP50 {m['AP50']:.1f}  AP75 {m['AP75']:.1f}  AP {m['AP']:.1f}  "
              f"AR {m['AR']:.1f}  (maxDets {args.max_dets}; {m['num_images']} images, {m['num_gt']} true "
              f"boxes, {m['num_pred']} weak boxes)")
        if m["missing_masks"]:
            print(f"warning: {len(m['missing_masks'])} image(s) without a mask were not scored, e.g. "
                  f"{', '.join(m['missing_masks'][:5])}", file=sys.stderr)
        summary["oracle"] = {k: m[k] for k in ("AP50", "AP75", "AP", "AR", "num_gt", "num_pred", "num_images",
                                               "missing_masks")}
    if args.metrics_json:
        atomic_write_json(args.metrics_json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
