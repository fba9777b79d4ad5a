"""Registration of cell data sets of every kind in Detectron2's catalogs."""
from __future__ import annotations

import functools
import inspect
import os

from ..label_files import load_coco_boxes
from ..paths import GET_DATA_HELP
from ..points import load_point_boxes
from .celllab import load_celllab_folder
from .cellpose import load_cellpose_folder
from .image_folder import load_image_folder

__all__ = ["DATASET_KINDS", "register_sissi_dataset", "unregister_sissi_dataset", "registered_sissi_datasets",
           "register_sissi_datasets"]

_LOADERS = {
    "cellpose": load_cellpose_folder,
    "coco": load_coco_boxes,
    "celllab": load_celllab_folder,
    "images": load_image_folder,
    "points": load_point_boxes,
}
DATASET_KINDS = tuple(_LOADERS)
_PATH_KWARGS = ("mask_dir", "image_root", "label_dir")
_FILE_KINDS = ("coco", "points")  # kinds whose path is one file, not a folder
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
            ``label_dir=`` for the txt files), ``"images"`` (folder) or ``"points"`` (a file of
            centre clicks, one box per click: ``data.points``).
        path: the folder or file.
        kwargs: passed to the loader (``mask_dir``, ``min_area``, ``speck_fraction``,
            ``use_cache`` for cellpose; ``image_root`` for coco; ``label_dir`` for celllab;
            ``image_root``, ``size_from``, ``cell_size``, ``class_sizes``, ``pipeline``, ... for points).

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
            raise FileNotFoundError(f"Dataset {name!r} (kind {kind}): {label} {p} does not exist. {GET_DATA_HELP}")
    if kind in _FILE_KINDS and not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset {name!r} (kind {kind}): {path} is not a file.")
    if kind not in _FILE_KINDS and not os.path.isdir(path):
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


def registered_sissi_datasets() -> dict:
    """name -> (kind, path, options) of every data set registered through
    :func:`register_sissi_dataset` in this process: what another process needs to register the
    same data sets (:func:`register_sissi_datasets`), since the catalogs hold functions that do
    not travel between processes."""
    return {name: (kind, path, dict(kwargs)) for name, (kind, path, kwargs) in _REGISTERED.items()}


def register_sissi_datasets(datasets: dict) -> list:
    """Register every data set of :func:`registered_sissi_datasets` (e.g. in a worker process);
    returns their names."""
    return [register_sissi_dataset(name, kind, path, **options) for name, (kind, path, options) in datasets.items()]
