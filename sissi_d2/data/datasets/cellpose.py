"""Cellpose-style folders: ``<stem>_img.<ext>`` + ``<stem>_masks.png`` (instance label image) per
image; the boxes are the extents of the labels (:func:`boxes_from_label_image`). Conversions are
cached as json (see :func:`cache_dir`) and reused while the files are unchanged."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Iterable

from ...utils.atomic import atomic_write_json
from ..boxes import DEFAULT_MIN_AREA, DEFAULT_SPECK_FRACTION, boxes_from_label_image, sanitize_boxes
from ..image_io import read_image_size, read_label_image
from ..label_files import check_unique_ids, image_stem, list_image_files, make_record
from ..paths import cache_dir, require_dir

__all__ = ["load_cellpose_folder", "MASK_EXTENSIONS"]

logger = logging.getLogger(__name__)

MASK_EXTENSIONS = (".png", ".tif", ".tiff")
_CACHE_VERSION = 1


def _box_mode():
    from detectron2.structures import BoxMode

    return BoxMode


def _find_cellpose_pairs(folder: str, mask_dir: str) -> list:
    mask_names = set(os.listdir(mask_dir))
    pairs = []
    for image_path in list_image_files(folder):
        if not os.path.splitext(os.path.basename(image_path))[0].endswith("_img"):
            continue
        base = image_stem(image_path)
        mask = next((base + "_masks" + e for e in MASK_EXTENSIONS if base + "_masks" + e in mask_names), None)
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
    return sanitize_boxes(make_record(image_path, height, width, base, anns), source=mask_path)


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
    folder = require_dir(folder, "Cellpose image folder")
    mask_dir = require_dir(mask_dir, "Mask folder") if mask_dir is not None else folder
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
    check_unique_ids(records, folder)
    if use_cache:
        _write_cache(cache_file, key, fingerprint, records)
    return records
