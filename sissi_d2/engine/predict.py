"""Predict and count cells on image files, and read label files of every kind the tools meet.

Used by ``tools/predict.py`` (inference on files, folders or globs), ``tools/visualize.py`` and
``tools/compare_labels.py`` (label files: weak labels, pseudo-label snapshots, corrected labels
exported from CVAT / Label Studio and the ``detections.json`` written here).

``detections.json`` is a COCO detection file whose annotations carry a ``score``, the same form
as the pseudo-label snapshots ``OUTPUT_DIR/sissi/pseudo_labels/epoch_NNNN.json``: it can be
loaded as a data set (``SISSI.REGISTER ("name=coco:detections.json",)``), imported into an
annotation tool, drawn and scored. Its ``info`` holds the settings of the run.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..data.datasets import IMAGE_EXTENSIONS
from ..data.image_io import ImageReadError, read_bgr8
from ..utils.atomic import atomic_open, atomic_write_json
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
    "LabelSet",
    "load_labels",
    "label_key",
    "match_keys",
    "register_sources",
]

logger = logging.getLogger(__name__)

# Files of a Cellpose-style folder that are not images of cells (masks, flows, ...).
_NON_IMAGE_SUFFIXES = ("_masks", "_flows", "_seg", "_outlines", "_cp_masks", "_cp_output")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


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
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and _is_image_name(p))
            if not found:
                raise FileNotFoundError(
                    f"No image files ({', '.join(IMAGE_EXTENSIONS)}) match the pattern {item!r}. Check the "
                    "path; quote the pattern so that the shell does not expand it."
                )
            for p in found:
                add(p)
        elif os.path.isdir(item):
            found = [os.path.join(item, n) for n in sorted(os.listdir(item))
                     if _is_image_name(n) and not os.path.splitext(n)[0].endswith(_NON_IMAGE_SUFFIXES)
                     and os.path.isfile(os.path.join(item, n))]
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

    from .. import modeling  # noqa: F401  (registers SISSI's model parts, if any)
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
    images, annotations = [], []
    ann_id = 1
    for img_id, p in enumerate(predictions, start=1):
        images.append({"id": img_id, "file_name": os.path.abspath(p.file_name), "height": int(p.height),
                       "width": int(p.width)})
        for (x0, y0, x1, y1), s in zip(p.boxes.tolist(), p.scores.tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": ann_id, "image_id": img_id, "category_id": 1,
                                "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0, "score": round(float(s), 5)})
            ann_id += 1
    out = {"info": dict(info or {}), "images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "cell"}]}
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
    atomic_write_json(det_path, predictions_to_coco(predictions, info, skipped), indent=None)
    csv_path = write_counts_csv(predictions, os.path.join(output_dir, "counts.csv"), score_thresh)
    overlay_paths = write_overlays(predictions, os.path.join(output_dir, "overlays"), score_thresh) if overlays else []
    return {"images": len(predictions), "skipped": skipped,
            "cells": sum(p.count(score_thresh) for p in predictions),
            "detections": det_path, "counts": csv_path, "overlays": overlay_paths,
            "predictions": predictions}


# ---------------------------------------------------------------------------------------------
# label files and data sets, for drawing and scoring
# ---------------------------------------------------------------------------------------------
_LABEL_STUDIO_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def label_key(file_name: str) -> str:
    """The key images are matched by across label files: the file's basename."""
    return os.path.basename(str(file_name).replace("\\", "/"))


@dataclass
class LabelSet:
    """Boxes of one label source. ``images``: key -> dict(file_name, height, width, boxes Nx4
    XYXY, scores (N,) or None when the source has none), in the source's image order."""

    name: str
    images: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return any(v["scores"] is not None for v in self.images.values())

    def boxes(self, key, score_thresh: float = 0.0):
        entry = self.images[key]
        if entry["scores"] is None or score_thresh <= 0:
            return entry["boxes"]
        return entry["boxes"][entry["scores"] >= score_thresh]

    def num_boxes(self) -> int:
        return sum(len(v["boxes"]) for v in self.images.values())


def _add_image(images: dict, key: str, entry: dict, where: str) -> None:
    if key in images:
        logger.warning("%s: two images share the name %s (%s and %s); the second one is used when "
                       "matching label files by name.", where, key, images[key]["file_name"], entry["file_name"])
    images[key] = entry


