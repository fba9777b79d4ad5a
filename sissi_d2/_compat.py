"""Make Detectron2 0.6 (Python only) work on a modern stack.

Imported by ``sissi_d2/__init__.py`` before anything of detectron2 that needs it. Every patch
checks first whether the installed detectron2 / library still has the problem and does nothing
otherwise, so an official build of detectron2 (with its compiled ``_C``) is left alone.
``applied()`` lists what was patched in this process; each patch has its own test.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.resources
import importlib.util
import inspect
import logging
import os
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


# ---------------------------------------------------------------------------------------------
# 5. Fixes applied when a module is first imported
# ---------------------------------------------------------------------------------------------
def _detectron2_source(relative_path: str) -> str:
    """Text of a file of the installed detectron2, read without importing it ("" if absent)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, relative_path)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return ""


def _module_missing(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is None
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


class _FixingLoader(importlib.abc.Loader):
    """Loads a module with its usual loader, then (or instead) runs a fix on it."""

    def __init__(self, original, fix):
        self.original = original
        self.fix = fix

    def create_module(self, spec):
        return self.original.create_module(spec) if self.original is not None else None

    def exec_module(self, module):
        self.fix(module, self.original)


class _FixOnImport(importlib.abc.MetaPathFinder):
    """Fixes one module when it is first imported.

    ``detectron2.model_zoo`` and ``detectron2.export`` import most of ``detectron2.modeling``;
    fixing them at their own import keeps ``import sissi_d2`` as fast as before for everyone who
    never uses them.
    """

    def __init__(self, fullname: str, fix):
        self.fullname = fullname
        self.fix = fix

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None:
            return None
        spec.loader = _FixingLoader(spec.loader, self.fix)
        return spec


def _fix_on_import(fullname: str, fix) -> None:
    if fullname in sys.modules:
        # Imported before sissi_d2 (it had what it needed then): nothing left to fix at import.
        return
    if not any(isinstance(f, _FixOnImport) and f.fullname == fullname for f in sys.meta_path):
        sys.meta_path.insert(0, _FixOnImport(fullname, fix))


# 5a. detectron2.model_zoo imports pkg_resources (gone with setuptools >= 81), and the PyPI sdist
#     installs none of the model-zoo config files, for which v0.6 says only "not available".
_MODEL_ZOO = "detectron2.model_zoo.model_zoo"


def _pkg_resources_substitute() -> types.ModuleType:
    """The one ``pkg_resources`` function model_zoo uses, on importlib.resources."""
    module = types.ModuleType("pkg_resources")
    module.__doc__ = "sissi_d2 substitute, present only while detectron2.model_zoo is imported"

    def resource_filename(package: str, resource: str) -> str:
        return str(importlib.resources.files(package).joinpath(resource))

    module.resource_filename = resource_filename
    return module


@contextlib.contextmanager
def _module_present(name: str, module: types.ModuleType):
    # Only for one import: a pkg_resources visible to everyone would make other libraries believe
    # that setuptools' real one is there.
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def model_zoo_configs_dir() -> str:
    """Where detectron2 looks for its model-zoo config files (the folder may not exist)."""
    spec = importlib.util.find_spec("detectron2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model_zoo", "configs")


def _clear_missing_config_error(get_config_file):
    def get_config_file_or_explain(config_path):
        try:
            return get_config_file(config_path)
        except RuntimeError as e:
            if os.path.isdir(model_zoo_configs_dir()):
                raise  # the zoo is installed: this name is just not in it
            raise RuntimeError(
                f"Model-zoo config {config_path!r} is not available: this detectron2 was "
                "installed without the model-zoo config files (the PyPI sdist pb1-detectron2, "
                "as scripts/install.sh does, has none). Install an official Detectron2 build "
                "(https://detectron2.readthedocs.io/tutorials/install.html), or pass the path of "
                "a config file of your own (sissi_d2 ships configs/Base-RCNN-FPN.yaml)."
            ) from e

    get_config_file_or_explain.__doc__ = get_config_file.__doc__
    get_config_file_or_explain.__wrapped__ = get_config_file
    return get_config_file_or_explain


def _model_zoo_needs_pkg_resources() -> bool:
    return _module_missing("pkg_resources") and "import pkg_resources" in _detectron2_source(
        os.path.join("model_zoo", "model_zoo.py")
    )


def _fix_model_zoo(module, loader) -> None:
    if _model_zoo_needs_pkg_resources():
        with _module_present("pkg_resources", _pkg_resources_substitute()):
            loader.exec_module(module)
    else:
        loader.exec_module(module)
    if not os.path.isdir(model_zoo_configs_dir()):
        module.get_config_file = _clear_missing_config_error(module.get_config_file)


def patch_model_zoo() -> bool:
    needed = []
    if _model_zoo_needs_pkg_resources():
        needed.append("model_zoo without pkg_resources")
    if not os.path.isdir(model_zoo_configs_dir()):
        needed.append("model_zoo clear error for absent configs")
    if not needed:
        return False
    _fix_on_import(_MODEL_ZOO, _fix_model_zoo)
    for name in needed:
        _mark(name)
    return True


# 5b. detectron2.export imports caffe2 (in export/api.py), which torch 2 no longer has: nothing of
#     detectron2.export (TracingAdapter, scripting_with_instances: TorchScript export, which needs
#     no caffe2) nor detectron2.utils.analysis imports. Later detectron2 versions import the caffe2
#     part only when caffe2 exists; without caffe2 its names here raise a clear error when used.
_EXPORT_API = "detectron2.export.api"


def _needs_caffe2_message(name: str) -> str:
    return (
        f"detectron2.export.{name} needs caffe2, which PyTorch 2 no longer ships. Export to "
        "TorchScript instead: detectron2.export.TracingAdapter or scripting_with_instances "
        "(sissi_d2: tools/export.py)."
    )


class Caffe2Tracer:
    """Placeholder for ``detectron2.export.Caffe2Tracer`` where caffe2 is not installed."""

    def __init__(self, *args, **kwargs):
        raise ImportError(_needs_caffe2_message("Caffe2Tracer"))


class Caffe2Model:
    """Placeholder for ``detectron2.export.Caffe2Model`` where caffe2 is not installed."""

    def __init__(self, *args, **kwargs):
        raise ImportError(_needs_caffe2_message("Caffe2Model"))

    @staticmethod
    def load_protobuf(*args, **kwargs):
        raise ImportError(_needs_caffe2_message("Caffe2Model"))


def export_caffe2_model(*args, **kwargs):
    raise ImportError(_needs_caffe2_message("export_caffe2_model"))


def export_onnx_model(*args, **kwargs):
    raise ImportError(_needs_caffe2_message("export_onnx_model"))


def add_export_config(cfg):
    """Same as v0.6's: adds cfg.EXPORT_CAFFE2 (kept so that configs using it still build)."""
    from detectron2.config import CfgNode

    is_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.EXPORT_CAFFE2 = CfgNode()
    cfg.EXPORT_CAFFE2.USE_HEATMAP_MAX_KEYPOINT = False
    if is_frozen:
        cfg.freeze()
    return cfg


_EXPORT_API_NAMES = (add_export_config, export_caffe2_model, Caffe2Model, export_onnx_model, Caffe2Tracer)


def _export_needs_caffe2() -> bool:
    return _module_missing("caffe2") and "from caffe2" in _detectron2_source(os.path.join("export", "api.py"))


def _export_api_without_caffe2(module, loader) -> None:
    for obj in _EXPORT_API_NAMES:
        setattr(module, obj.__name__, obj)
    module.__all__ = [obj.__name__ for obj in _EXPORT_API_NAMES]
    module.__doc__ = "detectron2.export.api without caffe2 (sissi_d2._compat)"


def patch_export_without_caffe2() -> bool:
    if not _export_needs_caffe2():
        return False
    _fix_on_import(_EXPORT_API, _export_api_without_caffe2)
    _mark("detectron2.export without caffe2")
    return True


# ---------------------------------------------------------------------------------------------
# 6. hooks.LRScheduler saves and loads scheduler state only for subclasses of _LRScheduler.
#    Torch 2 schedulers (StepLR, ..., and the LRScheduler base) derive from LRScheduler, of which
#    _LRScheduler is now a subclass kept for old code: their state was silently dropped from
#    checkpoints and a resumed run restarted its schedule (last_epoch 0).
# ---------------------------------------------------------------------------------------------
def _scheduler_base():
    import torch.optim.lr_scheduler as lr_scheduler

    return getattr(lr_scheduler, "LRScheduler", lr_scheduler._LRScheduler)


def _lr_hook_state_dict(self):
    if isinstance(self.scheduler, _scheduler_base()):
        return self.scheduler.state_dict()
    return {}


def _lr_hook_load_state_dict(self, state_dict):
    if isinstance(self.scheduler, _scheduler_base()):
        logging.getLogger("detectron2.engine.hooks").info("Loading scheduler from state_dict ...")
        self.scheduler.load_state_dict(state_dict)


def patch_lr_scheduler_state() -> bool:
    import torch.optim.lr_scheduler as lr_scheduler
    from detectron2.engine import hooks

    if hooks.LRScheduler.state_dict is _lr_hook_state_dict:
        return True
    if issubclass(lr_scheduler.StepLR, lr_scheduler._LRScheduler):
        return False  # torch < 2: every built-in scheduler is an _LRScheduler
    if "_LRScheduler" not in inspect.getsource(hooks.LRScheduler.state_dict):
        return False  # a detectron2 that already checks the new base class
    hooks.LRScheduler.state_dict = _lr_hook_state_dict
    hooks.LRScheduler.load_state_dict = _lr_hook_load_state_dict
    _mark("LR scheduler state for torch 2 schedulers")
    return True


# ---------------------------------------------------------------------------------------------
# 7. Cropping polygons (fvcore CropTransform.apply_polygons, used by Detectron2's crop
#    augmentations): GEOS >= 3.9 (shapely 2) computes intersections with a new overlay engine
#    that starts the resulting ring at another vertex. The polygon is the same, but its vertex
#    order now depends on the GEOS version. Starting each cropped ring at the input polygon's own
#    first vertex, where that vertex survives the crop, gives back what older GEOS gave.
# ---------------------------------------------------------------------------------------------
def _start_at(ring, first_vertex):
    import numpy as np

    matches = np.flatnonzero(np.all(np.isclose(ring, first_vertex), axis=1))
    return np.roll(ring, -int(matches[0]), axis=0) if len(matches) else ring


def _crop_polygons(self, polygons: list) -> list:
    import numpy as np
    import shapely.geometry as geometry

    crop_box = geometry.box(self.x0, self.y0, self.x0 + self.w, self.y0 + self.h).buffer(0.0)
    cropped_polygons = []
    for polygon in polygons:
        polygon = geometry.Polygon(polygon).buffer(0.0)
        # polygon must be valid to perform intersection.
        if not polygon.is_valid or polygon.is_empty:
            continue
        first_vertex = np.asarray(polygon.exterior.coords)[0]
        cropped = polygon.intersection(crop_box)
        if cropped.is_empty:
            continue
        parts = cropped.geoms if isinstance(cropped, geometry.base.BaseMultipartGeometry) else [cropped]
        # One polygon may be cropped into several; lines or points from the cut are dropped.
        for part in parts:
            if not isinstance(part, geometry.Polygon) or not part.is_valid:
                continue
            ring = np.asarray(part.exterior.coords)[:-1]  # the ring repeats its first vertex
            cropped_polygons.append(_start_at(ring, first_vertex))
    return [self.apply_coords(p) for p in cropped_polygons]


def patch_polygon_crop_order() -> bool:
    from fvcore.transforms.transform import CropTransform

    if CropTransform.apply_polygons is _crop_polygons:
        return True
    try:
        import shapely
    except ImportError:
        return False  # cropping polygons raises fvcore's own ImportError: shapely is a dependency
    geos = tuple(getattr(shapely, "geos_version", (0, 0, 0)))
    if geos < (3, 9):
        return False
    if "polygon.intersection(crop_box)" not in inspect.getsource(CropTransform.apply_polygons):
        return False  # an fvcore that crops differently
    CropTransform.apply_polygons = _crop_polygons
    _mark("polygon crop vertex order on GEOS >= 3.9")
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
        patch_model_zoo()
        patch_export_without_caffe2()
        patch_lr_scheduler_state()
        patch_polygon_crop_order()
        _DONE = True
    return applied()
