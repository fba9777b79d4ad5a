"""Rows that share their past: every start rule's branch ends exactly where the row trained alone
ends (bitwise, on CPU), and a plan that cannot be honoured is refused."""
import json

import pytest
import torch

from tests.conftest import tiny_config

EPOCHS = 4  # ADELE with horizon 2 fires at epoch 2 at the earliest: its first correction epoch is 3


def _row_cfg(out, rule, cloning="never", *opts):
    return tiny_config(out, "SISSI.START_RULE", rule, "SISSI.CLONING.MODE", cloning, "SISSI.ADELE.TRACK", "True",
                       "SISSI.ADELE.HORIZON", "2", "SISSI.ADELE.MIN_POINTS", "2", "SISSI.EPOCHS", str(EPOCHS),
                       "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SISSI.SOURCE_VAL.PATIENCE", "1", "SEED", "5",
                       *opts)


@pytest.fixture
def scripted_signals(monkeypatch):
    """The two start signals follow a fixed script per epoch, so that every rule fires within the
    tiny runs (a tiny model's own AP50 is 0 and its loss only falls): AP50 saturates (ADELE fires
    at epoch 2) and the source loss is lowest at epoch 1 (with patience 1 the rule fires at 2)."""
    from sissi_d2.engine.hooks import MemorisationHook, SourceValLossHook

    ap50 = [0.10, 0.18, 0.20, 0.20, 0.20]
    losses = [1.0, 0.5, 0.7, 0.6, 0.65]
    monkeypatch.setattr(MemorisationHook, "weak_ap50", lambda self: ap50[len(self.detector.ap50)])
    monkeypatch.setattr(SourceValLossHook, "validation_loss", lambda self: losses[len(self.history)])


def _alone(cfg):
    from sissi_d2.engine.trainer import SISSITrainer

    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _assert_same_weights(trainer, path):
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


ROWS = {  # key -> (rule, cloning, extra options, expected branch epoch or None when trained alone)
    "epoch0": ("epoch:0", "on_correction", (), None),
    "epoch2": ("epoch:2", "on_correction", (), 2),
    "adele": ("adele", "on_correction", (), 3),
    "val": ("source_val_loss", "never", (), 2),
    "val_p0": ("source_val_loss", "never", ("SISSI.SOURCE_VAL.PATIENCE", "0"), None),
}


def test_every_rule_branch_equals_the_row_trained_alone(tiny_datasets, tmp_path, scripted_signals):
    from sissi_d2.experiments.rows import run_rows

    rows = {"weak_only": _row_cfg(tmp_path / "weak", "never"),
            "late": _row_cfg(tmp_path / "late", "epoch:9")}
    rows.update({k: _row_cfg(tmp_path / k, rule, cloning, *opts) for k, (rule, cloning, opts, _) in ROWS.items()})
    summary = run_rows(rows, trunk="weak_only")
    assert summary["late"]["same_as"] == "weak_only"
    assert summary["val"]["plan"] == {"start_epoch": 2, "restore_epoch": 1}
    assert summary["val_p0"]["plan"] == {"start_epoch": 0, "restore_epoch": 0}  # fires at once
    assert summary["epoch0"]["plan"]["start_epoch"] == 0
    for key, (rule, cloning, opts, branch) in ROWS.items():
        assert summary[key]["branched_from_epoch"] == branch, key
        if branch is None:
            continue  # run_rows trained it alone already
        alone = _alone(_row_cfg(tmp_path / f"{key}_alone", rule, cloning, *opts))
        _assert_same_weights(alone, tmp_path / key / "model_final.pth")
        if rule == "source_val_loss":
            assert alone.start_rule.fired_epoch == summary[key]["plan"]["start_epoch"], key
    assert summary["epoch2"]["plan"] == {"start_epoch": 2, "restore_epoch": None}
    # once every row has branched, the trunk keeps what its own --resume needs (SISSI.DISK.KEEP_LAST 1)
    kept = sorted(p.name for p in (tmp_path / "weak").glob("model_*.pth"))
    assert kept == ["model_0000007.pth", "model_final.pth"], kept  # the newest epoch end + final


