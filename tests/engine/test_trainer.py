"""A few epochs of SISSITrainer on a tiny model: labels change, artifacts are written, resume works."""
import json
import os

import pytest

from tests.conftest import tiny_config


def _train(cfg, resume=False):
    from sissi_d2.engine import SISSITrainer

    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_three_epoch_sissi_run_changes_pseudo_labels(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path, "SISSI.START_RULE", "epoch:1", "SISSI.CLONING.MODE", "on_correction")
    trainer = _train(cfg)
    assert trainer.iters_per_epoch == 2 and trainer.iter == 6  # v0.6 leaves iter at max_iter
    snaps = sorted(os.listdir(tmp_path / "sissi" / "pseudo_labels"))
    assert snaps == ["epoch_0001.json", "epoch_0002.json"]
    boxes = []
    for s in snaps:
        coco = json.loads((tmp_path / "sissi" / "pseudo_labels" / s).read_text())
        assert {im["file_name"] for im in coco["images"]} and coco["categories"][0]["name"] == "cell"
        boxes.append(sorted(tuple(round(v, 2) for v in a["bbox"]) for a in coco["annotations"]))
    assert boxes[0] != boxes[1], "pseudo-labels must change between epochs"
    assert trainer.correction_hook.labels_epoch == 2
    assert (tmp_path / "model_final.pth").exists()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("sissi/pseudo_boxes" in m for m in metrics)


def test_one_round_labels_once_and_trains_on_those_labels_to_the_end(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path, "SISSI.START_RULE", "epoch:1", "SISSI.CLONING.MODE", "on_correction",
                      "SISSI.PSEUDO.ROUNDS", "1")
    trainer = _train(cfg)
    assert trainer.iter == 6 and trainer.correction_hook.labels_epoch == 1
    assert sorted(os.listdir(tmp_path / "sissi" / "pseudo_labels")) == ["epoch_0001.json"]
    assert [h["epoch"] for h in trainer.correction_hook.history] == [1]


def test_checkpoint_holds_optimizer_scheduler_and_json_state(tiny_datasets, tmp_path):
    import torch

    cfg = tiny_config(tmp_path, "SISSI.EPOCHS", "1")
    _train(cfg)
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    trainer_state = ckpt["trainer"]
    assert "optimizer" in trainer_state["_trainer"] and trainer_state["_trainer"]["optimizer"]["state"]
    assert "LRScheduler" in trainer_state["hooks"]
    json.dumps(trainer_state["hooks"]["LabelCorrectionHook"])  # JSON-native


def test_resume_continues_from_last_epoch(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path, "SISSI.EPOCHS", "2", "SISSI.START_RULE", "epoch:1")
    _train(cfg)
    cfg3 = tiny_config(tmp_path, "SISSI.EPOCHS", "3", "SISSI.START_RULE", "epoch:1")
    trainer = _train(cfg3, resume=True)
    assert trainer.start_iter == 4 and trainer.iter == 6
    assert os.path.exists(tmp_path / "sissi" / "pseudo_labels" / "epoch_0002.json")


def test_unknown_start_rule_is_a_clear_error(tiny_datasets, tmp_path):
    from sissi_d2.engine import SISSITrainer

    with pytest.raises(ValueError, match="registered rules"):
        SISSITrainer(tiny_config(tmp_path, "SISSI.START_RULE", "sometimes"))
    with pytest.raises(ValueError, match="CLONING.MODE"):
        SISSITrainer(tiny_config(tmp_path, "SISSI.CLONING.MODE", "sometimes"))
    with pytest.raises(ValueError, match="CLONING.BLUR"):
        SISSITrainer(tiny_config(tmp_path, "SISSI.CLONING.BLUR", "medium"))


def test_adele_rule_writes_memorisation_curve(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path, "SISSI.EPOCHS", "2", "SISSI.START_RULE", "adele")
    trainer = _train(cfg)
    report = json.loads((tmp_path / "sissi" / "memorisation.json").read_text())
    assert len(report["ap50"]) == 2 and report["epochs"] == [0, 1]
    assert all(0.0 <= v <= 1.0 for v in report["ap50"])
    assert trainer.memorisation_hook.detector.fired_epoch is None  # fewer points than MIN_POINTS


