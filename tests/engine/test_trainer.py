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
