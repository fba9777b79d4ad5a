"""Label files in and out, in one place: COCO json, the image key, and the image-file lister.

Every label file of the project is COCO detection json (``bbox = [x, y, w, h]``, an optional
``score`` per box): the weak labels, the pseudo-label snapshots
``OUTPUT_DIR/sissi/pseudo_labels/epoch_NNNN.json``, ``detections.json`` of ``tools/predict.py``
and files exported from CVAT / Label Studio. Read here as dataset records
(:func:`load_coco_boxes`) or as boxes per image (:func:`read_label_json`); written from records
(:func:`save_records_as_coco`) or from detections (:func:`detections_to_coco`).

Point annotations (centre clicks: a CSV ``image,x,y[,class]``, a Label Studio keypoint export, a
CVAT points export or a COCO keypoints json) are read through :func:`read_point_file` and become
dataset records with one box per click through :func:`load_point_boxes`; both are implemented in
``data.points`` (formats, checks, the box-from-point rule).

Images are matched across label files by :func:`image_key` (the file's basename); records get
their ``image_id`` from :func:`image_stem`. :func:`list_image_files` lists the images of a folder
with one list of image suffixes and one of the files that sit beside them but are not images of
cells (masks, flows, ...).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..utils.atomic import atomic_write_json
from .boxes import sanitize_boxes
from .image_io import read_image_size
from .paths import GET_DATA_HELP

__all__ = [
    "IMAGE_EXTENSIONS", "NON_IMAGE_SUFFIXES", "image_key", "image_stem", "is_image_file", "list_image_files",
    "make_record", "check_unique_ids", "read_coco_json", "load_coco_boxes", "read_label_json", "records_with_boxes", "records_to_coco",
    "save_records_as_coco", "detections_to_coco", "write_coco_json", "read_point_file", "load_point_boxes",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# Stems of files that sit beside the images of cells but are not such images (Cellpose masks,
# flows, outlines; label images of other tools).
NON_IMAGE_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_flows", "_seg", "_outlines", "_cp_masks",
                      "_cp_output")


def _box_mode():
    from detectron2.structures import BoxMode

    return BoxMode


# ---------------------------------------------------------------------------------------------
# image names and files
# ---------------------------------------------------------------------------------------------
def image_key(record_or_path) -> str:
    """The key images are matched by across label files and predictions: the file's basename
    (of a record's ``file_name`` or of a path; Windows separators too)."""
    name = record_or_path["file_name"] if isinstance(record_or_path, dict) else record_or_path
    return os.path.basename(str(name).replace("\\", "/"))


def image_stem(path) -> str:
    """A record's ``image_id``: the file name without extension and without a Cellpose ``_img``."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return stem[: -len("_img")] if stem.endswith("_img") else stem


def is_image_file(path) -> bool:
    """An image file by its name (not hidden, an image suffix, not a mask/flow beside the images)."""
    name = os.path.basename(os.fspath(path))
    stem, ext = os.path.splitext(name)
    return ext.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and not stem.lower().endswith(NON_IMAGE_SUFFIXES)


def list_image_files(folder, cellpose_first: bool = False) -> list:
    """Sorted paths of the image files of ``folder`` (not recursive). With ``cellpose_first`` only
    the ``<stem>_img.<ext>`` files when the folder has any (Cellpose layout)."""
    folder = os.fspath(folder)
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))
             if is_image_file(n) and os.path.isfile(os.path.join(folder, n))]
    if cellpose_first:
        cellpose = [f for f in files if os.path.splitext(os.path.basename(f))[0].endswith("_img")]
        files = cellpose or files
    return files


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------
def make_record(file_name: str, height: int, width: int, image_id: str, annotations: list) -> dict:
    return {"file_name": file_name, "height": int(height), "width": int(width),
            "image_id": str(image_id), "annotations": annotations}


def check_unique_ids(records: Sequence[dict], where: str) -> None:
    seen: dict = {}
    for r in records:
        other = seen.setdefault(r["image_id"], r["file_name"])
        if other != r["file_name"]:
            raise ValueError(
                f"{where}: two images share the image_id (stem) {r['image_id']!r}: {other} and "
                f"{r['file_name']}. Rename one of them; image ids must be unique within a data set."
            )



# ---------------------------------------------------------------------------------------------
# COCO json in
# ---------------------------------------------------------------------------------------------
def read_coco_json(path) -> dict:
    """The dict of a COCO detection json, checked: a file, valid json, an ``images`` list whose
    entries have ``id`` and ``file_name``. Errors name the file and the fix."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Label file {path} does not exist. {GET_DATA_HELP}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"Label file {path} is not valid json ({e}). Write it again.") from None
    if isinstance(data, list):
        raise ValueError(
            f"Label file {path} is a bare list of COCO results (no 'images'): its image ids cannot be "
            "matched to files. Use a COCO json with an 'images' list (e.g. tools/predict.py's detections.json)."
        )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"Label file {path} has no 'images' list; expected a COCO detection json.")
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"Label file {path}: image entry {img!r} lacks 'id' or 'file_name'.")
    return data


