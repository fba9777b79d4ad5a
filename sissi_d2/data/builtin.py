"""Named data sets: the shared real data (``../shared/data``) and the synthetic set.

``register_shared_datasets()`` registers what exists of::

    dsb2018_fluor_train / dsb2018_fluor_val    source domain, boxes from masks (cellpose)
    usiigaci_train_images                      target training images, no labels (images)
    usiigaci_train_oracle                      the same images + their TRUE masks (cellpose);
                                               ONLY for the fully supervised upper-bound row
    usiigaci_test                              target test set (cellpose)
    usiigaci_train_weak                        weak labels <cache>/usiigaci_train_weak.json (coco),
                                               once a weak-label pipeline has written it

``register_synthetic_datasets(root)`` the same roles for a set written by
``python -m sissi_d2.data.synthetic --root ROOT``::

    synth_source_train, synth_source_val, synth_target_train_images,
    synth_target_train_oracle, synth_target_test, synth_target_train_weak
    (<root>/target_train_weak.json, when it exists)

Both are safe to call repeatedly (re-registration with the same paths is a no-op).
"""
from __future__ import annotations

import logging
import os

from .datasets import register_sissi_dataset
from .paths import GET_DATA_HELP, cache_dir, shared_data_root

__all__ = [
    "register_shared_datasets",
    "register_synthetic_datasets",
    "SHARED_DATASETS",
    "SYNTHETIC_DATASETS",
    "USIIGACI_WEAK_JSON",
    "SYNTH_WEAK_JSON",
]

logger = logging.getLogger(__name__)

# name -> (kind, path relative to the root, loader options with paths relative to the root)
SHARED_DATASETS = {
    "dsb2018_fluor_train": ("cellpose", "dsb2018_fluor/train", {}),
    "dsb2018_fluor_val": ("cellpose", "dsb2018_fluor/val", {}),
    "usiigaci_train_images": ("images", "usiigaci_phase/train", {}),
    "usiigaci_train_oracle": ("cellpose", "usiigaci_phase/train", {"mask_dir": "usiigaci_phase/train_oracle_masks"}),
    "usiigaci_test": ("cellpose", "usiigaci_phase/test", {}),
}
#: file name of the Usiigaci weak labels inside the cache dir
USIIGACI_WEAK_JSON = "usiigaci_train_weak.json"

SYNTHETIC_DATASETS = {
    "synth_source_train": ("cellpose", "source/train", {}),
    "synth_source_val": ("cellpose", "source/val", {}),
    "synth_target_train_images": ("images", "target/train", {}),
    "synth_target_train_oracle": ("cellpose", "target/train", {"mask_dir": "target/train_oracle_masks"}),
    "synth_target_test": ("cellpose", "target/test", {}),
}
#: file name of the synthetic target's weak labels inside the synthetic root
SYNTH_WEAK_JSON = "target_train_weak.json"


def _register_table(root: str, table: dict) -> list:
    names = []
    for name, (kind, rel, options) in table.items():
        path = os.path.join(root, rel)
        opts = {k: os.path.join(root, v) for k, v in options.items()}
        if not os.path.isdir(path) or not all(os.path.isdir(p) for p in opts.values()):
            logger.info(f"Not registering {name}: {path} {' + '.join(opts.values())} not found.")
            continue
        register_sissi_dataset(name, kind, path, **opts)
        names.append(name)
    return names


def register_shared_datasets(root=None) -> list:
    """Register the shared real data sets whose folders exist; returns their names.

    ``root`` defaults to :func:`~sissi_d2.data.datasets.shared_data_root` (env
    ``SISSI_SHARED_DATA`` or ``<repo>/../shared/data``). An absent root registers nothing.
    """
    root = os.path.abspath(os.fspath(root)) if root is not None else shared_data_root()
    if not os.path.isdir(root):
        logger.info(f"Shared data root {root} not found: no shared data sets registered. {GET_DATA_HELP}")
        return []
    names = _register_table(root, SHARED_DATASETS)
    weak = os.path.join(cache_dir(), USIIGACI_WEAK_JSON)
    images = os.path.join(root, SHARED_DATASETS["usiigaci_train_images"][1])
    if os.path.isfile(weak) and os.path.isdir(images):
        names.append(register_sissi_dataset("usiigaci_train_weak", "coco", weak, image_root=images))
    return names


def register_synthetic_datasets(root) -> list:
    """Register the synthetic set written by :func:`sissi_d2.data.synthetic.write_synthetic_dataset`
    at ``root``; returns the names registered."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Synthetic data root {root} does not exist. Write it with "
            f"`python -m sissi_d2.data.synthetic --root {root}`."
        )
    names = _register_table(root, SYNTHETIC_DATASETS)
    weak = os.path.join(root, SYNTH_WEAK_JSON)
    images = os.path.join(root, SYNTHETIC_DATASETS["synth_target_train_images"][1])
    if os.path.isfile(weak) and os.path.isdir(images):
        names.append(register_sissi_dataset("synth_target_train_weak", "coco", weak, image_root=images))
    if not names:
        logger.warning(f"{root} holds none of the synthetic layout folders (source/train, target/test, ...).")
    return names
