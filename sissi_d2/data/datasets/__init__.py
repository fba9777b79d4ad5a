"""Cell detection data sets as Detectron2 dataset dicts, and their registration.

Every loader returns a list of dataset dicts in one form::

    {"file_name": <absolute path>, "height": H, "width": W, "image_id": <stem>,
     "annotations": [{"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
                      "category_id": 0, ...}]}

with one class, ``"cell"``. Images without labels have ``"annotations": []``.

Layouts read here (details and examples in ``datasets/README.md``):

* ``cellpose``: ``<stem>_img.png`` + ``<stem>_masks.png`` (instance label image) per image; the
  boxes are the extents of the labels (rule in ``data.boxes.boxes_from_label_image``). Conversions are
  cached as json (see :func:`cache_dir`) and reused while the files are unchanged.
* ``coco``: a COCO json with ``bbox = [x, y, w, h]``; an optional ``"score"`` is kept.
* ``celllab``: the paper's CellLab text format, one ``.txt`` per image, one box per line:
  ``<alive|inhib|dead> x1 y1 x2 y2``.
* ``images``: images only, no labels (weakly labelled target images before labelling).

Every loader passes each record through :func:`sanitize_boxes` (boxes clipped to the image,
inverted corners swapped, NaN / zero-area / outside boxes dropped, one warning per file saying
what was fixed), and reads image sizes from the file header only (no decoding).
"""
from ..boxes import DEFAULT_MIN_AREA, DEFAULT_SPECK_FRACTION, boxes_from_label_image, sanitize_boxes
from ..image_io import read_image_size
from ..label_files import IMAGE_EXTENSIONS, load_coco_boxes, records_to_coco, save_records_as_coco
from ..paths import GET_DATA_HELP, cache_dir, shared_data_root
from .celllab import CELLLAB_CLASSES, load_celllab_folder
from .cellpose import load_cellpose_folder
from .image_folder import load_image_folder
from .registry import (DATASET_KINDS, register_sissi_dataset, register_sissi_datasets, registered_sissi_datasets,
                       unregister_sissi_dataset)

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_MIN_AREA",
    "DEFAULT_SPECK_FRACTION",
    "IMAGE_EXTENSIONS",
    "GET_DATA_HELP",
    "shared_data_root",
    "cache_dir",
    "read_image_size",
    "boxes_from_label_image",
    "sanitize_boxes",
    "load_cellpose_folder",
    "load_coco_boxes",
    "load_celllab_folder",
    "load_image_folder",
    "register_sissi_datasets",
    "registered_sissi_datasets",
    "records_to_coco",
    "save_records_as_coco",
    "register_sissi_dataset",
    "unregister_sissi_dataset",
    "CELLLAB_CLASSES",
]