def load_coco_boxes(json_path, image_root=None) -> list:
    """Dataset dicts of a COCO json (``bbox = [x, y, w, h]``); every category becomes ``cell``.

    A relative ``file_name`` is resolved against ``image_root`` (default: the json's folder).
    An annotation's ``"score"`` (pseudo-labels) and ``"celllab_class"`` are kept. Image sizes
    are read from the image headers; a json size that disagrees is an error.
    """
    BoxMode = _box_mode()
    json_path = os.path.abspath(os.fspath(json_path))
    data = read_coco_json(json_path)
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else os.path.dirname(json_path)

    records, by_id = [], {}
    for img in data["images"]:
        file_name = os.path.join(root, img["file_name"]) if not os.path.isabs(img["file_name"]) else img["file_name"]
        file_name = os.path.normpath(file_name)
        height, width = read_image_size(file_name)
        jh, jw = img.get("height"), img.get("width")
        if (jh is not None and int(jh) != height) or (jw is not None and int(jw) != width):
            raise ValueError(
                f"COCO json {json_path} says image {file_name} is {jw}x{jh} (WxH) but the file is "
                f"{width}x{height}: the boxes would be in the wrong frame. Fix the json or the image."
            )
        rec = make_record(file_name, height, width, image_stem(file_name), [])
        if img["id"] in by_id:
            raise ValueError(f"COCO json {json_path}: image id {img['id']!r} appears twice.")
        by_id[img["id"]] = rec
        records.append(rec)

    unknown = 0
    for ann in data.get("annotations", []) or []:
        rec = by_id.get(ann.get("image_id"))
        if rec is None:
            unknown += 1
            continue
        new = {"bbox": ann.get("bbox"), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        if "score" in ann:
            new["score"] = float(ann["score"])
        if "celllab_class" in ann:
            new["celllab_class"] = ann["celllab_class"]
        if ann.get("iscrowd"):
            new["iscrowd"] = 1
        rec["annotations"].append(new)
    if unknown:
        logger.warning(f"COCO json {json_path}: skipped {unknown} annotations whose image_id is not in 'images'.")
    for rec in records:
        sanitize_boxes(rec, source=f"{json_path} [{os.path.basename(rec['file_name'])}]")
    check_unique_ids(records, json_path)
    return records


def read_label_json(path) -> dict:
    """COCO json (weak labels, a pseudo-label snapshot) -> image key -> (Nx4 XYXY, scores).

    Every image of the json is present, with empty arrays when it has no box; boxes without a
    ``score`` get 1. Crowd regions (``"iscrowd": 1``) are not labels and are left out."""
    data = read_coco_json(path)
    by_id = {im["id"]: image_key(im["file_name"]) for im in data["images"]}
    boxes = {k: [] for k in by_id.values()}
    scores = {k: [] for k in by_id.values()}
    for ann in data.get("annotations") or []:
        if ann.get("iscrowd"):
            continue
        key = by_id[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        boxes[key].append([x, y, x + w, y + h])
        scores[key].append(float(ann.get("score", 1.0)))
    return {k: (np.asarray(boxes[k], np.float32).reshape(-1, 4), np.asarray(scores[k], np.float32)) for k in boxes}


# ---------------------------------------------------------------------------------------------
# COCO json out
# ---------------------------------------------------------------------------------------------
def records_with_boxes(records: Sequence[dict], labels: Mapping[str, object], crowd: Mapping[str, object] = None) -> list:
    """Copies of ``records`` (image fields only) with the boxes of ``labels`` (image key -> Nx4 XYXY)
    as their annotations, in the records' order; an image that ``labels`` lacks is left out. The
    boxes of ``crowd`` (same form) follow as crowd regions (``"iscrowd": 1``)."""
    BoxMode = _box_mode()
    out = []
    for r in records:
        boxes = labels.get(image_key(r))
        if boxes is None:
            continue
        anns = [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]
        anns += [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1}
                 for b in (crowd or {}).get(image_key(r), ())]
        out.append({"file_name": r["file_name"], "height": r["height"], "width": r["width"],
                    "image_id": r["image_id"], "annotations": anns})
    return out


def records_to_coco(records: Sequence[dict], categories: Sequence[str] = ("cell",), image_root=None) -> dict:
    """COCO detection dict (images / annotations / categories) of dataset dicts.

    Image ids are 1..N in record order, category ids ``category_id + 1``; ``file_name`` is
    written as in the record, or relative to ``image_root`` if given. An annotation's
    ``score`` (and ``celllab_class``) is kept.
    """
    BoxMode = _box_mode()
    images, annotations = [], []
    ann_id = 1
    for img_id, rec in enumerate(records, start=1):
        file_name = rec["file_name"]
        if image_root is not None:
            file_name = os.path.relpath(file_name, os.fspath(image_root))
        images.append({"id": img_id, "file_name": file_name, "height": int(rec["height"]),
                       "width": int(rec["width"])})
        for a in rec.get("annotations", []):
            mode = a.get("bbox_mode", BoxMode.XYXY_ABS)
            x0, y0, x1, y1 = BoxMode.convert([float(v) for v in a["bbox"]], mode, BoxMode.XYXY_ABS)
            w, h = x1 - x0, y1 - y0
            entry = {"id": ann_id, "image_id": img_id, "category_id": int(a.get("category_id", 0)) + 1,
                     "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(a.get("iscrowd", 0))}
            if "score" in a:
                entry["score"] = float(a["score"])
            if "celllab_class" in a:
                entry["celllab_class"] = a["celllab_class"]
            annotations.append(entry)
            ann_id += 1
    return {
        "info": {"description": "written by sissi_d2.data.label_files.records_to_coco"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
    }


def save_records_as_coco(records: Sequence[dict], path, categories: Sequence[str] = ("cell",),
                         image_root=None) -> str:
    """Write :func:`records_to_coco` atomically to ``path``; returns the path."""
    path = os.path.abspath(os.fspath(path))
    atomic_write_json(path, records_to_coco(records, categories, image_root=image_root))
    return path


def detections_to_coco(images: Iterable[dict], info: dict | None = None) -> dict:
    """COCO detection dict of detections: ``images`` yields dicts with ``file_name`` (written as
    given), ``height``, ``width``, ``boxes`` (Nx4 XYXY), ``scores`` (N,) and any extra image
    fields. Boxes are rounded to 0.01 px and scores to 1e-5, one category ``cell``."""
    out_images, annotations = [], []
    for img_id, entry in enumerate(images, start=1):
        extra = {k: v for k, v in entry.items() if k not in ("file_name", "height", "width", "boxes", "scores")}
        out_images.append({"id": img_id, "file_name": entry["file_name"], "height": int(entry["height"]),
                           "width": int(entry["width"]), **extra})
        boxes = np.asarray(entry["boxes"], np.float64).reshape(-1, 4).tolist()
        for (x0, y0, x1, y1), s in zip(boxes, np.asarray(entry["scores"], np.float64).reshape(-1).tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": 1,
                                "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0, "score": round(s, 5)})
    return {"info": dict(info or {}), "images": out_images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cell"}]}


def write_coco_json(path, coco: dict, indent: int | None = 1) -> str:
    """Write a COCO dict atomically (a killed run never leaves half a label file); returns the path."""
    path = os.path.abspath(os.fspath(path))
    atomic_write_json(path, coco, indent=indent)
    return path


# ---------------------------------------------------------------------------------------------
# point annotations (data.points imports this module, so it is imported when called)
# ---------------------------------------------------------------------------------------------
def read_point_file(path):
    """The clicks of a point file (CSV, Label Studio, CVAT xml, COCO keypoints): a
    :class:`~sissi_d2.data.points.PointFile`. Errors name the file and line."""
    from .points import read_point_file as read

    return read(path)


def load_point_boxes(path, image_root=None, **options) -> list:
    """Dataset dicts of a point file, one box per click (``data.points.load_point_boxes``:
    ``size_from``, ``cell_size``, ``class_sizes``, ``pipeline``, ``merge_distance``, ...)."""
    from .points import load_point_boxes as load

    return load(path, image_root, **options)
