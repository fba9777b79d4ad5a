"""Cell detection data sets as Detectron2 dataset dicts, and their registration.

Every loader returns a list of dataset dicts in one form::

    {"file_name": <absolute path>, "height": H, "width": W, "image_id": <stem>,
     "annotations": [{"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
                      "category_id": 0, ...}]}

with one class, ``"cell"``. Images without labels have ``"annotations": []``.

Layouts read here (details and examples in ``datasets/README.md``):

* ``cellpose``: ``<stem>_img.png`` + ``<stem>_masks.png`` (instance label image) per image; the
  boxes are the extents of the labels (rule in :func:`boxes_from_label_image`). Conversions are
  cached as json (see :func:`cache_dir`) and reused while the files are unchanged.
* ``coco``: a COCO json with ``bbox = [x, y, w, h]``; an optional ``"score"`` is kept.
* ``celllab``: the paper's CellLab text format, one ``.txt`` per image, one box per line:
  ``<alive|inhib|dead> x1 y1 x2 y2``.
* ``images``: images only, no labels (weakly labelled target images before labelling).

Every loader passes each record through :func:`sanitize_boxes` (boxes clipped to the image,
inverted corners swapped, NaN / zero-area / outside boxes dropped, one warning per file saying
what was fixed), and reads image sizes from the file header only (no decoding).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..utils.atomic import atomic_write_json
from .image_io import ImageReadError, read_label_image

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_MIN_AREA",
    "DEFAULT_SPECK_FRACTION",
    "IMAGE_EXTENSIONS",
    "shared_data_root",
    "cache_dir",
    "read_image_size",
    "boxes_from_label_image",
    "sanitize_boxes",
    "load_cellpose_folder",
    "load_coco_boxes",
    "load_celllab_folder",
    "load_image_folder",
    "records_to_coco",
    "save_records_as_coco",
    "register_sissi_dataset",
    "unregister_sissi_dataset",
    "CELLLAB_CLASSES",
]

logger = logging.getLogger(__name__)

#: Labels (after speck removal) smaller than this many pixels are dropped.
DEFAULT_MIN_AREA = 10
#: A connected part of a label smaller than this fraction of the label's largest part is a speck.
DEFAULT_SPECK_FRACTION = 0.1
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_EXTENSIONS = (".png", ".tif", ".tiff")
CELLLAB_CLASSES = ("alive", "inhib", "dead")
_CACHE_VERSION = 1
# files in a Cellpose folder that are not images of cells
_NON_IMAGE_SUFFIXES = ("_masks", "_flows", "_seg", "_outlines", "_cp_masks", "_cp_output")

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_GET_DATA_HELP = (
    "Get the data first: the shared benchmark data lives in <repo>/../shared/data (or set "
    "SISSI_SHARED_DATA); the Cellpose data set is downloaded from https://www.cellpose.org/dataset "
    "and unzipped; a synthetic set is written by `python -m sissi_d2.data.synthetic --root DIR`. "
    "See datasets/README.md."
)


def _box_mode():
    from detectron2.structures import BoxMode

    return BoxMode


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def shared_data_root() -> str:
    """Root of the shared real data: env ``SISSI_SHARED_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("SISSI_SHARED_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.normpath(os.path.join(_REPO_ROOT, "..", "shared", "data"))


def cache_dir() -> str:
    """Cache of converted data and generated labels: env ``SISSI_CACHE_DIR``, else
    ``<repo root>/datasets/generated`` (git-ignored)."""
    env = os.environ.get("SISSI_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(_REPO_ROOT, "datasets", "generated")


def _require_dir(path, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path} does not exist or is not a folder. {_GET_DATA_HELP}")
    return path


# ---------------------------------------------------------------------------------------------
# image headers
# ---------------------------------------------------------------------------------------------
def _tail_is_complete(path: str, fmt: str | None) -> bool:
    """Cheap truncation check for the formats that have an end marker (PNG IEND, JPEG EOI)."""
    if fmt not in ("PNG", "JPEG"):
        return True
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 64))
        tail = f.read()
    return (b"IEND" in tail) if fmt == "PNG" else (b"\xff\xd9" in tail)


