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
    """Load model weights (ours or a Detectron2 model-zoo file) with a clear error if missing."""
    if not path:
        raise ValueError("No weights given: pass MODEL.WEIGHTS path/to/model_final.pth")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file not found: {path}. Point it to a checkpoint written by training "
            "(OUTPUT_DIR/model_final.pth)."
        )
    DetectionCheckpointer(model).load(path)