def test_cloning_from_the_first_epoch_is_part_of_the_past(tiny_datasets, tmp_path, scripted_signals, monkeypatch):
    import re

    from sissi_d2.experiments import rows as rows_module
    from sissi_d2.experiments.rows import past_differences, run_rows

    lines = []
    monkeypatch.setattr(rows_module.logger, "info", lambda msg, *a: lines.append(msg % a if a else msg))

    never = _row_cfg(tmp_path / "a", "never")
    assert past_differences(_row_cfg(tmp_path / "b", "epoch:1", "always"), never) == ["SISSI.CLONING.MODE"]
    # the cloning cache's size changes no image: a trunk cloned with another one is the same past
    assert past_differences(_row_cfg(tmp_path / "b", "epoch:1", "always", "SISSI.CLONING.CACHE_MB", "0"),
                            _row_cfg(tmp_path / "a", "never", "always")) == []
    assert past_differences(_row_cfg(tmp_path / "b", "epoch:1", "on_correction", "SISSI.CLONING.BLUR", "weak"),
                            never) == []
    rows = {"trunk": _row_cfg(tmp_path / "trunk", "never", "always"),
            "always": _row_cfg(tmp_path / "always", "epoch:2", "always")}
    summary = run_rows(rows, trunk="trunk")
    assert summary["always"]["branched_from_epoch"] == 2
    # after the trunk (4 epochs, timed on this machine) the branch has 2 of its 4 epochs left
    left = [m for m in map(re.compile(r"Rows: left always, (\d+) iterations: about \d+ min at [\d.]+ s per "
                                      r"iteration \(measured on this machine: (\d+) iterations").match, lines) if m]
    assert len(left) == 1, lines
    assert 2 * int(left[0].group(1)) == int(left[0].group(2)) > 0
    assert lines[-1] == "Rows: all rows trained", lines
    _assert_same_weights(_alone(_row_cfg(tmp_path / "always_alone", "epoch:2", "always")),
                         tmp_path / "always" / "model_final.pth")


def test_the_start_signals_are_records_not_part_of_the_past(tmp_path):
    """Recording a start signal changes no weight, so a row that records none (the Oracle) has the
    trunk's past; a row that reads a signal must find it recorded with its own settings."""
    from sissi_d2.experiments.rows import past_differences, signal_mismatch

    trunk = _row_cfg(tmp_path / "t", "never")
    quiet = _row_cfg(tmp_path / "q", "never", "never", "SISSI.ADELE.TRACK", "False", "SISSI.SOURCE_VAL_DATASETS", "()")
    assert past_differences(quiet, trunk) == [] and signal_mismatch(quiet, trunk) is None
    fewer = _row_cfg(tmp_path / "v", "source_val_loss", "never", "SISSI.SOURCE_VAL.MAX_IMAGES", "1")
    assert past_differences(fewer, trunk) == []
    assert "SISSI.SOURCE_VAL.MAX_IMAGES" in signal_mismatch(fewer, trunk)
    assert past_differences(_row_cfg(tmp_path / "l", "never", "never", "SOLVER.BASE_LR", "0.5"), trunk) == ["SOLVER.BASE_LR"]


def test_a_row_is_planned_on_the_running_trunk_once_its_rule_has_fired(tmp_path):
    """While the trunk trains, a row is planned from the trunk's record so far as soon as its rule
    fires on it, and that plan is the one the whole record gives; before, and for a rule that never
    fires, there is no plan yet (run_rows waits)."""
    from sissi_d2.experiments.rows import _row_kind

    fired, losses = 2, (1.0, 0.5, 0.7, 0.6)  # ADELE fires at epoch 2; the loss is lowest at epoch 1

    def record(seen):  # the trunk's hook states once it has measured the starts of `seen` epochs
        return {"MemorisationHook": {"detector": {"fired_epoch": fired if fired < seen else None}},
                "SourceValLossHook": {"history": [[e, v] for e, v in enumerate(losses[:seen])]}}

    trunk = _row_cfg(tmp_path / "t", "never")
    recorded = frozenset({"memorisation", "source_val"})
    # rule -> the first record on which it is planned (None: never fires within the epochs)
    for rule, first in (("adele", 4), ("source_val_loss", 3), ("epoch:2", 3), ("epoch:0", 1), ("epoch:9", None)):
        row = _row_cfg(tmp_path / rule.replace(":", ""), rule)
        whole = _row_kind(row, trunk, record(EPOCHS), recorded)
        running = {seen: _row_kind(row, trunk, record(seen), recorded, seen) for seen in range(1, EPOCHS + 1)}
        if first is None:
            assert whole[0] == "same" and set(running.values()) == {None}, rule
            continue
        assert whole[0] in ("branch", "scratch"), rule
        assert [seen for seen, kind in running.items() if kind is None] == list(range(1, first)), rule
        assert all(running[seen] == whole for seen in range(first, EPOCHS + 1)), rule
    assert _row_kind(_row_cfg(tmp_path / "v2", "source_val_loss"), trunk, record(3), recorded, 3)[1].restore_epoch == 1


