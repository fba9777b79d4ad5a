"""LabelCorrectionHook through its narrow trainer interface, with a stand-in trainer and predictor."""
import numpy as np

from tests.conftest import tiny_config


class _Storage:
    def __init__(self):
        self.scalars = {}

    def put_scalar(self, name, value, smoothing_hint=False):
        self.scalars[name] = value


class _Trainer:
    """Only what the hook may use: model, iter, storage and three calls."""

    def __init__(self):
        self.model, self.iter, self.storage = object(), 0, _Storage()
        self.calls = []

    def set_epoch_loader(self, epoch, start_batch, records, cloning):
        self.calls.append(("loader", epoch, start_batch, len(records), cloning))

    def close_loader(self):
        self.calls.append(("close",))

    def restore_epoch_weights(self, epoch):
        self.calls.append(("restore", epoch))


class _Predictor:
    def pseudo_labels(self, model, records, desc=""):
        return {r["file_name"].split("/")[-1]: (np.array([[1.0, 1.0, 5.0, 5.0]]), np.array([0.9])) for r in records}


class _SourceVal:
    def __init__(self, history):
        self.history = history


def _hook(tmp_path, rule, records, cloning="on_correction", source_val=None, *opts):
    from sissi_d2.engine.hooks import LabelCorrectionHook
    from sissi_d2.engine.start_rules import build_start_rule

    cfg = tiny_config(tmp_path, "SISSI.START_RULE", rule, "SISSI.CLONING.MODE", cloning, *opts)
    hook = LabelCorrectionHook(cfg, records, 2, build_start_rule(cfg), str(tmp_path), source_val=source_val)
    hook.predictor = _Predictor()
    hook.trainer = _Trainer()
    return hook


def _records(tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.zeros((8, 8), np.uint8))
    return [{"file_name": str(tmp_path / f"img{i}.png"), "height": 8, "width": 8, "image_id": f"img{i}",
             "annotations": []} for i in range(3)]


def test_correction_replaces_labels_and_loader_clones(tmp_path):
    hook = _hook(tmp_path, "epoch:1", _records(tmp_path))
    for it in range(4):
        hook.trainer.iter = it
        hook.before_step()
    loaders = [c for c in hook.trainer.calls if c[0] == "loader"]
    assert loaders == [("loader", 0, 0, 3, False), ("loader", 1, 0, 3, True)]  # one loader per epoch
    assert hook.labels_epoch == 1 and all(len(r["annotations"]) == 1 for r in hook.records)
    assert (tmp_path / "pseudo_labels" / "epoch_0001.json").exists()
    assert hook.trainer.storage.scalars["sissi/pseudo_boxes"] == 3
    state = hook.state_dict()
    hook.records = []
    hook.load_state_dict(state)  # the labels come back from the snapshot
    assert [len(r["annotations"]) for r in hook.records] == [1, 1, 1]
    hook.after_train()
    assert hook.trainer.calls[-1] == ("close",)


def test_restore_is_an_explicit_trainer_call_when_correction_starts(tmp_path):
    val = _SourceVal([[0, 1.0], [1, 0.5], [2, 0.9]])
    hook = _hook(tmp_path, "source_val_loss", _records(tmp_path), "never", val, "SISSI.SOURCE_VAL.PATIENCE", "1")
    hook.on_epoch_start(2)
    assert ("restore", 1) in hook.trainer.calls and hook.labels_epoch == 2
    val.history.append([3, 0.2])
    hook.trainer.calls.clear()
    hook.on_epoch_start(3)
    assert not [c for c in hook.trainer.calls if c[0] == "restore"]  # once, when correction starts


class _CountingPredictor(_Predictor):
    def __init__(self):
        self.calls = 0

    def pseudo_labels(self, model, records, desc=""):
        self.calls += 1
        return {r["file_name"].split("/")[-1]: (np.array([[1.0, 1.0, 5.0 + self.calls, 5.0]]), np.array([0.9]))
                for r in records}


def test_a_rows_first_labels_come_from_the_cache_when_its_weights_made_them(tmp_path):
    import torch

    cache = str(tmp_path / "cache")
    hooks = []
    for i in range(2):
        hook = _hook(tmp_path / f"row{i}", "epoch:1", _records(tmp_path), "never", None,
                     "SISSI.PSEUDO.CACHE_DIR", cache)
        torch.manual_seed(0)
        hook.trainer.model = torch.nn.Linear(2, 2)
        hook.predictor = _CountingPredictor()
        hooks.append(hook)
    hooks[0].on_epoch_start(1)
    hooks[1].on_epoch_start(1)
    assert (hooks[0].predictor.calls, hooks[1].predictor.calls) == (1, 0)  # read, not predicted
    assert [r["annotations"][0]["bbox"] for r in hooks[1].records] == [r["annotations"][0]["bbox"]
                                                                        for r in hooks[0].records]
    assert (tmp_path / "row1" / "pseudo_labels" / "epoch_0001.json").exists()  # its own snapshot still
    # later rounds label with the row's own weights: never from the cache
    hooks[1].on_epoch_start(2)
    assert hooks[1].predictor.calls == 1
    # other weights: another key, predicted
    hook = _hook(tmp_path / "row2", "epoch:1", _records(tmp_path), "never", None, "SISSI.PSEUDO.CACHE_DIR", cache)
    torch.manual_seed(1)
    hook.trainer.model = torch.nn.Linear(2, 2)
    hook.predictor = _CountingPredictor()
    hook.on_epoch_start(1)
    assert hook.predictor.calls == 1


def test_rounds_relabel_the_first_correction_epochs_then_keep_the_labels_and_cloning(tmp_path):
    """SISSI.PSEUDO.ROUNDS n: new labels at the first n correction epochs only; the later epochs
    train (and clone) on the last ones, and a resumed run stays frozen."""
    counts = {}
    for rounds in (0, 1, 2):
        hook = _hook(tmp_path / f"r{rounds}", "epoch:1", _records(tmp_path), "on_correction", None,
                     "SISSI.PSEUDO.ROUNDS", str(rounds))
        hook.predictor = _CountingPredictor()
        for it in range(2 * 5):  # epochs 0..4, correction from epoch 1
            hook.trainer.iter = it
            hook.before_step()
        counts[rounds] = (hook.predictor.calls, hook.labels_epoch, len(hook.history))
        loaders = [c for c in hook.trainer.calls if c[0] == "loader"]
        assert [c[4] for c in loaders] == [False, True, True, True, True]  # cloning on from epoch 1 either way
        if rounds == 1:
            frozen = hook
    assert counts == {0: (4, 4, 4), 1: (1, 1, 1), 2: (2, 2, 2)}
    first = [r["annotations"][0]["bbox"] for r in frozen.records]
    state = frozen.state_dict()
    frozen.records = list(frozen.initial_records)
    frozen.load_state_dict(state)
    frozen.on_epoch_start(5)
    assert frozen.predictor.calls == 1 and [r["annotations"][0]["bbox"] for r in frozen.records] == first


def test_negative_rounds_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="SISSI.PSEUDO.ROUNDS"):
        _hook(tmp_path, "epoch:1", _records(tmp_path), "never", None, "SISSI.PSEUDO.ROUNDS", "-1")
