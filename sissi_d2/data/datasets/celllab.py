"""The paper's CellLab text labels: one ``<stem>.txt`` per image, one box per line
``<alive|inhib|dead> x1 y1 x2 y2`` (pixels)."""
from __future__ import annotations

import logging
import os
import re

from ..boxes import sanitize_boxes
from ..image_io import read_image_size
from ..label_files import image_stem, list_image_files, make_record
from ..paths import require_dir

__all__ = ["load_celllab_folder", "CELLLAB_CLASSES"]

logger = logging.getLogger(__name__)

CELLLAB_CLASSES = ("alive", "inhib", "dead")


def _box_mode():
    from detectron2.structures import BoxMode

    return BoxMode


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
    image_dir = require_dir(image_dir, "CellLab image folder")
    label_dir = require_dir(label_dir, "CellLab label folder") if label_dir is not None else image_dir
    images = {}
    for path in list_image_files(image_dir):
        base = image_stem(path)
        if base in images:
            raise ValueError(
                f"{image_dir}: two images share the stem {base!r}: {images[base]} and {path}. Rename one of them."
            )
        images[base] = path
    txts = {os.path.splitext(n)[0]: os.path.join(label_dir, n) for n in sorted(os.listdir(label_dir))
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
        records.append(sanitize_boxes(make_record(path, height, width, base, anns), source=txt or path))
    if unlabelled:
        logger.warning(f"{label_dir}: {unlabelled} of {len(images)} images have no .txt label file; "
                       "they are kept with no boxes.")
    return records