def test_a_plan_the_trunk_cannot_honour_is_refused(tiny_datasets, tmp_path):
    from sissi_d2.experiments.rows import run_rows

    untracked = tiny_config(tmp_path / "t", "SISSI.START_RULE", "never", "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)",
                            "SEED", "5")
    adele = tiny_config(tmp_path / "a", "SISSI.START_RULE", "adele", "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)",
                        "SEED", "5")
    with pytest.raises(ValueError, match="SISSI.ADELE.TRACK"):
        run_rows({"trunk": untracked, "adele": adele}, trunk="trunk")

    other_horizon = _row_cfg(tmp_path / "h", "adele", "never", "SISSI.ADELE.HORIZON", "3")
    with pytest.raises(ValueError, match="SISSI.ADELE.HORIZON"):
        run_rows({"trunk": _row_cfg(tmp_path / "t2", "never"), "adele": other_horizon}, trunk="trunk")
    assert not (tmp_path / "t" / "last_checkpoint").exists()  # refused before anything trained


def test_row_folder_is_only_reused_with_its_own_settings(tmp_path, caplog):
    import json

    from sissi_d2.experiments.rows import check_row_settings

    cfg = _row_cfg(tmp_path / "row", "never")
    check_row_settings(cfg)
    check_row_settings(_row_cfg(tmp_path / "row", "never"))  # same settings: reused silently
    moved = _row_cfg(tmp_path / "row", "never")
    moved.defrost()
    moved.OUTPUT_DIR = str(tmp_path / "row")  # OUTPUT_DIR itself is not a setting
    check_row_settings(moved)
    other = _row_cfg(tmp_path / "row", "never", "never", "SOLVER.BASE_LR", "0.5")
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR.*Use another output folder"):
        check_row_settings(other)
    recorded = json.loads((tmp_path / "row" / "sissi" / "row_settings.json").read_text())
    assert recorded["SISSI.START_RULE"] == "never" and "OUTPUT_DIR" not in recorded
    # a row that never corrects never reads its pseudo-label settings nor its start signals: reused with others
    check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "SISSI.PSEUDO.SCORE_THRESH", "0.5"))
    check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "SISSI.ADELE.TRACK", "False",
                                "SISSI.SOURCE_VAL_DATASETS", "()"))
    # the test sets of a row evaluated after training only (TEST.EVAL_PERIOD 0) do not touch its weights
    check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "DATASETS.TEST", "('tiny_test',)"))
    with pytest.raises(ValueError, match=r"DATASETS\.TEST"):
        check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "DATASETS.TEST", "('tiny_test',)",
                                    "TEST.EVAL_PERIOD", "2"))
    check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "SISSI.DISK.KEEP_LAST", "0"))  # retention only
    # a record from before an option existed: the option at its default is what that row did
    path = tmp_path / "row" / "sissi" / "row_settings.json"
    older = {k: v for k, v in json.loads(path.read_text()).items() if k != "SISSI.PSEUDO.EMA_MOMENTUM"}
    path.write_text(json.dumps(older))
    path.write_text(json.dumps({k: v for k, v in older.items() if k != "SOLVER.NESTEROV"}))
    check_row_settings(_row_cfg(tmp_path / "row", "never"))
    with pytest.raises(ValueError, match=r"SOLVER\.NESTEROV"):
        check_row_settings(_row_cfg(tmp_path / "row", "never", "never", "SOLVER.NESTEROV", "True"))
    corrects = _row_cfg(tmp_path / "corr", "epoch:1")
    check_row_settings(corrects)
    with pytest.raises(ValueError, match=r"SISSI\.PSEUDO\.SCORE_THRESH"):
        check_row_settings(_row_cfg(tmp_path / "corr", "epoch:1", "never", "SISSI.PSEUDO.SCORE_THRESH", "0.5"))
    with pytest.raises(ValueError, match=r"SISSI\.SOURCE_VAL\.MAX_IMAGES"):  # its rule may read the signal
        check_row_settings(_row_cfg(tmp_path / "corr", "epoch:1", "never", "SISSI.SOURCE_VAL.MAX_IMAGES", "1"))

    # a folder trained before settings were recorded: warned about, then recorded
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "last_checkpoint").write_text("model_0000001.pth")
    with caplog.at_level("WARNING"):
        check_row_settings(_row_cfg(legacy, "never"))
    assert "no record of its settings" in caplog.text
    assert (legacy / "sissi" / "row_settings.json").exists()


