"""A slowly moving (exponential moving average) teacher for the pseudo-labels.

Deviation from the paper (option ``SISSI.PSEUDO.TEACHER ema``; the paper labels with the student
itself, ``student``). In the study (docs/experiments.md) every round of self-training from a
CPU-trained detector lost label quality: the student that labels epoch e+1 has just been fitted
to the labels of epoch e, so each round's errors are learnt and re-labelled. An EMA of the
student's weights (Mean Teacher, Tarvainen & Valpola 2017; Unbiased Teacher, Liu et al. 2021)
changes by ``1 - momentum`` of the gap per iteration: it averages the students of the last
~1 / (1 - momentum) iterations, so one bad round moves it little, and a weight average is
usually a better detector than its last student.

The teacher starts as a copy of the student when correction starts (earlier iterations need no
teacher, and a branch that starts correcting from a trunk's checkpoint then equals the row
trained alone). Floating-point parameters and buffers are averaged; integer buffers (counters)
are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMATeacher", "ema_update_"]


@torch.no_grad()
def ema_update_(teacher: dict, student: dict, momentum: float) -> None:
    """In place: ``teacher = momentum * teacher + (1 - momentum) * student`` for every floating
    tensor of two state dicts with the same keys; other tensors are copied from the student."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum {momentum} must be in [0, 1] (SISSI.PSEUDO.EMA_MOMENTUM)")
    missing = set(student) ^ set(teacher)
    if missing:
        raise KeyError(f"teacher and student differ in {sorted(missing)[:5]}")
    for key, t in teacher.items():
        s = student[key].detach()
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.to(t.dtype), alpha=1.0 - momentum)
        else:
            t.copy_(s)


class EMATeacher:
    """An eval-mode copy of a model whose weights follow the student's by EMA."""

    def __init__(self, momentum: float):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum {momentum} must be in [0, 1] (SISSI.PSEUDO.EMA_MOMENTUM)")
        self.momentum = float(momentum)
        self.model: nn.Module | None = None
        self.updates = 0

    @property
    def started(self) -> bool:
        return self.model is not None

    def start(self, student: nn.Module) -> None:
        """The teacher becomes a frozen copy of ``student`` (DDP-wrapped or not)."""
        self.model = copy.deepcopy(_unwrap(student)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def update(self, student: nn.Module) -> None:
        ema_update_(self.model.state_dict(), _unwrap(student).state_dict(), self.momentum)
        self.updates += 1

    def state_dict(self) -> dict:
        if self.model is None:
            return {}
        return {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict, student: nn.Module) -> None:
        """Restore a saved teacher (``student`` gives the architecture and the device)."""
        if not state:
            self.model, self.updates = None, 0
            return
        self.start(student)
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