def read_image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels.

    Raises ImageReadError naming the file when it is missing, empty, not an image, or a PNG /
    JPEG whose end is missing (truncated download or copy).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(
            f"Image file not found: {path}. Check the dataset folder or the file_name in the labels."
        )
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt = im.format
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"Image {path} is larger than Pillow's safety limit ({e}). Tile it into smaller images "
            "first; whole-slide images do not fit a detector's input anyway."
        ) from e
    except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, OSError, ...
        raise ImageReadError(
            f"Cannot read the header of image {path} ({os.path.getsize(path)} bytes; "
            f"{type(e).__name__}: {e}): the file is empty, truncated or not an image. Replace it "
            "or remove it from the dataset."
        ) from e
    if not _tail_is_complete(path, fmt):
        raise ImageReadError(
            f"Image {path} is truncated (its {fmt} end marker is missing). Copy or download it "
            "again, or remove it from the dataset."
        )
    if width <= 0 or height <= 0:
        raise ImageReadError(f"Image {path} has an empty size {width}x{height}. Replace or remove it.")
    return int(height), int(width)


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _split_ext(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    return stem, ext.lower()


# ---------------------------------------------------------------------------------------------
# boxes from instance label images
# ---------------------------------------------------------------------------------------------
def boxes_from_label_image(
    labels: np.ndarray,
    min_area: int = DEFAULT_MIN_AREA,
    speck_fraction: float = DEFAULT_SPECK_FRACTION,
    return_ids: bool = False,
):
    """XYXY boxes (Nx4 float32, pixel edges: ``x1 = last column + 1``) of an instance label image.

    The rule, per label id (0 = background; ids need not be contiguous):

    1. The pixels of the id are split into connected parts (8-connectivity, so a diagonal
       one-pixel bridge keeps a thin process attached).
    2. **Specks**: a part smaller than ``speck_fraction`` (default 0.1) times the id's largest
       part is ignored. Annotation tools leave such stray pixels far from the cell, and one of
       them would stretch the box over empty background.
    3. **Split labels**: the remaining parts (the largest and every part at least
       ``speck_fraction`` of it) are all kept and the box is the extent of their union. In real
       data such an id is one cell whose thin connecting process was not painted, so its box
       must cover both blobs; we cannot tell it from two cells given one id by mistake.
    4. An id whose kept area is below ``min_area`` pixels (default 10) is dropped: one or a few
       pixels are paint slips, not cells.

    Boxes are returned in increasing id order; with ``return_ids`` also the ids (int64).
    """
    from skimage.measure import label as cc_label
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Expected a 2-D instance label image, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected an integer label image, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64, copy=False)
    labels = np.where(labels > 0, labels, 0)
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    if not labels.any():
        return empty if return_ids else empty[0]

    # connected parts of equal value over the whole image at once
    parts = cc_label(labels, background=0, connectivity=2)
    n_parts = int(parts.max())
    flat_parts = parts.ravel()
    part_area = np.bincount(flat_parts, minlength=n_parts + 1)
    part_id = np.zeros(n_parts + 1, np.int64)
    part_id[flat_parts] = labels.ravel()  # every pixel of a part carries the same id
    slices = ndi.find_objects(parts)

    # largest part area of every id
    ids = part_id[1:]
    areas = part_area[1:]
    order = np.argsort(ids, kind="stable")
    ids_sorted, areas_sorted = ids[order], areas[order]
    uniq, start = np.unique(ids_sorted, return_index=True)
    largest = np.maximum.reduceat(areas_sorted, start)
    largest_of = dict(zip(uniq.tolist(), largest.tolist()))

    box = {}
    kept_area: Counter = Counter()
    for p in range(1, n_parts + 1):
        lid = int(part_id[p])
        a = int(part_area[p])
        if a < speck_fraction * largest_of[lid]:
            continue  # a speck
        sy, sx = slices[p - 1]
        b = (sx.start, sy.start, sx.stop, sy.stop)
        if lid in box:
            o = box[lid]
            b = (min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3]))
        box[lid] = b
        kept_area[lid] += a
    out_ids = [i for i in sorted(box) if kept_area[i] >= min_area]
    if not out_ids:
        return empty if return_ids else empty[0]
    boxes = np.asarray([box[i] for i in out_ids], dtype=np.float32).reshape(-1, 4)
    if return_ids:
        return boxes, np.asarray(out_ids, dtype=np.int64)
    return boxes


