"""A DetectionCheckpointer whose files are written atomically, with a retention policy.

fvcore writes checkpoints and the ``last_checkpoint`` tag in place: a run killed mid-write leaves
a truncated file that ``--resume`` then fails on. Here each file is written to a temporary name
and renamed, so the last checkpoint on disk is always a complete one.

Retention: a checkpoint of the lean CPU model is about 110 MB (weights + SGD momentum), so a row
that kept one per epoch filled disks. The checkpointer keeps the newest ``keep_last`` per-epoch
checkpoints plus the protected ones (those rows still branch from, see
:func:`branch_checkpoint_epochs`); ``model_final.pth`` and ``sissi/best_source_val.pth`` are never
touched. Pruning runs only after the new checkpoint and the ``last_checkpoint`` tag naming it are
complete on disk, and never deletes the checkpoint the tag names.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic import atomic_open, fsync_directory
from ..utils.disk import CHECKPOINT_NAME_RE, TEMP_NAME_RE, checkpoint_iteration, format_bytes

__all__ = [
    "AtomicCheckpointer",
    "checkpoints_to_delete",
    "prune_checkpoints",
    "epoch_end_checkpoint",
    "branch_checkpoint_epochs",
    "protect_branch_checkpoints",
]

logger = logging.getLogger(__name__)


def epoch_end_checkpoint(epoch: int, iters_per_epoch: int) -> str:
    """File name of the checkpoint saved at the end of epoch ``epoch`` (0-based), i.e. the weights
    at the start of epoch ``epoch + 1``: PeriodicCheckpointer names it by its last iteration."""
    return f"model_{(epoch + 1) * iters_per_epoch - 1:07d}.pth"


def _as_name(item) -> str:
    """A protected item as a file name: an iteration (int) or a checkpoint path/name."""
    if isinstance(item, int):
        return f"model_{item:07d}.pth"
    return os.path.basename(os.fspath(item))


def checkpoints_to_delete(names: Iterable[str], keep_last: int, protected: Iterable = (),
                          last_checkpoint: str | None = None) -> list:
    """Per-epoch checkpoint names (``model_NNNNNNN.pth``) that retention deletes, oldest first.

    Kept: the newest ``keep_last`` by iteration (all when ``keep_last`` <= 0), the one
    ``last_checkpoint`` names (what --resume reads) and the ``protected`` ones (iterations or
    names). Other files, model_final.pth among them, are never candidates.
    """
    if keep_last <= 0:
        return []
    numbered = sorted((n for n in set(names) if CHECKPOINT_NAME_RE.match(n)), key=checkpoint_iteration)
    keep = set(numbered[-keep_last:]) | {_as_name(p) for p in protected}
    if last_checkpoint:
        keep.add(os.path.basename(last_checkpoint))
    return [n for n in numbered if n not in keep]


def prune_checkpoints(directory: str, keep_last: int, protected: Iterable = ()) -> list:
    """Apply retention to the checkpoints in ``directory``; returns the deleted paths (logged).

    Also removes temporary checkpoint files left by a killed write (only the checkpointer writes
    ``.model_*.pth.*.tmp`` there, and it is not writing while it prunes).
    """
    if keep_last <= 0:
        return []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    last = None
    tag = os.path.join(directory, "last_checkpoint")
    if os.path.isfile(tag):
        with open(tag, encoding="utf-8") as f:
            last = f.read().strip()
    protected = list(protected)
    deleted = []
    for name in checkpoints_to_delete(names, keep_last, protected, last):
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        os.remove(path)
        deleted.append(path)
        logger.info("Retention: deleted %s (%s; keeping the newest %d, %s and %d protected)",
                    path, format_bytes(size), keep_last, last or "no last_checkpoint", len(protected))
    for name in names:
        if TEMP_NAME_RE.match(name) and name.startswith(".model_"):
            path = os.path.join(directory, name)
            os.remove(path)
            deleted.append(path)
            logger.info("Retention: deleted %s (temporary file of an interrupted checkpoint write)", path)
    return deleted


class AtomicCheckpointer(DetectionCheckpointer):
    """Atomic checkpoint writes; with ``keep_last`` > 0, retention after each save.

    ``protect(...)`` adds checkpoints (iterations or names) that retention keeps, e.g. those a
    planned branch needs; ``protect_with(fn)`` asks ``fn()`` at each prune, e.g. for a trunk whose
    branch points depend on signals seen so far. ``prune()`` applies retention now (run_rows
    calls it on the trunk once every row has branched).
    """

    def __init__(self, model, save_dir: str = "", *, keep_last: int = 0, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.keep_last = int(keep_last)
        self.protected: set = set()
        self._protect_fns: list = []

    def protect(self, items: Iterable) -> None:
        self.protected |= {_as_name(i) for i in items}

    def unprotect(self, items: Iterable) -> None:
        self.protected -= {_as_name(i) for i in items}

    def protect_with(self, fn: Callable[[], Iterable]) -> None:
        self._protect_fns.append(fn)

    def protected_names(self) -> set:
        names = set(self.protected)
        for fn in self._protect_fns:
            names |= {_as_name(i) for i in fn()}
        return names

    def prune(self) -> list:
        if not self.save_dir or not self.save_to_disk or self.keep_last <= 0:
            return []
        return prune_checkpoints(self.save_dir, self.keep_last, self.protected_names())

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(save_file))
        # Only now, with the new checkpoint and the tag naming it durable, may older ones go.
        fsync_directory(self.save_dir)
        self.prune()

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)


# ---------------------------------------------------------------------------------------------
# what a trunk keeps for the rows that branch from it
# ---------------------------------------------------------------------------------------------
def branch_checkpoint_epochs(row_cfgs: Iterable, trunk_state: dict, epochs_seen: int | None = None):
    """Epochs whose end-of-epoch trunk checkpoint a row may still need, or None when a rule is
    unknown (then keep every checkpoint).

    ``row_cfgs``: the rows that share their past with the trunk; ``trunk_state``: the trunk's hook
    states so far; ``epochs_seen``: how many epoch starts the trunk has observed (None: all of the
    rows' epochs, i.e. the trunk has finished). Each row's own start rule plans its branch
    (``StartRule.branch_plan``, the planner run_rows uses) on what the trunk has observed: a
    planned row needs the end of ``start_epoch - 1`` and, if it restores weights, the end of
    ``restore_epoch - 1``. A rule that has not fired yet starts at the newest checkpoint or a later
    one, which retention keeps anyway; but if it can restore earlier weights, it may still ask for
    any saved epoch, so every checkpoint stays until it has fired.
    """
    from .start_rules import MEMORISATION, SOURCE_VAL, StartRule, build_start_rule

    recorded = {name for name, hook in ((MEMORISATION, "MemorisationHook"), (SOURCE_VAL, "SourceValLossHook"))
                if hook in trunk_state}
    needed: set = set()
    keep_all = False
    for cfg in row_cfgs:
        try:
            rule = build_start_rule(cfg)
        except ValueError:
            return None
        epochs = int(cfg.SISSI.EPOCHS)
        seen = epochs if epochs_seen is None else min(epochs, int(epochs_seen))
        try:
            plan = rule.branch_plan(trunk_state, recorded, seen)
        except ValueError:  # the trunk does not record the rule's signal: run_rows refuses it
            continue
        if plan is None:
            keep_all |= seen < epochs and type(rule).restore_epoch is not StartRule.restore_epoch
            continue
        if plan.start_epoch == 0 or plan.restore_epoch == 0:
            continue  # run_rows trains such a row from scratch: no trunk checkpoint needed
        needed |= {e - 1 for e in (plan.start_epoch, plan.restore_epoch) if e is not None}
    return None if keep_all else needed


def protect_branch_checkpoints(trainer, row_cfgs: Iterable) -> None:
    """Make a trunk trainer's checkpointer keep the checkpoints ``row_cfgs`` may branch from,
    judged from the trunk's own signals at each save."""
    row_cfgs = list(row_cfgs)
    ipe = trainer.iters_per_epoch

    def needed():
        # the same hook states run_rows plans the branches from once the trunk has finished
        epochs = branch_checkpoint_epochs(row_cfgs, trainer.state_dict().get("hooks", {}),
                                          epochs_seen=trainer.iter // ipe + 1)
        if epochs is None:  # unknown rule: keep every per-epoch checkpoint
            return [n for n in os.listdir(trainer.checkpointer.save_dir) if CHECKPOINT_NAME_RE.match(n)]
        return [epoch_end_checkpoint(e, ipe) for e in epochs]

    trainer.checkpointer.protect_with(needed)


def load_weights(model, path: str) -> None:
    """Load a trained model for inference. The checkpoint must fit the model: a missing file, a
    tensor of another shape or a missing tensor (the config differs from the training config) is
    an error, not Detectron2's logged warning that leaves part of the model untrained."""
    if not path:
        raise ValueError("No weights given: pass MODEL.WEIGHTS path/to/model_final.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file not found: {path}. Point it to a checkpoint written by training "
            "(OUTPUT_DIR/model_final.pth)."
        )
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(path))
    if incompatible is None:
        return
    shapes = list(incompatible.incorrect_shapes)
    missing = [k for k in incompatible.missing_keys if k not in {s[0] for s in shapes}]
    if shapes or missing:
        parts = []
        if shapes:
            key, have, want = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape, e.g. {key}: {tuple(have)} in the checkpoint, "
                         f"{tuple(want)} in the model")
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. {missing[0]}")
        raise ValueError(
            f"Checkpoint {path} does not fit the model of this config: {'; '.join(parts)}. Pass the config the "
            "model was trained with (tools/train_net.py saves it as OUTPUT_DIR/config.yaml) with the same "
            "KEY VALUE overrides as in training."
        )
