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


def test_row_folder_is_only_reused_with_its_own_settings(tmp_path, caplog):
    import json

    import pytest

    from sissi_d2.engine.rows import check_row_settings

    cfg = _row_cfg(tmp_path / "row", "never")
    check_row_settings(cfg)
    check_row_settings(_row_cfg(tmp_path / "row", "never"))  # same settings: reused silently
    moved = _row_cfg(tmp_path / "row", "never")
    moved.defrost()
    moved.OUTPUT_DIR = str(tmp_path / "row")  # OUTPUT_DIR itself is not a setting
    check_row_settings(moved)
    other = tiny_config(tmp_path / "row", "SISSI.START_RULE", "never", "SISSI.CLONING.MODE", "never",
                        "SISSI.ADELE.TRACK", "True", "SISSI.SOURCE_VAL_DATASETS", "('tiny_val',)", "SEED", "5",
                        "SOLVER.BASE_LR", "0.5")
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR.*Use another output folder"):
        check_row_settings(other)
    recorded = json.loads((tmp_path / "row" / "sissi" / "row_settings.json").read_text())
    assert recorded["SISSI.START_RULE"] == "never" and "OUTPUT_DIR" not in recorded

    # a folder trained before settings were recorded: warned about, then recorded
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "last_checkpoint").write_text("model_0000001.pth")
    with caplog.at_level("WARNING"):
        check_row_settings(_row_cfg(legacy, "never"))
    assert "no record of its settings" in caplog.text
    assert (legacy / "sissi" / "row_settings.json").exists()