def test_pseudo_label_settings_do_not_split_the_past(tmp_path):
    from sissi_d2.experiments.rows import past_differences

    trunk = _row_cfg(tmp_path / "t", "never")
    row = _row_cfg(tmp_path / "r", "epoch:2", "never", "SISSI.PSEUDO.SCORE_THRESH", "0.05",
                   "SISSI.PSEUDO.WEAK_LABEL_WEIGHT", "2.0", "SISSI.PSEUDO.FLIPS", "('none',)",
                   "SISSI.PSEUDO.ROUNDS", "1")
    assert past_differences(row, trunk) == []
    other = _row_cfg(tmp_path / "o", "epoch:2", "never", "SOLVER.BASE_LR", "0.02")
    assert past_differences(other, trunk) == ["SOLVER.BASE_LR"]
    tested = _row_cfg(tmp_path / "e", "epoch:2", "never", "DATASETS.TEST", "('tiny_test',)")
    assert past_differences(tested, trunk) == []  # evaluated after training only
    during = _row_cfg(tmp_path / "d", "epoch:2", "never", "DATASETS.TEST", "('tiny_test',)", "TEST.EVAL_PERIOD", "1")
    assert past_differences(during, trunk) == ["DATASETS.TEST", "TEST.EVAL_PERIOD"]


def test_row_iterations_and_the_time_left_line():
    from sissi_d2.experiments.rows import row_iterations, time_left_line

    assert row_iterations("scratch", 20, 50) == 1000
    assert row_iterations("branch", 20, 50, start_epoch=13) == 350
    assert row_iterations("branch", 20, 50, start_epoch=25) == 0
    assert row_iterations("same", 20, 50, start_epoch=13) == 0
    with pytest.raises(ValueError, match="unknown row kind 'other'"):
        row_iterations("other", 20, 50)
    line = time_left_line(["plain_a", "oracle"], 1350, 1000, 3000.0)  # 3 s per iteration
    assert line.startswith("Rows: left plain_a, oracle, 1350 iterations: about 68 min at 3.00 s per iteration")
    assert "1000 iterations in 50.0 min" in line
    assert "no pace measured yet" in time_left_line(["oracle"], 1000, 0, 0.0)
    # two rows at a time, each at 6 s per iteration: they share the time left
    line = time_left_line(["plain_a", "oracle"], 1350, 1000, 6000.0, at_once=2)
    assert line.startswith("Rows: left plain_a, oracle, 1350 iterations: about 68 min, 2 rows at a time at 6.00 s per "
                           "iteration each"), line
    assert time_left_line([], 0, 1000, 3000.0) == "Rows: all rows trained"


def test_branches_from_one_checkpoint_label_their_first_round_once(tiny_datasets, tmp_path, monkeypatch):
    """Two branches of the same epoch and pseudo-label settings (one clones, one does not) make
    their first pseudo-labels once: the second reads the first's, and ends with the weights it has
    when trained alone, labelling for itself."""
    from sissi_d2.engine.inference import RecordPredictor
    from sissi_d2.experiments.rows import run_rows

    labelled = []
    predict = RecordPredictor.pseudo_labels

    def counting(self, model, records, desc="pseudo-labels", **kw):
        labelled.append(desc)
        return predict(self, model, records, desc=desc, **kw)

    monkeypatch.setattr(RecordPredictor, "pseudo_labels", counting)
    rows = {"trunk": _row_cfg(tmp_path / "trunk", "never"),
            "plain": _row_cfg(tmp_path / "plain", "epoch:2"),
            "cloned": _row_cfg(tmp_path / "cloned", "epoch:2", "on_correction")}
    summary = run_rows(rows, trunk="trunk")
    assert summary["plain"]["branched_from_epoch"] == summary["cloned"]["branched_from_epoch"] == 2
    assert sorted(labelled) == ["pseudo-labels epoch 2", "pseudo-labels epoch 3", "pseudo-labels epoch 3"]
    assert len(list((tmp_path / "trunk" / "sissi" / "first_pseudo_labels").glob("*.json"))) == 1
    first = [json.loads(p.read_text())["annotations"] for p in
             (tmp_path / "plain" / "sissi" / "pseudo_labels" / "epoch_0002.json",
              tmp_path / "cloned" / "sissi" / "pseudo_labels" / "epoch_0002.json")]
    assert first[0] == first[1] and first[0]
    labelled.clear()
    alone = _alone(_row_cfg(tmp_path / "cloned_alone", "epoch:2", "on_correction"))
    assert labelled == ["pseudo-labels epoch 2", "pseudo-labels epoch 3"]  # no cache: labels itself
    _assert_same_weights(alone, tmp_path / "cloned" / "model_final.pth")
