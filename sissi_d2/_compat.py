"""Make Detectron2 0.6 (Python only) work on a modern stack.

Imported by ``sissi_d2/__init__.py`` before anything of detectron2 that needs it. Every patch
checks first whether the installed detectron2 / library still has the problem and does nothing
otherwise, so an official build of detectron2 (with its compiled ``_C``) is left alone.
``applied()`` lists what was patched in this process; each patch has its own test.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import types

__all__ = ["apply_all", "applied", "install_c_standin", "has_real_c_extension"]

logger = logging.getLogger(__name__)
_APPLIED: list[str] = []


def applied() -> list[str]:
    """Names of the patches applied in this process."""
    return list(_APPLIED)


def _mark(name: str) -> None:
    if name not in _APPLIED:
        _APPLIED.append(name)


# ---------------------------------------------------------------------------------------------
# 1. detectron2._C stand-in
# ---------------------------------------------------------------------------------------------
_C_NAME = "detectron2._C"


class _MissingCExtension(types.ModuleType):
    """Stand-in for the compiled ``detectron2._C``.

    ``detectron2.layers`` imports ``_C`` at module level although the axis-aligned Faster R-CNN
    path (torchvision RoIAlign and NMS) never calls it. The stand-in answers the version queries
    of ``collect_env_info`` and raises a clear error for every real operator.
    """

    is_sissi_standin = True

    def __init__(self) -> None:
        super().__init__(_C_NAME)
        # inspect/torchvision look at __file__; a path that does not exist marks it as fake.
        self.__file__ = "<sissi_d2 stand-in for detectron2._C>"

    @staticmethod
    def get_compiler_version() -> str:
        return "not built (sissi_d2 stand-in)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not built (sissi_d2 stand-in)"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        # Dunder lookups (e.g. __wrapped__ from inspect) must fail normally, or torchvision's
        # import machinery is misled into treating the module as something else.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise NotImplementedError(
            f"detectron2._C.{name} is a compiled operator, and this detectron2 was installed "
            "without its C++ extension (scripts/install.sh). Axis-aligned Faster R-CNN does not "
            "need it; rotated boxes, deformable convolution and the fast COCO evaluation do. "
            "Build detectron2 from source (github.com/facebookresearch/detectron2) to use them."
        )


def has_real_c_extension() -> bool:
    mod = sys.modules.get(_C_NAME)
    if mod is not None:
        return not getattr(mod, "is_sissi_standin", False)
    try:
        return importlib.util.find_spec(_C_NAME) is not None
    except (ImportError, ValueError):
        return False


def install_c_standin() -> bool:
    """Register the stand-in when no compiled ``detectron2._C`` exists. Returns True if it did."""
    if has_real_c_extension():
        return False
    if _C_NAME not in sys.modules:
        standin = _MissingCExtension()
        sys.modules[_C_NAME] = standin
        import detectron2

        detectron2._C = standin  # attribute access `detectron2._C` works like a submodule
        logger.debug("detectron2._C is not built: using the sissi_d2 stand-in")
    _mark("detectron2._C stand-in")
    return True


# ---------------------------------------------------------------------------------------------
# 2. Pillow >= 10 removed Image.LINEAR, a default argument in detectron2 transforms
# ---------------------------------------------------------------------------------------------
def patch_pillow_linear() -> bool:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    _mark("PIL.Image.LINEAR alias")
    return True


# ---------------------------------------------------------------------------------------------
# 3. numpy >= 1.24 removed np.int, used by print_instances_class_histogram (v0.6). Detectron2
#    swallows the AttributeError, so the class-id range check silently never runs.
# ---------------------------------------------------------------------------------------------
def _print_instances_class_histogram(dataset_dicts, class_names):
    import numpy as np
    from detectron2.utils.logger import log_first_n
    from tabulate import tabulate
    from termcolor import colored

    num_classes = len(class_names)
    hist_bins = np.arange(num_classes + 1)
    histogram = np.zeros((num_classes,), dtype=np.int64)
    for entry in dataset_dicts:
        classes = np.asarray(
            [x["category_id"] for x in entry.get("annotations", []) if not x.get("iscrowd", 0)],
            dtype=np.int64,
        )
        if len(classes):
            if classes.min() < 0 or classes.max() >= num_classes:
                raise ValueError(
                    f"Image {entry.get('file_name', '?')} has category ids in "
                    f"[{classes.min()}, {classes.max()}] but the dataset has {num_classes} "
                    "classes: fix the labels or the dataset's thing_classes."
                )
        histogram += np.histogram(classes, bins=hist_bins)[0]

    def short_name(x):
        return x[:10] + ".." if len(x) > 13 else x

    n_cols = min(6, len(class_names) * 2)
    data = [[short_name(class_names[i]), int(v)] for i, v in enumerate(histogram)]
    total = sum(row[1] for row in data)
    flat = [item for row in data for item in row]
    if num_classes > 1:
        flat.extend(["total", total])
    flat.extend([None] * (n_cols - (len(flat) % n_cols)))
    rows = [flat[i : i + n_cols] for i in range(0, len(flat), n_cols)]
    table = tabulate(
        rows, headers=["category", "#instances"] * (n_cols // 2), tablefmt="pipe",
        numalign="left", stralign="center",
    )
    log_first_n(
        logging.INFO,
        f"Distribution of instances among all {num_classes} categories:\n" + colored(table, "cyan"),
        key="message",
    )


def patch_class_histogram() -> bool:
    import numpy as np

    if hasattr(np, "int"):
        return False
    import detectron2.data.build as build

    if getattr(build.print_instances_class_histogram, "__module__", "") == __name__:
        return True
    if "np.int)" not in inspect.getsource(build.print_instances_class_histogram):
        return False  # a detectron2 that already fixed it
    build.print_instances_class_histogram = _print_instances_class_histogram
    _mark("numpy-2 class histogram")
    return True


# ---------------------------------------------------------------------------------------------
# 4. MapDataset's retry draws with random.sample(set): TypeError on Python >= 3.11
# ---------------------------------------------------------------------------------------------
def _map_dataset_getitem(self, idx):
    import random

    retry_count = 0
    cur_idx = int(idx)
    while True:
        data = self._map_func(self._dataset[cur_idx])
        if data is not None:
            self._fallback_candidates.add(cur_idx)
            return data
        # The mapper rejected this sample: try another one that worked before.
        retry_count += 1
        self._fallback_candidates.discard(cur_idx)
        if not self._fallback_candidates:
            raise RuntimeError(
                f"The dataset mapper returned None for sample {cur_idx} and no sample has been "
                "mapped successfully yet: check the dataset (see the log above for the reason)."
            )
        cur_idx = self._rng.choice(sorted(self._fallback_candidates))
        if retry_count >= 3:
            logging.getLogger(__name__).warning(
                "Failed to apply `_map_func` for idx: %d, retry count: %d", idx, retry_count
            )


def patch_map_dataset() -> bool:
    from detectron2.data.common import MapDataset

    if MapDataset.__getitem__ is _map_dataset_getitem:
        return True
    if sys.version_info < (3, 11):
        return False
    if "sample(self._fallback_candidates" not in inspect.getsource(MapDataset.__getitem__):
        return False
    MapDataset.__getitem__ = _map_dataset_getitem
    _mark("MapDataset retry on Python 3.11")
    return True


_DONE = False


def apply_all() -> list[str]:
    """Apply every needed patch once (idempotent); returns the names applied."""
    global _DONE
    if not _DONE:
        install_c_standin()
        patch_pillow_linear()
        patch_class_histogram()
        patch_map_dataset()
        _DONE = True
    return applied()
