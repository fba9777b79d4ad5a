"""A pretraining stage shared by every row of a table: the CPU stand-in for model-zoo weights.

Every row of the paper's Table 1 starts from the same COCO-pretrained Faster R-CNN. Nothing can be
downloaded here, so the rows train from scratch, and the project measured that such a trunk knows
nothing beyond its weak labels (docs/results.md, "Which premise fails"). The stand-in is the
recipe's model trained once on something other than the target's weak labels and handed to every
row as ``MODEL.WEIGHTS``, as the paper's rows share their pretrained weights: for example
``configs/cpu/pretrain_source.yaml`` (the detector on the labelled source alone) or
``configs/cpu/pretrain_target_pretext.yaml`` (a self-supervised pretext on the unlabelled target
images, ``sissi_d2/modeling``; rows get its backbone only).

The stage is cached under a key of its settings (:func:`pretrain_key`): a second table, or rows
with other settings, reuse it; another pretraining setting trains another one. A killed stage
resumes from its last checkpoint (the trainer's atomic checkpoints), and it logs its progress with
Detectron2's ETA like any row. Users who have model-zoo files keep passing ``MODEL.WEIGHTS``
themselves instead.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os

import torch

from ..config_builder import build_config, register_known_datasets
from ..utils.atomic import atomic_open, atomic_write_json
from .rows import train_row

__all__ = ["pretrain_key", "pretrain_dir", "pretrained_weights", "stage_record", "WEIGHTS_NAME", "RECORD_NAME",
           "FIGURE_NAME"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model_final.pth"
RECORD_NAME = "pretrain.json"
FIGURE_NAME = "pretext_reconstruction.png"


def pretrain_key(cfg) -> str:
    """A short hash of every setting of the stage except where it writes (``OUTPUT_DIR``).

    Settings that cannot change the weights (the disk check, say) are in the key too: a changed
    one trains the stage again, which costs minutes; leaving out one that does reach the weights
    would hand rows the wrong ones."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    return hashlib.sha256(c.dump().encode("utf-8")).hexdigest()[:16]


def pretrain_dir(cfg, cache_root: str) -> str:
    """The folder of the stage with these settings: ``<cache_root>/<key>``."""
    return os.path.join(cache_root, pretrain_key(cfg))


def pretrained_weights(config_file: str, cache_root: str, opts=(), trainer_cls=None) -> str:
    """Path of the stage's final weights, training (or resuming) it first when they are missing.

    Writes ``<cache_root>/<key>/``: ``config.yaml``, the trainer's checkpoints while it trains
    (the newest kept, ``SISSI.DISK``; dropped once it is done), ``model_final.pth`` and
    ``pretrain.json``: key, command settings, the iteration it resumed from, seconds of training
    in this call, and its metrics on ``DATASETS.TEST`` when the config names a test set. A pretext
    stage also draws ``pretext_reconstruction.png`` (its ``figure``) and keeps only the weights a
    detector takes.
    """
    cfg = build_config(config_file, opts, freeze=False)
    out = pretrain_dir(cfg, cache_root)
    final = os.path.join(out, WEIGHTS_NAME)
    if os.path.isfile(os.path.join(out, RECORD_NAME)) and os.path.isfile(final):
        logger.info("Pretraining stage %s: reusing %s", os.path.basename(out), final)
        return final
    cfg.OUTPUT_DIR = out
    cfg.freeze()
    os.makedirs(out, exist_ok=True)
    with atomic_open(os.path.join(out, "config.yaml")) as f:
        f.write(cfg.dump())
    register_known_datasets(cfg)
    logger.info("Pretraining stage %s (%s%s) -> %s; run the same command again to resume it if it is stopped",
                os.path.basename(out), config_file, " " + " ".join(map(str, opts)) if opts else "", out)
    result = train_row("pretrain", cfg, trainer_cls=trainer_cls)
    gc.collect()
    if not os.path.isfile(final):
        raise RuntimeError(f"Pretraining stage in {out} ended without {WEIGHTS_NAME}: see its log")
    total = result["iters_per_epoch"] * int(cfg.SISSI.EPOCHS)
    record = {"key": os.path.basename(out), "config_file": config_file, "opts": list(map(str, opts)),
              "iterations": total, "resumed_from_iteration": total - result["iterations"],
              "seconds": round(result["seconds"], 1), "metrics": result["metrics"]}
    _drop_resume_checkpoints(out)
    prefix = _transfer_prefix(cfg)
    state = torch.load(final, map_location="cpu", weights_only=False)
    if prefix is not None:
        record["figure"] = _pretext_figure_once(cfg, prefix, final, state, os.path.join(out, FIGURE_NAME))
    _keep_weights_only(final, state, prefix or "")
    atomic_write_json(os.path.join(out, RECORD_NAME), record)
    return final


