"""Train several rows of an experiment (Table 1) sharing their common past.

Rows that differ only in SISSI.START_RULE and SISSI.CLONING train identical weights until their
correction starts: data order is a function of (seed, epoch), the step RNG is reseeded from
(seed, iteration), and the hooks that watch the model do not change it. So the weak-only row is
trained once as the *trunk*, with both signals recorded (memorisation check and source
validation loss), and every other row *branches* from the trunk's checkpoint at the end of the
epoch before its correction starts, then resumes as a normal run. A row whose rule never fires
within the epochs equals the trunk and is not trained again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

import torch

from ..utils.atomic import atomic_open, atomic_write_json

__all__ = ["run_rows", "branch_epoch", "same_past", "check_row_settings"]

logger = logging.getLogger(__name__)


def _after_correction_starts(key: str) -> bool:
    """Config keys that only matter once a row's correction starts (rows differing only in
    these share their past with the trunk)."""
    return key in ("SISSI.START_RULE", "SISSI.ADELE.TRACK") or key.startswith("SISSI.CLONING.")


def same_past(cfg_a, cfg_b) -> bool:
    """True when two configs differ only in what happens after correction starts."""

    def strip(cfg):
        return {k: v for k, v in _settings(cfg).items() if not _after_correction_starts(k)}

    return strip(cfg_a) == strip(cfg_b)


def branch_epoch(row_cfg, trunk_state: dict):
    """(epoch at which the row's correction starts, best-weights epoch or None), or None if its
    rule never fires within the trunk's epochs. ``trunk_state`` holds the trunk's hook states."""
    rule = str(row_cfg.SISSI.START_RULE)
    epochs = int(row_cfg.SISSI.EPOCHS)
    if rule == "never":
        return None
    if rule.startswith("epoch:"):
        start = int(rule.split(":", 1)[1])
        return (start, None) if start < epochs else None
    if rule == "adele":
        fired = trunk_state.get("MemorisationHook", {}).get("detector", {}).get("fired_epoch")
        return (fired + 1, None) if fired is not None and fired + 1 < epochs else None
    if rule == "source_val_loss":
        history = trunk_state.get("SourceValLossHook", {}).get("history", [])
        patience = int(row_cfg.SISSI.SOURCE_VAL.PATIENCE)
        best_epoch, best = None, float("inf")
        for epoch, loss in history:
            if loss < best:
                best_epoch, best = epoch, loss
            elif epoch - best_epoch >= patience:
                return (epoch, best_epoch) if epoch < epochs else None
        return None
    raise ValueError(f"cannot plan a branch for SISSI.START_RULE={rule!r}")


def _checkpoint_path(trunk_dir: str, epoch_end: int, ipe: int) -> str:
    return os.path.join(trunk_dir, f"model_{(epoch_end + 1) * ipe - 1:07d}.pth")


def _branch(trunk_dir: str, row_dir: str, start_epoch: int, best_epoch, ipe: int) -> None:
    """Seed row_dir with the trunk's checkpoint at the end of epoch start_epoch - 1."""
    src = _checkpoint_path(trunk_dir, start_epoch - 1, ipe)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"the trunk checkpoint {src} is missing: cannot branch the row {row_dir}")
    os.makedirs(os.path.join(row_dir, "sissi"), exist_ok=True)
    shutil.copyfile(src, os.path.join(row_dir, os.path.basename(src)))
    for name in ("memorisation.json",):
        if os.path.isfile(os.path.join(trunk_dir, "sissi", name)):
            shutil.copyfile(os.path.join(trunk_dir, "sissi", name), os.path.join(row_dir, "sissi", name))
    if best_epoch is not None:
        # The weights with the lowest source validation loss are those at the start of that epoch.
        if best_epoch == 0:
            raise ValueError("best source validation loss at epoch 0: no trunk checkpoint holds those weights")
        state = torch.load(_checkpoint_path(trunk_dir, best_epoch - 1, ipe), map_location="cpu", weights_only=True)
        with atomic_open(os.path.join(row_dir, "sissi", "best_source_val.pth"), "wb") as f:
            torch.save({"model": state["model"], "epoch": best_epoch}, f)
    with atomic_open(os.path.join(row_dir, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(src))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _settings(cfg) -> dict:
    """The row's config as plain JSON values (OUTPUT_DIR left out: folders may move)."""
    d = json.loads(json.dumps(cfg, default=lambda o: dict(o) if isinstance(o, dict) else list(o)))
    d.pop("OUTPUT_DIR", None)
    return _flat(d)


def check_row_settings(cfg) -> None:
    """A row's folder is reused (resume) only by the settings it was trained with.

    The first run records them in ``OUTPUT_DIR/sissi/row_settings.json``; a later run with other
    settings (another learning rate, other epochs, another data set...) would otherwise silently
    continue or reuse the old weights. It stops with the keys that differ instead."""
    path = os.path.join(cfg.OUTPUT_DIR, "sissi", "row_settings.json")
    current = _settings(cfg)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        diff = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        if diff:
            shown = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"{cfg.OUTPUT_DIR} holds a run trained with other settings ({shown}"
                f"{'; ...' if len(diff) > 6 else ''}). Use another output folder, or delete this one to train again.")
        return
    if os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        logger.warning("%s holds a run with no record of its settings: assuming they are the current ones", cfg.OUTPUT_DIR)
    atomic_write_json(path, current)


