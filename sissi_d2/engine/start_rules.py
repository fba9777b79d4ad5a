"""When label correction starts, selected by ``SISSI.START_RULE`` through a registry.

A rule answers ``correcting(epoch, signals)``: whether epoch ``epoch`` trains on pseudo-labels
made at its start. ``signals`` (:class:`StartSignals`) is what the run's epoch hooks have
measured by then; a rule sees nothing else of the trainer. A rule may also ask for the weights
of an earlier epoch to be restored when correction starts (:meth:`StartRule.restore_epoch`);
the trainer does that as an explicit step, the rule only names the epoch.

Because a rule is a function of the recorded signals, it can also plan where a row branches off a
trunk that recorded the same signals (:meth:`StartRule.branch_plan`): the plan replays the rule
on the trunk's record, so it is what the live rule decides, for every registered rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from fvcore.common.registry import Registry

__all__ = [
    "SISSI_START_RULE_REGISTRY", "build_start_rule", "register_start_rule", "StartRule", "StartSignals",
    "BranchPlan", "MEMORISATION", "SOURCE_VAL", "recorded_signals",
]

SISSI_START_RULE_REGISTRY = Registry("SISSI_START_RULE")
SISSI_START_RULE_REGISTRY.__doc__ = """
Start rules of label correction. A registered class is called as ``cls(cfg, arg)``, ``arg``
being the text after ':' in SISSI.START_RULE (e.g. "epoch:5") or None.
"""

#: Names of the signals the epoch hooks record (``StartRule.needs``).
MEMORISATION = "memorisation"  # MemorisationHook: AP50 vs the weak labels, ADELE's firing epoch
SOURCE_VAL = "source_val"  # SourceValLossHook: loss on the labelled source validation set
# How a run is made to record each signal (named in errors).
SIGNAL_SETTINGS = {MEMORISATION: "SISSI.ADELE.TRACK", SOURCE_VAL: "SISSI.SOURCE_VAL_DATASETS"}


def register_start_rule(name: str):
    """Class decorator: register a start rule under the name used in SISSI.START_RULE."""

    def deco(cls):
        SISSI_START_RULE_REGISTRY._do_register(name, cls)
        return cls

    return deco


@dataclass(frozen=True)
class StartSignals:
    """What the epoch hooks have measured at the start of an epoch, before it trains.

    ``recorded``: the signals the run records at all; ``memorisation_fired_epoch``: the epoch the
    memorisation check fired (None: not yet); ``source_val_history``: ((epoch, loss), ...) up to
    and including the current epoch.
    """

    recorded: frozenset = frozenset()
    memorisation_fired_epoch: int | None = None
    source_val_history: tuple = ()

    @classmethod
    def from_trunk_state(cls, hooks_state: dict, recorded, epoch: int) -> "StartSignals":
        """The signals a run sharing the trunk's past sees at the start of ``epoch``, read from the
        trunk's final hook states (the memorisation check latches; the loss history only grows)."""
        fired = hooks_state.get("MemorisationHook", {}).get("detector", {}).get("fired_epoch")
        history = hooks_state.get("SourceValLossHook", {}).get("history", [])
        return cls(recorded=frozenset(recorded),
                   memorisation_fired_epoch=fired if fired is not None and fired <= epoch else None,
                   source_val_history=tuple((int(e), float(v)) for e, v in history if e <= epoch))


@dataclass(frozen=True)
class BranchPlan:
    """A row's correction starts at the start of ``start_epoch``; with ``restore_epoch`` it
    continues from the weights at the start of that earlier epoch."""

    start_epoch: int
    restore_epoch: int | None = None


def recorded_signals(cfg) -> frozenset:
    """The signals a run of ``cfg`` records: the memorisation check for a rule that needs it or with
    SISSI.ADELE.TRACK, the source validation loss whenever SISSI.SOURCE_VAL_DATASETS is set."""
    out = set()
    if cfg.SISSI.ADELE.TRACK or MEMORISATION in rule_class(cfg).needs:
        out.add(MEMORISATION)
    if cfg.SISSI.SOURCE_VAL_DATASETS:
        out.add(SOURCE_VAL)
    return frozenset(out)