def _labels_from_coco_json(path: str, image_root: str | None) -> LabelSet:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"Label file {path} is not valid json ({e}).") from None
    if isinstance(data, list):
        raise ValueError(
            f"Label file {path} is a bare list of COCO results (no 'images'): its image ids cannot be "
            "matched to files. Use a COCO json with an 'images' list (e.g. tools/predict.py's detections.json)."
        )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"Label file {path} has no 'images' list; expected a COCO detection json.")
    root = image_root or os.path.dirname(os.path.abspath(path))
    images, by_id = {}, {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"Label file {path}: image entry {img!r} lacks 'id' or 'file_name'.")
        fname = str(img["file_name"])
        full = fname if os.path.isabs(fname) else os.path.normpath(os.path.join(root, fname))
        entry = {"file_name": full, "height": img.get("height"), "width": img.get("width"),
                 "boxes": [], "scores": []}
        by_id[img["id"]] = entry
        _add_image(images, label_key(fname), entry, path)
    unknown = bad = 0
    for ann in data.get("annotations") or []:
        entry = by_id.get(ann.get("image_id"))
        if entry is None:
            unknown += 1
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            bad += 1
            continue
        if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            bad += 1
            continue
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(float(ann["score"]) if "score" in ann else None)
    if unknown:
        logger.warning("%s: %d annotations name an image_id not in 'images'; ignored.", path, unknown)
    if bad:
        logger.warning("%s: %d annotations with a malformed, non-finite or empty bbox; ignored.", path, bad)
    for entry in images.values():
        scores = entry["scores"]
        entry["boxes"] = np.asarray(entry["boxes"], np.float64).reshape(-1, 4)
        if scores and all(s is not None for s in scores):
            entry["scores"] = np.asarray(scores, np.float64)
        elif any(s is not None for s in scores):
            logger.warning("%s: only some boxes of %s have a score; using 1 for the others.", path, entry["file_name"])
            entry["scores"] = np.asarray([1.0 if s is None else s for s in scores], np.float64)
        else:
            entry["scores"] = None
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return LabelSet(os.path.basename(path), images, dict(info))


def _labels_from_dataset(name: str) -> LabelSet:
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    images = {}
    for rec in DatasetCatalog.get(name):
        boxes, scores = [], []
        for a in rec.get("annotations", []):
            boxes.append(BoxMode.convert([float(v) for v in a["bbox"]], a.get("bbox_mode", BoxMode.XYXY_ABS),
                                         BoxMode.XYXY_ABS))
            scores.append(a.get("score"))
        has_scores = bool(scores) and all(s is not None for s in scores)
        _add_image(images, label_key(rec["file_name"]), {
            "file_name": rec["file_name"], "height": rec.get("height"), "width": rec.get("width"),
            "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
            "scores": np.asarray(scores, np.float64) if has_scores else None}, name)
    return LabelSet(name, images, {})


def _json_image_root(path: str) -> str | None:
    """The image_root a registered coco data set gives this json, if any (e.g. the weak labels)."""
    from detectron2.data import MetadataCatalog

    path = os.path.abspath(path)
    for name in MetadataCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) and os.path.abspath(meta.json_file) == path:
            root = (getattr(meta, "sissi_options", None) or {}).get("image_root")
            if root:
                return root
    return None


def load_labels(source: str, image_root: str | None = None) -> LabelSet:
    """Boxes of a label json (COCO, with or without scores) or of a registered data set name.

    ``source`` is a path to an existing file, else a name in ``DatasetCatalog``. A relative image
    ``file_name`` in a json is resolved against ``image_root``, else the image root of a registered
    data set using that json, else the json's folder.
    """
    from detectron2.data import DatasetCatalog

    if os.path.isfile(source):
        return _labels_from_coco_json(source, image_root or _json_image_root(source))
    if source in DatasetCatalog.list():
        return _labels_from_dataset(source)
    if source.lower().endswith(".json"):
        raise FileNotFoundError(f"Label file {source} does not exist.")
    known = ", ".join(sorted(n for n in DatasetCatalog.list() if not n.startswith(("coco_", "lvis_", "voc_",
                                                                                   "cityscapes_", "keypoints_"))))
    raise FileNotFoundError(
        f"{source!r} is neither a label json file nor a registered data set. Registered: {known or 'none'}. "
        "Register more with --register NAME=KIND:PATH or SISSI.REGISTER in a config."
    )


def match_keys(reference: Iterable[str], other: Iterable[str]) -> dict:
    """other key -> reference key, by file basename; a Label Studio upload prefix
    (``1a2b3c4d-img001.png``) on either side is ignored when the plain names do not match."""
    ref = list(reference)
    ref_set = set(ref)
    stripped = {}
    for r in ref:
        stripped.setdefault(_LABEL_STUDIO_PREFIX.sub("", r), r)
    out = {}
    for k in other:
        if k in ref_set:
            out[k] = k
        else:
            s = _LABEL_STUDIO_PREFIX.sub("", k)
            if s in ref_set:
                out[k] = s
            elif s in stripped:
                out[k] = stripped[s]
    return out


def register_sources(config_file: str | None = None, specs: Sequence[str] = (), opts: Sequence[str] = ()) -> list:
    """Register the known data sets (shared, synthetic), those of a config's SISSI.REGISTER and
    ``specs`` ("NAME=KIND:PATH"), so that label sources can be given by data set name."""
    from ..setup import build_config, register_from_spec, register_known_datasets

    # only SISSI.REGISTER is used: the device is irrelevant (and CPU avoids a CUDA warning)
    cfg = build_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu"]) if (config_file or opts) else None
    names = register_known_datasets(cfg)
    for spec in specs:
        names.append(register_from_spec(spec))
    return names