def _train(cfg, resume: bool):
    from .trainer import SISSITrainer

    check_row_settings(cfg)
    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if trainer.start_iter < trainer.max_iter:
        trainer.train()
    return trainer


def _evaluate(trainer):
    from .trainer import SISSITrainer

    if not trainer.cfg.DATASETS.TEST:
        return {}
    results = SISSITrainer.test(trainer.cfg, trainer.model)
    if "bbox" in results:  # Detectron2 unwraps the results of a single test set
        results = {trainer.cfg.DATASETS.TEST[0]: results}
    return {ds: res["bbox"] for ds, res in results.items()}


def run_rows(rows: dict, trunk: str) -> dict:
    """Train and evaluate every row (name -> frozen cfg); ``rows[trunk]`` must use rule 'never'.

    Returns name -> {"metrics", "branched_from_epoch", "output_dir", "same_as"} and writes
    ``rows.json`` next to each row's output. Finished rows are reused (resume).
    """
    trunk_cfg = rows[trunk]
    if trunk_cfg.SISSI.START_RULE != "never":
        raise ValueError(f"the trunk row {trunk!r} must train on the weak labels (START_RULE never)")
    summary = {}
    logger.info("Rows: training the trunk %r in %s", trunk, trunk_cfg.OUTPUT_DIR)
    trunk_trainer = _train(trunk_cfg, resume=True)
    ipe = trunk_trainer.iters_per_epoch
    trunk_state = json.loads(json.dumps(trunk_trainer.state_dict()["hooks"]))
    summary[trunk] = {"metrics": _evaluate(trunk_trainer), "branched_from_epoch": 0,
                      "output_dir": trunk_cfg.OUTPUT_DIR, "same_as": None}
    del trunk_trainer
    for name, cfg in rows.items():
        if name == trunk:
            continue
        entry = {"output_dir": cfg.OUTPUT_DIR, "same_as": None, "branched_from_epoch": None}
        if not same_past(cfg, trunk_cfg):
            logger.info("Row %r differs from the trunk before correction: trained from scratch", name)
            entry["metrics"] = _evaluate(_train(cfg, resume=True))
            summary[name] = entry
            continue
        plan = branch_epoch(cfg, trunk_state)
        if plan is None:
            logger.info("Row %r: its start rule never fires within the epochs; identical to %r", name, trunk)
            entry.update(same_as=trunk, metrics=summary[trunk]["metrics"])
            summary[name] = entry
            continue
        start, best = plan
        if best == 0:
            logger.info("Row %r: best source loss at epoch 0, trained from scratch", name)
            entry["metrics"] = _evaluate(_train(cfg, resume=True))
            summary[name] = entry
            continue
        check_row_settings(cfg)  # before the branch checkpoint lands in its folder
        if not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
            _branch(trunk_cfg.OUTPUT_DIR, cfg.OUTPUT_DIR, start, best, ipe)
        logger.info("Row %r: branched from the trunk at the start of epoch %d", name, start)
        entry["branched_from_epoch"] = start
        entry["metrics"] = _evaluate(_train(cfg, resume=True))
        summary[name] = entry
    for name, entry in summary.items():
        atomic_write_json(os.path.join(entry["output_dir"], "row.json"), {"row": name, **entry})
    return summary
