"""When label correction starts, selected by ``SISSI.START_RULE`` through a registry.

A rule answers ``correcting(epoch)``: whether epoch ``epoch`` trains on pseudo-labels made at
its start. Rules read the signals of the trainer's epoch hooks (``trainer.memorisation_hook``,
``trainer.source_val_hook``).
"""
from __future__ import annotations

import logging
import re

import torch
from fvcore.common.registry import Registry

__all__ = ["SISSI_START_RULE_REGISTRY", "build_start_rule", "register_start_rule", "StartRule"]

logger = logging.getLogger(__name__)

SISSI_START_RULE_REGISTRY = Registry("SISSI_START_RULE")
SISSI_START_RULE_REGISTRY.__doc__ = """
Start rules of label correction. A registered class is called as ``cls(cfg, trainer, arg)``,
``arg`` being the text after ':' in SISSI.START_RULE (e.g. "epoch:5") or None.
"""


def register_start_rule(name: str):
    """Class decorator: register a start rule under the name used in SISSI.START_RULE."""

    def deco(cls):
        SISSI_START_RULE_REGISTRY._do_register(name, cls)
        return cls

    return deco


class StartRule:
    def __init__(self, cfg, trainer, arg=None):
        self.cfg, self.trainer, self.arg = cfg, trainer, arg

    def correcting(self, epoch: int) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@register_start_rule("never")
class NeverStart(StartRule):
    """Weak labels only (the Weak-only and Oracle rows)."""

    def correcting(self, epoch):
        return False


@register_start_rule("epoch")
class FixedEpochStart(StartRule):
    """Pseudo-labels from epoch N on (``epoch:N``)."""

    def __init__(self, cfg, trainer, arg=None):
        super().__init__(cfg, trainer, arg)
        if arg is None or not re.fullmatch(r"\d+", arg):
            raise ValueError(f"SISSI.START_RULE={cfg.SISSI.START_RULE!r}: write 'epoch:N' with N >= 0")
        self.start_epoch = int(arg)

    def correcting(self, epoch):
        return epoch >= self.start_epoch


@register_start_rule("adele")
class AdeleStart(StartRule):
    """Memorisation detected on the AP50-vs-weak-labels curve (paper sec. 3.3). The firing
    epoch still trains on the weak labels; the first pseudo-labels come one epoch later."""

    def correcting(self, epoch):
        fired = self.trainer.memorisation_hook.fired_epoch
        return fired is not None and epoch > fired


@register_start_rule("source_val_loss")
class SourceValLossStart(StartRule):
    """Early stopping on the source validation loss (the paper's Baseline): after PATIENCE
    epochs without a new lowest loss, the weights with the lowest loss are restored and
    correction starts from them."""

    def __init__(self, cfg, trainer, arg=None):
        super().__init__(cfg, trainer, arg)
        if trainer.source_val_hook is None:
            raise ValueError(
                "SISSI.START_RULE='source_val_loss' needs SISSI.SOURCE_VAL_DATASETS (the labelled "
                "source validation set)."
            )
        self.patience = int(cfg.SISSI.SOURCE_VAL.PATIENCE)
        self.fired_epoch = None

    def correcting(self, epoch):
        if self.fired_epoch is None:
            val = self.trainer.source_val_hook
            if val.best_epoch is not None and epoch - val.best_epoch >= self.patience:
                self.fired_epoch = epoch
                state = torch.load(val.best_weights_path, map_location="cpu", weights_only=True)
                net = self.trainer.model.module if hasattr(self.trainer.model, "module") else self.trainer.model
                net.load_state_dict(state["model"])
                logger.info(
                    "Source validation loss has not improved for %d epochs: restored the weights of "
                    "epoch %d (loss %.4f); label correction starts at epoch %d",
                    self.patience, val.best_epoch, val.best_loss, epoch,
                )
        return self.fired_epoch is not None and epoch >= self.fired_epoch

    def state_dict(self):
        return {"fired_epoch": self.fired_epoch}

    def load_state_dict(self, state):
        self.fired_epoch = state.get("fired_epoch")


def build_start_rule(cfg, trainer) -> StartRule:
    spec = str(cfg.SISSI.START_RULE)
    name, _, arg = spec.partition(":")
    if name not in SISSI_START_RULE_REGISTRY:
        known = sorted(k for k, _ in SISSI_START_RULE_REGISTRY)
        raise ValueError(f"SISSI.START_RULE={spec!r} is unknown; registered rules: {known} ('epoch' as 'epoch:N')")
    return SISSI_START_RULE_REGISTRY.get(name)(cfg, trainer, arg or None)
