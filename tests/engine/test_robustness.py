"""Robustness of training: empty pseudo-labels keep the labels, unregistered data, several processes."""
import json
import os

import pytest

from tests.conftest import tiny_config


def test_pseudo_labels_finding_nothing_keep_previous_labels(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog

    from sissi_d2.engine import SISSITrainer

    cfg = tiny_config(tmp_path, "SISSI.EPOCHS", "2", "SISSI.START_RULE", "epoch:1",
                      "SISSI.PSEUDO.SCORE_THRESH", "1.01")  # no fused box can pass
    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    before = [[a["bbox"] for a in r["annotations"]] for r in DatasetCatalog.get("tiny_target")]
    after = [[a["bbox"] for a in r["annotations"]] for r in trainer.target_records]
    assert after == before and sum(map(len, before)) > 0
    assert trainer.correction_hook.history[-1]["images_kept_previous"] == len(before)


def test_unregistered_dataset_names_the_fix(tiny_datasets, tmp_path):
    from sissi_d2.engine import SISSITrainer

    with pytest.raises(KeyError, match="usiigaci_train_weak.*make_weak_labels"):
        SISSITrainer(tiny_config(tmp_path, "SISSI.TARGET_DATASETS", "('usiigaci_train_weak',)"))


def _two_rank_run(out_dir, data_root):
    import sissi_d2  # noqa: F401
    from detectron2.utils import comm

    from sissi_d2.engine import SISSITrainer
    from tests.conftest import register_tiny_on_every_rank

    register_tiny_on_every_rank(data_root, n_source=4)
    cfg = tiny_config(os.path.join(out_dir, "run"), "SISSI.EPOCHS", "3", "SISSI.START_RULE", "epoch:1",
                      "SISSI.IMS_PER_BATCH_SOURCE", "2", "SISSI.IMS_PER_BATCH_TARGET", "2",
                      "SISSI.CLONING.MODE", "on_correction", "SISSI.ADELE.TRACK", "True")
    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    state = {"labels": [[a["bbox"] for a in r["annotations"]] for r in trainer.target_records],
             "ap50": trainer.memorisation_hook.detector.ap50}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(state, f)


def test_two_processes_hold_identical_labels_and_decisions(tmp_path):
    from sissi_d2.engine.launch import launch

    launch(_two_rank_run, 2, dist_url="auto", args=(str(tmp_path), str(tmp_path / "data")))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    assert len(r0["ap50"]) == 3
    snaps = sorted(os.listdir(tmp_path / "run" / "sissi" / "pseudo_labels"))
    assert snaps == ["epoch_0001.json", "epoch_0002.json"]
    snap = json.loads((tmp_path / "run" / "sissi" / "pseudo_labels" / "epoch_0002.json").read_text())
    assert len(snap["annotations"]) == sum(map(len, r0["labels"]))
