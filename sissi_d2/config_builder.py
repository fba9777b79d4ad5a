"""Building the configs of the command-line tools: merge, validate, register data, pick device."""
from __future__ import annotations

import logging
import os

import torch
from detectron2.config import get_cfg

from .config import add_sissi_config

__all__ = ["build_config", "resolve_device", "register_known_datasets", "synthetic_root"]

logger = logging.getLogger(__name__)


def resolve_device(cfg) -> None:
    """MODEL.DEVICE=cuda* on a machine without CUDA falls back to CPU with one warning."""
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("sissi_d2").warning(
            "MODEL.DEVICE=%s but CUDA is not available: running on CPU instead.", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"


def synthetic_root() -> str:
    """Where the demo's synthetic data set lives (env SISSI_SYNTHETIC_ROOT overrides)."""
    from .data.paths import cache_dir

    return os.environ.get("SISSI_SYNTHETIC_ROOT") or os.path.join(cache_dir(), "synthetic")


def register_known_datasets(cfg=None) -> list:
    """Register the real shared data sets and the synthetic demo set where they exist."""
    from .data.builtin import register_shared_datasets, register_synthetic_datasets

    names = list(register_shared_datasets())
    root = synthetic_root()
    if os.path.isdir(root):
        names += list(register_synthetic_datasets(root))
    for spec in (cfg.SISSI.REGISTER if cfg is not None else ()):
        names.append(register_from_spec(spec))
    return names


def register_from_spec(spec: str) -> str:
    """Register one data set written as "NAME=KIND:PATH" (SISSI.REGISTER)."""
    from .data.datasets import register_sissi_dataset

    name, sep, rest = spec.partition("=")
    kind, sep2, path = rest.partition(":")
    if not (sep and sep2 and name and kind and path):
        raise ValueError(f"SISSI.REGISTER entry {spec!r}: write NAME=KIND:PATH, e.g. mylab=images:/data/lab")
    return register_sissi_dataset(name.strip(), kind.strip(), path.strip())


def build_config(config_file: str | None = None, opts=(), freeze: bool = True):
    """Detectron2 config + SISSI node, merged from a file and KEY VALUE overrides."""
    cfg = get_cfg()
    add_sissi_config(cfg)
    try:
        if config_file:
            if not os.path.isfile(config_file):
                raise FileNotFoundError(f"Config file not found: {config_file}")
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        if isinstance(e, AssertionError) and "Non-existent" not in str(e):
            raise
        where = config_file or "the command line"
        raise KeyError(
            f"{e.args[0] if e.args else e} (in {where}). Valid keys are Detectron2's plus those of "
            "sissi_d2/config.py (cfg.SISSI.*): check the spelling."
        ) from None
    resolve_device(cfg)
    if freeze:
        cfg.freeze()
    return cfg
