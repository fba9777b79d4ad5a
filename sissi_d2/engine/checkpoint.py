"""A DetectionCheckpointer whose files are written atomically.

fvcore writes checkpoints and the ``last_checkpoint`` tag in place: a run killed mid-write leaves
a truncated file that ``--resume`` then fails on. Here each file is written to a temporary name
and renamed, so the last checkpoint on disk is always a complete one.
"""
from __future__ import annotations

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic import atomic_open

__all__ = ["AtomicCheckpointer"]


class AtomicCheckpointer(DetectionCheckpointer):
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

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)


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
