"""First pseudo-labels shared by rows that label with the same weights (``SISSI.PSEUDO.CACHE_DIR``).

Rows of a table that branch from one trunk checkpoint with the same pseudo-label settings make
the same first pseudo-labels: the labeller's weights, the target images and every setting that
reaches a box are equal (Table 1's three source-validation rows, and its three ADELE rows, differ
only in cloning, which acts after labelling). The first of them to label writes its fused boxes
here under a key of all of that; the others read them instead of running test-time augmentation
over the target images again. A key is a hash of the weights' bytes, so weights that differ in
one bit never share labels. Only a row's first correction looks here: later rounds label with
weights that only that row has.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch

from ..data.label_files import image_key
from ..utils.atomic import atomic_write_json

__all__ = ["labeller_key", "read_cached_labels", "write_cached_labels"]

logger = logging.getLogger(__name__)

# Config sections that reach a pseudo-label box: the model (architecture, test-time thresholds,
# device), the input (test resize, format) and the pseudo-label settings; the cache's own folder
# and the number of rounds are not among them. Of TEST, only the cap on a view's detections
# reaches a box (the ROI heads keep that many per image); its evaluation settings do not.
_SECTIONS = ("MODEL", "INPUT")


def _settings(cfg) -> dict:
    # ROUNDS says how many rounds follow the first one, not what the first one labels.
    pseudo = {k: v for k, v in cfg.SISSI.PSEUDO.items() if k not in ("CACHE_DIR", "ROUNDS")}
    out = {name: cfg.get(name) for name in _SECTIONS}
    out["SISSI.PSEUDO"] = pseudo
    out["TEST.DETECTIONS_PER_IMAGE"] = cfg.TEST.DETECTIONS_PER_IMAGE
    return json.loads(json.dumps(out, sort_keys=True, default=lambda o: dict(o) if isinstance(o, dict) else list(o)))


def labeller_key(model, cfg, records, weak_boxes=None) -> str:
    """A hex digest of everything the first pseudo-labels depend on: the labeller's weights and
    buffers (bytes, in name order; a DistributedDataParallel wrapper's ``module.`` prefix left
    out), the model, input and pseudo-label settings, the images (key, path, size in bytes) and,
    when they vote in the fusion, the weak boxes."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state, key=lambda n: n.removeprefix("module.")):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name.removeprefix('module.')}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(_settings(cfg), sort_keys=True).encode())
    for r in records:
        path = os.path.abspath(r["file_name"])
        size = os.path.getsize(path) if os.path.isfile(path) else -1
        h.update(f"|{image_key(r)}|{path}|{size}".encode())
    for key in sorted(weak_boxes or {}):
        h.update(key.encode())
        h.update(np.asarray(weak_boxes[key], np.float32).tobytes())
    return h.hexdigest()


def _entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key[:40]}.json")


def read_cached_labels(directory: str, key: str):
    """The fused labels stored under ``key`` (image key -> (boxes Nx4, scores N), float32), or
    None when there are none. An unreadable entry is logged and treated as absent (labelled again)."""
    path = _entry_path(directory, key)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        if entry.get("key") != key:
            raise ValueError("its key differs from the file name's")
        return {k: (np.asarray(v["boxes"], np.float32).reshape(-1, 4), np.asarray(v["scores"], np.float32).reshape(-1))
                for k, v in entry["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("Ignoring the pseudo-label cache entry %s (%s): the labels are made again", path, e)
        return None


def write_cached_labels(directory: str, key: str, fused: dict) -> str:
    """Store fused labels (image key -> (boxes, scores)) under ``key``, atomically; returns the path.
    float32 values go through JSON exactly (a double holds every float32)."""
    path = _entry_path(directory, key)
    labels = {k: {"boxes": np.asarray(b, np.float32).reshape(-1, 4).tolist(),
                  "scores": np.asarray(s, np.float32).reshape(-1).tolist()} for k, (b, s) in fused.items()}
    atomic_write_json(path, {"key": key, "labels": labels}, indent=None)
    return path
