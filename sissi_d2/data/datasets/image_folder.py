"""Folders of images without labels (weakly labelled target images before labelling)."""
from __future__ import annotations

from ..boxes import sanitize_boxes
from ..image_io import read_image_size
from ..label_files import IMAGE_EXTENSIONS, check_unique_ids, image_stem, list_image_files, make_record
from ..paths import require_dir

__all__ = ["load_image_folder"]


def load_image_folder(folder) -> list:
    """Dataset dicts without labels for every image in ``folder`` (``<stem>_img.<ext>`` or any
    plain image; Cellpose ``*_masks`` / ``*_flows`` files are skipped)."""
    folder = require_dir(folder, "Image folder")
    records = []
    for path in list_image_files(folder):
        height, width = read_image_size(path)
        records.append(sanitize_boxes(make_record(path, height, width, image_stem(path), [])))
    if not records:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}.")
    check_unique_ids(records, folder)
    return records