class StartRule:
    #: the signals (MEMORISATION, SOURCE_VAL) the rule reads
    needs: tuple = ()

    def __init__(self, cfg, arg=None):
        self.cfg, self.arg = cfg, arg

    def correcting(self, epoch: int, signals: StartSignals) -> bool:
        raise NotImplementedError

    def restore_epoch(self) -> int | None:
        """When correction starts: the epoch whose start weights training continues from (None:
        the current weights)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def check_signals(self, recorded) -> None:
        missing = [s for s in self.needs if s not in recorded]
        if missing:
            raise ValueError(
                f"SISSI.START_RULE={self.cfg.SISSI.START_RULE!r} needs the {missing[0]} signal, which this run "
                f"does not record: set {SIGNAL_SETTINGS[missing[0]]}.")

    def branch_plan(self, hooks_state: dict, recorded, epochs: int) -> BranchPlan | None:
        """Where a row with this rule leaves a trunk that recorded ``hooks_state`` (its final hook
        states) over ``epochs`` epochs; None if the rule does not fire within them. The rule is
        replayed epoch by epoch on the trunk's record (call it on a fresh rule)."""
        self.check_signals(recorded)
        for epoch in range(epochs):
            if self.correcting(epoch, StartSignals.from_trunk_state(hooks_state, recorded, epoch)):
                return BranchPlan(epoch, self.restore_epoch())
        return None


@register_start_rule("never")
class NeverStart(StartRule):
    """Weak labels only (the Weak-only and Oracle rows)."""

    def correcting(self, epoch, signals):
        return False


@register_start_rule("epoch")
class FixedEpochStart(StartRule):
    """Pseudo-labels from epoch N on (``epoch:N``)."""

    def __init__(self, cfg, arg=None):
        super().__init__(cfg, arg)
        if arg is None or not re.fullmatch(r"\d+", arg):
            raise ValueError(f"SISSI.START_RULE={cfg.SISSI.START_RULE!r}: write 'epoch:N' with N >= 0")
        self.start_epoch = int(arg)

    def correcting(self, epoch, signals):
        return epoch >= self.start_epoch


@register_start_rule("adele")
class AdeleStart(StartRule):
    """Memorisation detected on the AP50-vs-weak-labels curve (paper sec. 3.3). The firing
    epoch still trains on the weak labels; the first pseudo-labels come one epoch later."""

    needs = (MEMORISATION,)

    def correcting(self, epoch, signals):
        fired = signals.memorisation_fired_epoch
        return fired is not None and epoch > fired


@register_start_rule("source_val_loss")
class SourceValLossStart(StartRule):
    """Early stopping on the source validation loss (the paper's Baseline): after PATIENCE
    epochs without a new lowest loss, correction starts from the weights with the lowest loss
    (:meth:`restore_epoch`; the trainer restores them). The decision latches."""

    needs = (SOURCE_VAL,)

    def __init__(self, cfg, arg=None):
        super().__init__(cfg, arg)
        self.patience = int(cfg.SISSI.SOURCE_VAL.PATIENCE)
        self.fired_epoch = None
        self.best_epoch = None  # of the loss history when the rule fired

    def correcting(self, epoch, signals):
        if self.fired_epoch is None and signals.source_val_history:
            # the first lowest loss, as the hook keeps it (a tie is no improvement)
            best_epoch, best = None, float("inf")
            for e, loss in signals.source_val_history:
                if loss < best:
                    best_epoch, best = e, loss
            if best_epoch is not None and epoch - best_epoch >= self.patience:
                self.fired_epoch, self.best_epoch = epoch, best_epoch
        return self.fired_epoch is not None and epoch >= self.fired_epoch

    def restore_epoch(self):
        return self.best_epoch

    def state_dict(self):
        return {"fired_epoch": self.fired_epoch, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.fired_epoch = state.get("fired_epoch")
        self.best_epoch = state.get("best_epoch")


def rule_class(cfg):
    spec = str(cfg.SISSI.START_RULE)
    name = spec.partition(":")[0]
    if name not in SISSI_START_RULE_REGISTRY:
        known = sorted(k for k, _ in SISSI_START_RULE_REGISTRY)
        raise ValueError(f"SISSI.START_RULE={spec!r} is unknown; registered rules: {known} ('epoch' as 'epoch:N')")
    return SISSI_START_RULE_REGISTRY.get(name)


def build_start_rule(cfg) -> StartRule:
    arg = str(cfg.SISSI.START_RULE).partition(":")[2]
    return rule_class(cfg)(cfg, arg or None)