def test_source_val_rule_restores_best_weights(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path, "SISSI.EPOCHS", "3", "SISSI.START_RULE", "source_val_loss",
                      "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SISSI.SOURCE_VAL.PATIENCE", "1",
                      "SISSI.ADELE.TRACK", "True")
    trainer = _train(cfg)
    val = trainer.source_val_hook
    fired = trainer.start_rule.fired_epoch
    assert [e for e, _ in val.history] == list(range(3 if fired is None else fired + 1))
    losses = [l for _, l in val.history]
    if fired is None:  # the loss kept falling: never more than PATIENCE epochs without a new best
        assert losses == sorted(losses, reverse=True)
    else:
        assert fired - val.best_epoch >= 1 and (tmp_path / "sissi" / "pseudo_labels" / f"epoch_{fired:04d}.json").exists()
    assert (tmp_path / "sissi" / "memorisation.json").exists()  # ADELE.TRACK with another rule


def test_source_val_loss_is_measured_until_correction_starts(tiny_datasets, tmp_path):
    """Start rules latch: the loss is measured up to the start epoch (the rule reads it there),
    not after; a run that never corrects measures it every epoch, a resumed one as the first did."""
    val = ("SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SISSI.EPOCHS", "4")
    corrected = _train(tiny_config(tmp_path / "corrected", "SISSI.START_RULE", "epoch:1", *val))
    assert [e for e, _ in corrected.source_val_hook.history] == [0, 1]
    assert corrected.correction_hook.labels_epoch == 3
    never = _train(tiny_config(tmp_path / "never", *val))
    assert [e for e, _ in never.source_val_hook.history] == [0, 1, 2, 3]
    assert never.source_val_hook.history[:2] == corrected.source_val_hook.history

    cut = ("SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SISSI.START_RULE", "epoch:1")
    _train(tiny_config(tmp_path / "cut", *cut, "SISSI.EPOCHS", "3"))
    resumed = _train(tiny_config(tmp_path / "cut", *cut, "SISSI.EPOCHS", "4"), resume=True)
    assert resumed.start_iter == 6 and [e for e, _ in resumed.source_val_hook.history] == [0, 1]


def test_ema_teacher_labels_from_correction_on_and_resumes_exactly(tiny_datasets, tmp_path):
    """SISSI.PSEUDO.TEACHER ema: the teacher starts at the first correction epoch, follows the
    student every iteration after it, and a run resumed from a checkpoint ends with the same
    teacher as the uninterrupted run."""
    import torch

    opts = ["SISSI.START_RULE", "epoch:1", "SISSI.PSEUDO.TEACHER", "ema", "SISSI.PSEUDO.EMA_MOMENTUM", "0.5"]
    full = _train(tiny_config(tmp_path / "full", *opts))
    teacher = full.correction_hook.teacher
    assert teacher.started and teacher.updates == 4  # iterations 2..5: from the start of epoch 1
    student = full.model.state_dict()
    assert any(not torch.equal(v, student[k]) for k, v in teacher.model.state_dict().items()
               if v.dtype.is_floating_point), "the teacher must lag behind the student"

    _train(tiny_config(tmp_path / "cut", *opts[:2] + ["SISSI.EPOCHS", "2"] + opts[2:]))
    resumed = _train(tiny_config(tmp_path / "cut", *opts), resume=True)
    assert resumed.start_iter == 4 and resumed.correction_hook.teacher.updates == 4
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(resumed.correction_hook.teacher.model.state_dict()[k], v), k


def test_unknown_teacher_is_a_clear_error(tiny_datasets, tmp_path):
    from sissi_d2.engine import SISSITrainer

    with pytest.raises(ValueError, match="SISSI.PSEUDO.TEACHER"):
        SISSITrainer(tiny_config(tmp_path, "SISSI.PSEUDO.TEACHER", "mean"))


def test_source_validation_loss_depends_on_the_weights_only(tiny_datasets, tmp_path):
    """The loss samples anchors and RoIs at random: it is seeded per epoch on a forked RNG, so a
    resumed or branched run measures the value the uninterrupted run did."""
    import torch

    from sissi_d2.engine import SISSITrainer

    from detectron2.utils.events import EventStorage

    trainer = SISSITrainer(tiny_config(tmp_path, "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)"))
    hook = trainer.source_val_hook
    with EventStorage(0):
        first = hook.validation_loss()
        torch.rand(1000)  # another RNG state, as after a resume
        before = torch.random.get_rng_state()
        assert hook.validation_loss() == first
    assert torch.equal(torch.random.get_rng_state(), before)  # the training RNG is left alone
