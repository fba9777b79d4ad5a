"""Label sources for drawing and scoring (``tools/visualize.py``, ``tools/compare_labels.py``).

A source is a label json (weak labels, pseudo-label snapshots, ``detections.json`` of
``tools/predict.py``, corrected labels exported from CVAT / Label Studio), read through
``data.label_files``, or a registered data set. Images are matched by ``image_key``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .label_files import image_key, read_coco_json

__all__ = ["LabelSet", "load_labels", "match_keys", "register_sources"]

logger = logging.getLogger(__name__)

_LABEL_STUDIO_PREFIX = re.compile(r"^[0-9a-f]{8}-")


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
    data = read_coco_json(path)
    root = image_root or os.path.dirname(os.path.abspath(path))
    images, by_id = {}, {}
    for img in data["images"]:
        fname = str(img["file_name"])
        full = fname if os.path.isabs(fname) else os.path.normpath(os.path.join(root, fname))
        entry = {"file_name": full, "height": img.get("height"), "width": img.get("width"),
                 "boxes": [], "scores": []}
        by_id[img["id"]] = entry
        _add_image(images, image_key(fname), entry, path)
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
        _add_image(images, image_key(rec["file_name"]), {
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
    from ..config_builder import build_config, register_from_spec, register_known_datasets

    # only SISSI.REGISTER is used: the device is irrelevant (and CPU avoids a CUDA warning)
    cfg = build_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu"]) if (config_file or opts) else None
    names = register_known_datasets(cfg)
    for spec in specs:
        names.append(register_from_spec(spec))
    return names
