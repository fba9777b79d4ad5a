"""Predict and count cells on image files (``tools/predict.py``: files, folders or globs).

Reading label files for drawing and scoring is ``sissi_d2.data.label_sets``.

``detections.json`` is a COCO detection file whose annotations carry a ``score``, the same form
as the pseudo-label snapshots ``OUTPUT_DIR/sissi/pseudo_labels/epoch_NNNN.json``: it can be
loaded as a data set (``SISSI.REGISTER ("name=coco:detections.json",)``), imported into an
annotation tool, drawn and scored. Its ``info`` holds the settings of the run.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.image_io import ImageReadError, read_bgr8
from ..data.label_files import IMAGE_EXTENSIONS, detections_to_coco, is_image_file, list_image_files, write_coco_json
from ..utils.atomic import atomic_open
from ..utils.progress import progress
from .inference import IDENTITY_VIEW, RecordPredictor, inference_mode

__all__ = [
    "Prediction",
    "expand_inputs",
    "build_inference_model",
    "predict_files",
    "predictions_to_coco",
    "write_counts_csv",
    "write_overlays",
    "run_prediction",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str]) -> list:
    """Image paths of files, folders and glob patterns, in the order given, without duplicates.

    * a folder gives its image files (``.png .tif .tiff .jpg .jpeg .bmp``; not recursive;
      Cellpose ``*_masks`` / ``*_flows`` files are left out);
    * a glob (``*``, ``?``, ``[``; ``**`` recurses) gives the image files it matches;
    * anything else is taken as one image file, whatever its extension. A missing file is
      kept here: reading it fails later with an error naming it (or is skipped, ``skip_bad``).

    Raises FileNotFoundError when nothing is given, or a folder or pattern yields no image.
    """
    if not inputs:
        raise FileNotFoundError("No input given: pass image files, folders or glob patterns.")
    paths, seen = [], set()

    def add(path):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            paths.append(os.path.normpath(path))

    for item in inputs:
        item = os.path.expanduser(os.fspath(item))
        if glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and is_image_file(p))
            if not found:
                raise FileNotFoundError(
                    f"No image files ({', '.join(IMAGE_EXTENSIONS)}) match the pattern {item!r}. Check the "
                    "path; quote the pattern so that the shell does not expand it."
                )
            for p in found:
                add(p)
        elif os.path.isdir(item):
            found = list_image_files(item)
            if not found:
                raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder {item}.")
            for p in found:
                add(p)
        else:
            add(item)
    return paths


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Boxes (Nx4 XYXY, original pixels) and scores of one image, highest score first."""

    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray

    def count(self, score_thresh: float) -> int:
        return int((self.scores >= score_thresh).sum())

    def mean_score(self, score_thresh: float) -> float:
        kept = self.scores[self.scores >= score_thresh]
        return float(kept.mean()) if len(kept) else float("nan")


def build_inference_model(cfg, weights: str | None = None):
    """Detectron2 model of ``cfg`` on ``cfg.MODEL.DEVICE`` with the weights loaded, in eval mode."""
    from detectron2.modeling import build_model

    from .checkpoint import load_weights

    path = weights if weights is not None else cfg.MODEL.WEIGHTS
    model = build_model(cfg)
    load_weights(model, path)
    model.eval()
    return model


def _sorted(boxes, scores):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def predict_files(cfg, model, paths: Sequence[str], batch_size: int = 4, tta: bool = False,
                  skip_bad: bool = False, show_progress: bool = True):
    """Run the detector on image files.

    Plain inference uses the test resize of ``cfg``; with ``tta`` every image goes through the
    pseudo-label code path (the views of ``SISSI.PSEUDO``, fused and thresholded as the
    pseudo-labels are). Both batch ``batch_size`` images at a time through
    ``RecordPredictor.predict_images``, equal input sizes only, so batching does not change the
    boxes.

    An unreadable image raises ImageReadError naming the file, or with ``skip_bad`` is logged
    and left out. Returns ``(predictions in input order, [(file, error message), ...] skipped)``.
    """
    predictor = RecordPredictor(cfg, batch_size=max(1, int(batch_size)))
    skipped = []

    def images():
        for path in progress(list(paths), desc="tta+wbf" if tta else "predict", disable=not show_progress):
            try:
                image = read_bgr8(path)
            except ImageReadError as e:
                if not skip_bad:
                    raise
                logger.warning("Skipping %s: %s", path, e)
                skipped.append((path, str(e)))
                continue
            yield path, image

    results = []
    views = None if tta else [IDENTITY_VIEW]
    with inference_mode(model) as net:
        for path, height, width, per_view in predictor.predict_images(net, images(), views):
            boxes, scores = predictor.fuse(per_view, height, width) if tta else per_view[0]
            results.append(Prediction(path, height, width, *_sorted(boxes, scores)))
    return results, skipped


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def predictions_to_coco(predictions: Sequence[Prediction], info: dict | None = None, skipped=()) -> dict:
    """COCO detection dict: ``images`` (absolute ``file_name``), ``annotations`` with ``score``
    (every detection, highest score first per image), ``categories`` = cell, ``info``."""
    out = detections_to_coco(({"file_name": os.path.abspath(p.file_name), "height": p.height, "width": p.width,
                               "boxes": p.boxes, "scores": p.scores} for p in predictions), info)
    if skipped:
        out["skipped"] = [{"file_name": os.path.abspath(f), "error": e} for f, e in skipped]
    return out


def write_counts_csv(predictions: Sequence[Prediction], path: str, score_thresh: float) -> str:
    """One row per image: ``file, count, mean_score`` (boxes with score >= ``score_thresh``;
    the mean score is empty when no cell is counted)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "count", "mean_score"])
        for p in predictions:
            mean = p.mean_score(score_thresh)
            writer.writerow([p.file_name, p.count(score_thresh), "" if np.isnan(mean) else f"{mean:.4f}"])
    return path


def _unique_names(paths: Sequence[str], ext: str = ".png") -> list:
    """Output file names from the input stems; a repeated stem gets _2, _3, ..."""
    used, names = set(), []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        name, k = stem + ext, 2
        while name.lower() in used:
            name, k = f"{stem}_{k}{ext}", k + 1
        used.add(name.lower())
        names.append(name)
    return names


def write_overlays(predictions: Sequence[Prediction], folder: str, score_thresh: float) -> list:
    """One PNG per image: the (8-bit) image with its boxes of score >= ``score_thresh``."""
    from ..utils.visualize import draw_boxes, save_png, side_by_side

    os.makedirs(folder, exist_ok=True)
    written = []
    for p, name in zip(predictions, _unique_names([p.file_name for p in predictions])):
        image = draw_boxes(read_bgr8(p.file_name), p.boxes, color="green", scores=p.scores, min_score=score_thresh)
        title = f"{os.path.basename(p.file_name)}: {p.count(score_thresh)} cells"
        written.append(save_png(os.path.join(folder, name), side_by_side([image], [title], pad=0)))
    return written


def run_prediction(cfg, inputs: Sequence[str], output_dir: str, weights: str | None = None,
                   batch_size: int = 4, tta: bool = False, score_thresh: float = 0.5,
                   overlays: bool = False, skip_bad: bool = False, show_progress: bool = True) -> dict:
    """Expand ``inputs``, predict, and write ``detections.json``, ``counts.csv`` (and
    ``overlays/*.png``) to ``output_dir``. Returns a summary dict."""
    paths = expand_inputs(inputs)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not skip_bad:  # before the model is loaded
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"Input not found: {missing[0]} is no image file, folder or glob pattern "
                                f"match{more}. Check the path.")
    weights = weights if weights is not None else cfg.MODEL.WEIGHTS
    model = build_inference_model(cfg, weights)
    logger.info("Predicting %d image(s) on %s (%s)", len(paths), cfg.MODEL.DEVICE, "TTA + WBF" if tta else "plain")
    predictions, skipped = predict_files(cfg, model, paths, batch_size=batch_size, tta=tta,
                                         skip_bad=skip_bad, show_progress=show_progress)
    os.makedirs(output_dir, exist_ok=True)
    info = {"description": "written by tools/predict.py (sissi_d2.engine.predict)",
            "weights": os.path.abspath(weights), "tta": bool(tta), "score_thresh": float(score_thresh),
            "device": str(cfg.MODEL.DEVICE), "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST)}
    det_path = os.path.join(output_dir, "detections.json")
    write_coco_json(det_path, predictions_to_coco(predictions, info, skipped), indent=None)
    csv_path = write_counts_csv(predictions, os.path.join(output_dir, "counts.csv"), score_thresh)
    overlay_paths = write_overlays(predictions, os.path.join(output_dir, "overlays"), score_thresh) if overlays else []
    return {"images": len(predictions), "skipped": skipped,
            "cells": sum(p.count(score_thresh) for p in predictions),
            "detections": det_path, "counts": csv_path, "overlays": overlay_paths,
            "predictions": predictions}