# ---------------------------------------------------------------------------------------------
# sanitising
# ---------------------------------------------------------------------------------------------
def sanitize_boxes(record: dict, source: str | None = None) -> dict:
    """Repair the boxes of one dataset dict in place (and return it), logging one warning.

    Converts every box to ``XYXY_ABS``; swaps inverted corners (x0 > x1 or y0 > y1); clips to
    ``[0, width] x [0, height]``; drops boxes that are malformed, contain NaN/inf, lie fully
    outside the image or have zero width or height after clipping. When anything was fixed, ONE
    warning names the file (``source`` if given, else the image) and counts each fix.
    """
    BoxMode = _box_mode()
    height, width = float(record["height"]), float(record["width"])
    counts: Counter = Counter()
    kept = []
    anns = record.get("annotations") or []
    for ann in anns:
        mode = ann.get("bbox_mode", BoxMode.XYXY_ABS)
        try:
            arr = np.asarray(ann["bbox"], dtype=np.float64).reshape(4)
            if int(mode) != int(BoxMode.XYXY_ABS):
                if int(mode) != int(BoxMode.XYWH_ABS):
                    raise ValueError(f"unsupported bbox_mode {mode!r}")
                arr = np.array([arr[0], arr[1], arr[0] + arr[2], arr[1] + arr[3]])
        except (KeyError, TypeError, ValueError):
            counts["malformed"] += 1
            continue
        if not np.all(np.isfinite(arr)):
            counts["non_finite"] += 1
            continue
        x0, y0, x1, y1 = arr.tolist()
        if x0 > x1 or y0 > y1:
            counts["inverted"] += 1
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            if x0 == x1 or y0 == y1:
                counts["zero_area"] += 1
            else:
                counts["outside"] += 1
            continue
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, width), min(y1, height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            counts["zero_area"] += 1
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            counts["clipped"] += 1
        new = dict(ann)
        new["bbox"] = [float(cx0), float(cy0), float(cx1), float(cy1)]
        new["bbox_mode"] = BoxMode.XYXY_ABS
        new["category_id"] = int(ann.get("category_id", 0))
        kept.append(new)
    record["annotations"] = kept
    if counts:
        fixes = []
        if counts["clipped"]:
            fixes.append(f"{counts['clipped']} clipped to the {int(width)}x{int(height)} image")
        if counts["inverted"]:
            fixes.append(f"{counts['inverted']} with inverted corners swapped")
        dropped = []
        for key, text in (("non_finite", "NaN/inf"), ("zero_area", "zero-area"),
                          ("outside", "fully outside the image"), ("malformed", "malformed")):
            if counts[key]:
                dropped.append(f"{counts[key]} {text}")
        msg = f"{source or record.get('file_name')}: repaired boxes"
        if fixes:
            msg += ": " + ", ".join(fixes)
        if dropped:
            msg += "; dropped " + ", ".join(dropped)
        msg += f" (kept {len(kept)} of {len(anns)})."
        logger.warning(msg)
    return record


def _record(file_name: str, height: int, width: int, image_id: str, annotations: list) -> dict:
    return {"file_name": file_name, "height": int(height), "width": int(width),
            "image_id": str(image_id), "annotations": annotations}


def _check_unique_ids(records: Sequence[dict], where: str) -> None:
    seen: dict = {}
    for r in records:
        other = seen.setdefault(r["image_id"], r["file_name"])
        if other != r["file_name"]:
            raise ValueError(
                f"{where}: two images share the image_id (stem) {r['image_id']!r}: {other} and "
                f"{r['file_name']}. Rename one of them; image ids must be unique within a data set."
            )


# ---------------------------------------------------------------------------------------------
# Cellpose folders (images + instance masks), with a conversion cache
# ---------------------------------------------------------------------------------------------
def _find_cellpose_pairs(folder: str, mask_dir: str) -> list:
    names = sorted(os.listdir(folder))
    mask_names = set(os.listdir(mask_dir)) if mask_dir != folder else set(names)
    pairs = []
    for name in names:
        stem, ext = _split_ext(name)
        if ext not in IMAGE_EXTENSIONS or not stem.endswith("_img") or name.startswith("."):
            continue
        base = stem[: -len("_img")]
        mask = next((base + "_masks" + e for e in MASK_EXTENSIONS if base + "_masks" + e in mask_names), None)
        image_path = os.path.join(folder, name)
        if mask is None:
            raise FileNotFoundError(
                f"Missing mask for image {image_path}: expected {os.path.join(mask_dir, base + '_masks.png')} "
                "(a Cellpose folder needs one <stem>_masks.png instance label image per <stem>_img.png). "
                "Add the mask, remove the image, or register the folder with kind 'images' if it has no labels."
            )
        pairs.append((base, image_path, os.path.join(mask_dir, mask)))
    return pairs


def _fingerprint(paths: Iterable[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.basename(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_path(kind: str, key: dict) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return os.path.join(cache_dir(), "conversions", f"{kind}_{digest}.json")


def _read_cache(path: str, key: dict, fingerprint: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning(f"Ignoring unreadable conversion cache {path} ({e}); converting again.")
        return None
    if data.get("version") != _CACHE_VERSION or data.get("key") != key or data.get("fingerprint") != fingerprint:
        return None
    BoxMode = _box_mode()
    records = data.get("records")
    if not isinstance(records, list):
        return None
    for r in records:
        for a in r["annotations"]:
            a["bbox_mode"] = BoxMode(a["bbox_mode"])
    return records


def _write_cache(path: str, key: dict, fingerprint: str, records: list) -> None:
    data = {"version": _CACHE_VERSION, "key": key, "fingerprint": fingerprint, "records": [
        {**r, "annotations": [{**a, "bbox_mode": int(a["bbox_mode"])} for a in r["annotations"]]}
        for r in records
    ]}
    try:
        atomic_write_json(path, data, indent=None)
    except OSError as e:
        logger.warning(f"Could not write the conversion cache {path} ({e}); the next load converts again.")


def _convert_cellpose_pair(base: str, image_path: str, mask_path: str, min_area: int,
                           speck_fraction: float) -> dict:
    BoxMode = _box_mode()
    height, width = read_image_size(image_path)
    labels = read_label_image(mask_path)
    if labels.shape != (height, width):
        raise ValueError(
            f"Mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
            f"{image_path} is {width}x{height}: the mask does not belong to this image or one was "
            "resized. Fix or remove the pair."
        )
    boxes = boxes_from_label_image(labels, min_area=min_area, speck_fraction=speck_fraction)
    anns = [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]
    return sanitize_boxes(_record(image_path, height, width, base, anns), source=mask_path)


def load_cellpose_folder(
    folder,
    mask_dir=None,
    min_area: int = DEFAULT_MIN_AREA,
    speck_fraction: float = DEFAULT_SPECK_FRACTION,
    use_cache: bool = True,
) -> list:
    """Dataset dicts of a Cellpose-style folder: ``<stem>_img.<ext>`` + ``<stem>_masks.png``.

    Args:
        folder: folder of the images.
        mask_dir: folder of the masks if not ``folder`` (e.g. held-out oracle masks).
        min_area, speck_fraction: the box-from-mask rule of :func:`boxes_from_label_image`.
        use_cache: reuse / write the json conversion cache in :func:`cache_dir`, keyed by the
            folders, the rule parameters and every file's size and modification time.
    """
    folder = _require_dir(folder, "Cellpose image folder")
    mask_dir = _require_dir(mask_dir, "Mask folder") if mask_dir is not None else folder
    pairs = _find_cellpose_pairs(folder, mask_dir)
    if not pairs:
        raise FileNotFoundError(
            f"No '<stem>_img.png' images in {folder}. A Cellpose folder holds <stem>_img.png + "
            "<stem>_masks.png pairs; register plain image folders with kind 'images'."
        )
    key = {"folder": folder, "mask_dir": mask_dir, "min_area": min_area,
           "speck_fraction": float(speck_fraction)}
    cache_file = fingerprint = None
    if use_cache:
        cache_file = _cache_path("cellpose", key)
        fingerprint = _fingerprint(p for _, img, msk in pairs for p in (img, msk))
        cached = _read_cache(cache_file, key, fingerprint)
        if cached is not None:
            logger.debug(f"Loaded {len(cached)} images of {folder} from the cache {cache_file}")
            return cached
    records = [_convert_cellpose_pair(b, i, m, min_area, speck_fraction) for b, i, m in pairs]
    _check_unique_ids(records, folder)
    if use_cache:
        _write_cache(cache_file, key, fingerprint, records)
    return records


# ---------------------------------------------------------------------------------------------
# COCO json
# ---------------------------------------------------------------------------------------------
def load_coco_boxes(json_path, image_root=None) -> list:
    """Dataset dicts of a COCO json (``bbox = [x, y, w, h]``); every category becomes ``cell``.

    A relative ``file_name`` is resolved against ``image_root`` (default: the json's folder).
    An annotation's ``"score"`` (pseudo-labels) and ``"celllab_class"`` are kept. Image sizes
    are read from the image headers; a json size that disagrees is an error.
    """
    BoxMode = _box_mode()
    json_path = os.path.abspath(os.fspath(json_path))
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"COCO json {json_path} does not exist. {_GET_DATA_HELP}")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:
        raise ValueError(f"COCO json {json_path} is not valid json ({e}). Write it again.") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"COCO json {json_path} has no 'images' list; expected COCO detection format.")
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else os.path.dirname(json_path)

    records, by_id = [], {}
    for img in data["images"]:
        if "id" not in img or "file_name" not in img:
            raise ValueError(f"COCO json {json_path}: image entry {img!r} lacks 'id' or 'file_name'.")
        file_name = os.path.join(root, img["file_name"]) if not os.path.isabs(img["file_name"]) else img["file_name"]
        file_name = os.path.normpath(file_name)
        height, width = read_image_size(file_name)
        jh, jw = img.get("height"), img.get("width")
        if (jh is not None and int(jh) != height) or (jw is not None and int(jw) != width):
            raise ValueError(
                f"COCO json {json_path} says image {file_name} is {jw}x{jh} (WxH) but the file is "
                f"{width}x{height}: the boxes would be in the wrong frame. Fix the json or the image."
            )
        stem = _split_ext(os.path.basename(file_name))[0]
        if stem.endswith("_img"):
            stem = stem[: -len("_img")]
        rec = _record(file_name, height, width, stem, [])
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
    _check_unique_ids(records, json_path)
    return records


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
        "info": {"description": "written by sissi_d2.data.datasets.records_to_coco"},
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


# ---------------------------------------------------------------------------------------------
# CellLab text labels
# ---------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"[,\s]+")


def _parse_celllab_txt(txt_path: str) -> list:
    BoxMode = _box_mode()
    anns = []
    with open(txt_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = [t for t in _SPLIT.split(text) if t]
            cls = fields[0].lower()
            if len(fields) != 5 or cls not in CELLLAB_CLASSES:
                raise ValueError(
                    f"{txt_path}, line {lineno}: {text!r} is not '<alive|inhib|dead> x1 y1 x2 y2'. "
                    "Fix or delete the line."
                )
            try:
                coords = [float(v) for v in fields[1:]]
            except ValueError:
                raise ValueError(
                    f"{txt_path}, line {lineno}: {text!r} has a non-numeric coordinate; expected "
                    "'<alive|inhib|dead> x1 y1 x2 y2'. Fix or delete the line."
                ) from None
            anns.append({"bbox": coords, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                         "celllab_class": cls})
    return anns


def load_celllab_folder(image_dir, label_dir=None) -> list:
    """Dataset dicts of CellLab-style labels: one ``<stem>.txt`` per image in ``label_dir``
    (default ``image_dir``), one line ``<alive|inhib|dead> x1 y1 x2 y2`` (pixels) per box.

    Every class is category 0 (``cell``); the original class is kept as ``celllab_class``.
    Images are ``<stem>.<ext>`` or ``<stem>_img.<ext>``; an image without a txt has no boxes
    (one warning), a txt without an image is an error.
    """
    image_dir = _require_dir(image_dir, "CellLab image folder")
    label_dir = _require_dir(label_dir, "CellLab label folder") if label_dir is not None else image_dir
    images = {}
    for name in sorted(os.listdir(image_dir)):
        if not _is_image_file(name):
            continue
        stem = _split_ext(name)[0]
        if stem.endswith(_NON_IMAGE_SUFFIXES):
            continue
        base = stem[: -len("_img")] if stem.endswith("_img") else stem
        if base in images:
            raise ValueError(
                f"{image_dir}: two images share the stem {base!r}: {images[base]} and "
                f"{os.path.join(image_dir, name)}. Rename one of them."
            )
        images[base] = os.path.join(image_dir, name)
    txts = {_split_ext(n)[0]: os.path.join(label_dir, n) for n in sorted(os.listdir(label_dir))
            if n.lower().endswith(".txt")}
    orphans = sorted(set(txts) - set(images))
    if orphans:
        raise FileNotFoundError(
            f"CellLab label {txts[orphans[0]]} has no image {orphans[0]}.<png|jpg|tif> in {image_dir} "
            f"({len(orphans)} label files without image). Add the images or remove the label files."
        )
    if not images:
        raise FileNotFoundError(f"No images in the CellLab image folder {image_dir}.")
    records, unlabelled = [], 0
    for base, path in images.items():
        height, width = read_image_size(path)
        txt = txts.get(base)
        anns = _parse_celllab_txt(txt) if txt else []
        unlabelled += txt is None
        records.append(sanitize_boxes(_record(path, height, width, base, anns), source=txt or path))
    if unlabelled:
        logger.warning(f"{label_dir}: {unlabelled} of {len(images)} images have no .txt label file; "
                       "they are kept with no boxes.")
    return records


# ---------------------------------------------------------------------------------------------
# images only
# ---------------------------------------------------------------------------------------------
def load_image_folder(folder) -> list:
    """Dataset dicts without labels for every image in ``folder`` (``<stem>_img.<ext>`` or any
    plain image; Cellpose ``*_masks`` / ``*_flows`` files are skipped)."""
    folder = _require_dir(folder, "Image folder")
    records = []
    for name in sorted(os.listdir(folder)):
        if not _is_image_file(name):
            continue
        stem = _split_ext(name)[0]
        if stem.endswith(_NON_IMAGE_SUFFIXES):
            continue
        base = stem[: -len("_img")] if stem.endswith("_img") else stem
        path = os.path.join(folder, name)
        height, width = read_image_size(path)
        records.append(sanitize_boxes(_record(path, height, width, base, [])))
    if not records:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}.")
    _check_unique_ids(records, folder)
    return records


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
_LOADERS = {
    "cellpose": load_cellpose_folder,
    "coco": load_coco_boxes,
    "celllab": load_celllab_folder,
    "images": load_image_folder,
}
DATASET_KINDS = tuple(_LOADERS)
_PATH_KWARGS = ("mask_dir", "image_root", "label_dir")
_REGISTERED: dict = {}


def _describe(sig) -> str:
    kind, path, kwargs = sig
    extra = "".join(f", {k}={v!r}" for k, v in kwargs)
    return f"kind={kind!r}, path={path!r}{extra}"


def register_sissi_dataset(name: str, kind: str, path, **kwargs) -> str:
    """Register a lazily loaded data set in ``DatasetCatalog`` and its metadata.

    Args:
        name: catalog name.
        kind: ``"cellpose"`` (folder), ``"coco"`` (json file), ``"celllab"`` (image folder,
            ``label_dir=`` for the txt files) or ``"images"`` (folder).
        path: the folder or json.
        kwargs: passed to the loader (``mask_dir``, ``min_area``, ``speck_fraction``,
            ``use_cache`` for cellpose; ``image_root`` for coco; ``label_dir`` for celllab).

    Metadata: ``thing_classes=["cell"]``, ``evaluator_type="coco"``, ``sissi_kind``,
    ``sissi_path``, ``sissi_options`` (the kwargs) and, for kind coco, ``json_file``.
    Registering a name again with the same arguments does nothing; with other arguments it
    raises ValueError (call :func:`unregister_sissi_dataset` first).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if kind not in _LOADERS:
        raise ValueError(f"Unknown dataset kind {kind!r} for {name!r}; expected one of: {', '.join(DATASET_KINDS)}.")
    loader = _LOADERS[kind]
    params = inspect.signature(loader).parameters
    bad = [k for k in kwargs if k not in params or k == next(iter(params))]
    if bad:
        allowed = [p for p in list(params)[1:]]
        raise TypeError(f"register_sissi_dataset({name!r}, kind={kind!r}): unknown option(s) {bad}; "
                        f"the {kind} loader accepts {allowed}.")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    kwargs = {k: (os.path.abspath(os.path.expanduser(os.fspath(v))) if k in _PATH_KWARGS and v is not None else v)
              for k, v in kwargs.items()}
    for label, p in [("path", path)] + [(k, v) for k, v in kwargs.items() if k in _PATH_KWARGS and v is not None]:
        if not os.path.exists(p):
            raise FileNotFoundError(f"Dataset {name!r} (kind {kind}): {label} {p} does not exist. {_GET_DATA_HELP}")
    if kind == "coco" and not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset {name!r} (kind coco): {path} is not a json file.")
    if kind != "coco" and not os.path.isdir(path):
        raise FileNotFoundError(f"Dataset {name!r} (kind {kind}): {path} is not a folder.")

    sig = (kind, path, tuple(sorted(kwargs.items())))
    if name in DatasetCatalog.list():
        prev = _REGISTERED.get(name)
        if prev == sig:
            return name
        owner = f"with {_describe(prev)}" if prev else "by other code"
        raise ValueError(
            f"Dataset {name!r} is already registered {owner}; cannot register it again with "
            f"{_describe(sig)}. Use another name, or call unregister_sissi_dataset({name!r}) first."
        )
    DatasetCatalog.register(name, functools.partial(loader, path, **kwargs))
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    meta = {"thing_classes": ["cell"], "evaluator_type": "coco", "sissi_kind": kind,
            "sissi_path": path, "sissi_options": dict(kwargs)}
    if kind == "coco":
        meta["json_file"] = path
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[name] = sig
    return name


def unregister_sissi_dataset(name: str) -> bool:
    """Remove a data set from both catalogs (e.g. to point a name at new files). Returns whether
    it was registered."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    was = name in DatasetCatalog.list()
    if was:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    _REGISTERED.pop(name, None)
    return was
