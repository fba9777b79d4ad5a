"""Start rules: decisions from explicit signals, and branch plans replayed on a trunk's record."""
import pytest

from tests.conftest import tiny_config


def _cfg(rule, *opts):
    return tiny_config("/tmp/unused", "SISSI.START_RULE", rule, "SISSI.EPOCHS", "6", *opts)


def _trunk_state(fired=None, losses=()):
    return {"MemorisationHook": {"detector": {"fired_epoch": fired}},
            "SourceValLossHook": {"history": [[e, v] for e, v in enumerate(losses)]}}


BOTH = {"memorisation", "source_val"}


def test_rules_read_only_the_signals_they_are_given():
    from sissi_d2.engine.start_rules import StartSignals, build_start_rule

    adele = build_start_rule(_cfg("adele"))
    assert not adele.correcting(3, StartSignals(memorisation_fired_epoch=None))
    assert not adele.correcting(2, StartSignals(memorisation_fired_epoch=2))  # the firing epoch trains on weak labels
    assert adele.correcting(3, StartSignals(memorisation_fired_epoch=2))
    val = build_start_rule(_cfg("source_val_loss", "SISSI.SOURCE_VAL.PATIENCE", "2"))
    history = ((0, 1.0), (1, 0.4), (2, 0.5))
    assert not val.correcting(2, StartSignals(source_val_history=history))
    assert val.correcting(3, StartSignals(source_val_history=history + ((3, 0.41),)))
    assert val.restore_epoch() == 1 and val.state_dict() == {"fired_epoch": 3, "best_epoch": 1}
    assert val.correcting(4, StartSignals(source_val_history=history + ((3, 0.41), (4, 0.1))))  # latched


def test_branch_plans_replay_the_live_rule():
    from sissi_d2.engine.start_rules import BranchPlan, build_start_rule

    def plan(rule, state, *opts):
        return build_start_rule(_cfg(rule, *opts)).branch_plan(state, BOTH, 6)

    assert plan("never", _trunk_state()) is None
    assert plan("epoch:0", _trunk_state()) == BranchPlan(0, None)
    assert plan("epoch:4", _trunk_state()) == BranchPlan(4, None)
    assert plan("epoch:6", _trunk_state()) is None
    assert plan("adele", _trunk_state(fired=2)) == BranchPlan(3, None)
    assert plan("adele", _trunk_state(fired=5)) is None  # no correction epoch left
    losses = (1.0, 0.5, 0.6, 0.55, 0.7, 0.8)
    assert plan("source_val_loss", _trunk_state(losses=losses), "SISSI.SOURCE_VAL.PATIENCE", "2") == BranchPlan(3, 1)
    # patience 0 fires at the first epoch start, from the current weights (the old planner said 2)
    assert plan("source_val_loss", _trunk_state(losses=losses), "SISSI.SOURCE_VAL.PATIENCE", "0") == BranchPlan(0, 0)
    assert plan("source_val_loss", _trunk_state(losses=(3, 2, 1, 0.5, 0.4, 0.3))) is None


def test_a_missing_signal_names_the_setting():
    from sissi_d2.engine.start_rules import build_start_rule

    with pytest.raises(ValueError, match="SISSI.ADELE.TRACK"):
        build_start_rule(_cfg("adele")).branch_plan(_trunk_state(fired=1), {"source_val"}, 6)
    with pytest.raises(ValueError, match="SISSI.SOURCE_VAL_DATASETS"):
        build_start_rule(_cfg("source_val_loss")).check_signals({"memorisation"})


def test_a_newly_registered_rule_can_branch():
    from sissi_d2.engine.start_rules import SISSI_START_RULE_REGISTRY, BranchPlan, StartRule, build_start_rule, register_start_rule

    @register_start_rule("after_two_checks")
    class AfterTwoChecks(StartRule):
        needs = ("source_val",)

        def correcting(self, epoch, signals):
            return len(signals.source_val_history) > 2

    try:
        rule = build_start_rule(_cfg("after_two_checks"))
        assert rule.branch_plan(_trunk_state(losses=(1, 1, 1, 1)), BOTH, 6) == BranchPlan(2, None)
    finally:
        SISSI_START_RULE_REGISTRY._obj_map.pop("after_two_checks")
