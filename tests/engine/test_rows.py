"""Rows that share their past: a branched row ends exactly where training it alone ends."""
import torch

from tests.conftest import tiny_config


def _row_cfg(out, rule, cloning="never"):
    return tiny_config(out, "SISSI.START_RULE", rule, "SISSI.CLONING.MODE", cloning, "SISSI.ADELE.TRACK", "True",
                       "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SEED", "5")


def test_branched_row_equals_row_trained_alone(tiny_datasets, tmp_path):
    from sissi_d2.engine.rows import run_rows
    from sissi_d2.engine.trainer import SISSITrainer

    rows = {"weak_only": _row_cfg(tmp_path / "weak", "never"),
            "epoch2": _row_cfg(tmp_path / "epoch2", "epoch:2", "on_correction"),
            "late": _row_cfg(tmp_path / "late", "epoch:7")}
    summary = run_rows(rows, trunk="weak_only")
    assert summary["epoch2"]["branched_from_epoch"] == 2
    assert summary["late"]["same_as"] == "weak_only"
    assert (tmp_path / "epoch2" / "model_0000003.pth").exists()  # trunk checkpoint at the end of epoch 1

    alone = SISSITrainer(_row_cfg(tmp_path / "alone", "epoch:2", "on_correction"))
    alone.resume_or_load(resume=False)
    alone.train()
    branched = torch.load(tmp_path / "epoch2" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    for k, v in alone.model.state_dict().items():
        assert torch.equal(v, branched[k]), k