def stage_record(weights: str) -> dict:
    """What a finished stage recorded (``pretrain.json``: key, settings, iterations, seconds, metrics),
    with the path of its final ``weights``."""
    with open(os.path.join(os.path.dirname(weights), RECORD_NAME), encoding="utf-8") as f:
        return {"weights": weights, **json.load(f)}


def _transfer_prefix(cfg):
    """What a detector takes from the stage's weights when its meta-architecture is not a detector
    (a self-supervised pretext names it, ``TRANSFER_PREFIX``); None for a detector stage."""
    from detectron2.modeling import META_ARCH_REGISTRY

    return getattr(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "TRANSFER_PREFIX", None)


def _pretext_figure_once(cfg, prefix: str, final: str, state: dict, figure: str) -> str | None:
    """Draw the pretext's work (:func:`_pretext_figure`) from its full final ``state`` (loaded from
    ``final``) while the decoder is still in it. A stage stopped after its weights were cut and
    before its record was written keeps the figure it drew (None if there is none)."""
    model = state["model"]
    kept = [k for k in model if k.startswith(prefix)]
    if not kept:
        raise RuntimeError(f"{final} holds no weights named {prefix}*: nothing a detector could load")
    if len(kept) == len(model):
        return figure if os.path.isfile(figure) else None
    _pretext_figure(cfg, model, figure)
    return figure


def _keep_weights_only(final: str, state: dict, prefix: str) -> None:
    """Rewrite a finished stage's final checkpoint ``final`` (loaded as ``state``) with what rows
    load, the model weights named ``prefix*`` (a pretext's backbone: no unused keys in the rows),
    and its iteration (also the trainer's), so that a stage stopped before its record is written
    resumes as finished instead of training again. The optimizer's state (as large again as the
    weights), the scheduler's and the hooks' go: nothing resumes a finished stage's training."""
    kept = {k: v for k, v in state["model"].items() if k.startswith(prefix)}
    # the trainer's iteration is what a resume reads (SISSITrainer.load_state_dict)
    trainer = {"iteration": state["trainer"]["iteration"]} if "trainer" in state else None
    slim = {"model": kept, "iteration": state["iteration"], **({"trainer": trainer} if trainer else {})}
    if set(state) == set(slim) and state.get("trainer") == trainer and len(kept) == len(state["model"]):
        return  # already done (a stage stopped after this step)
    logger.info("Pretraining stage: keeping the %d tensors named %s* of %d, without the optimizer's state, in %s",
                len(kept), prefix, len(state["model"]), final)
    with atomic_open(final, "wb") as f:
        torch.save(slim, f)


def _pretext_figure(cfg, weights: dict, path: str, n_images: int = 3) -> None:
    """The pretext's own work on the first training images: per image the input, what the
    backbone saw and the hidden squares painted back."""
    from detectron2.data.build import get_detection_dataset_dicts
    from detectron2.modeling import build_model

    from ..data.mappers import SISSISourceMapper
    from ..modeling import reconstruction_panels
    from ..utils.visualize import save_png, side_by_side

    model = build_model(cfg)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    records = get_detection_dataset_dicts(list(cfg.SISSI.TARGET_DATASETS), filter_empty=False)[:n_images]
    mapper = SISSISourceMapper(cfg, is_train=False)
    torch.manual_seed(0)  # the same squares hidden for every stage
    images, titles = [], []
    for i, panels in enumerate(reconstruction_panels(model, [mapper(r) for r in records])):
        images += list(panels)
        titles += [f"training image {i}", "what the backbone saw", "hidden squares painted back"]
    save_png(path, side_by_side(images, titles, ncols=3, height=384))
    logger.info("Pretraining stage: its reconstructions are drawn in %s", path)


def _drop_resume_checkpoints(out: str) -> None:
    """A finished stage needs only its final weights: the checkpoints kept to resume it (one model
    each, ~95 MB for the CPU recipe) go, and ``last_checkpoint`` names the final weights."""
    for name in os.listdir(out):
        if name.startswith("model_") and name.endswith(".pth") and name != WEIGHTS_NAME:
            os.remove(os.path.join(out, name))
    with atomic_open(os.path.join(out, "last_checkpoint")) as f:
        f.write(WEIGHTS_NAME)
