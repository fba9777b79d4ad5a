import os

import pytest

import sissi_d2  # noqa: F401
from sissi_d2.config_builder import build_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(
    os.path.relpath(os.path.join(d, f), ROOT)
    for d, _, fs in os.walk(os.path.join(ROOT, "configs")) for f in fs
    if f.endswith(".yaml") and not f.startswith("Base-RCNN")
)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_loads(path):
    cfg = build_config(os.path.join(ROOT, path))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.TEST.DETECTIONS_PER_IMAGE >= cfg.SISSI.EVAL.MAX_DETS
    assert cfg.SISSI.START_RULE.split(":")[0] in ("adele", "source_val_loss", "epoch", "never")


def test_paper_rows_differ_as_in_table1():
    load = lambda name: build_config(os.path.join(ROOT, "configs", name))  # noqa: E731
    assert load("sissi_s.yaml").SISSI.CLONING.BLUR == "strong"
    assert load("sissi_w.yaml").SISSI.CLONING.BLUR == "weak"
    assert load("adele_sissi_s.yaml").SISSI.START_RULE == "adele"
    assert load("baseline.yaml").SISSI.CLONING.MODE == "never"
    assert load("oracle.yaml").SISSI.TARGET_DATASETS == ("usiigaci_train_oracle",)
    paper = load("sissi_s.yaml")
    assert (paper.SOLVER.BASE_LR, paper.SOLVER.MOMENTUM, paper.SOLVER.WEIGHT_DECAY) == (0.001, 0.9, 0.0002)
    assert paper.MODEL.RESNETS.DEPTH == 50 and paper.INPUT.MIN_SIZE_TRAIN == (512,)
    assert load("cpu/sissi_s.yaml").MODEL.RESNETS.DEPTH == 18


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: %s\nSISSI:\n  START_RUEL: adele\n" % os.path.join(ROOT, "configs", "Base-SISSI.yaml"))
    with pytest.raises(KeyError, match="START_RUEL.*bad.yaml"):
        build_config(str(bad))
    with pytest.raises(KeyError, match="NOPE"):
        build_config(None, ["SISSI.NOPE", "1"])


def test_cuda_device_falls_back_to_cpu(caplog):
    import torch

    cfg = build_config(os.path.join(ROOT, "configs", "sissi_s.yaml"), ["MODEL.DEVICE", "cuda"])
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_source_pretraining_stage_is_the_rows_model_and_reads_nothing_of_the_target():
    """Its weights must load into every CPU row without a missing key, and the stage must not see the
    target images (tools/table1.py --pretrain)."""
    stage = build_config(os.path.join(ROOT, "configs", "cpu", "pretrain_source.yaml"))
    for row in ("weak_only", "adele_sissi_s", "oracle"):
        assert stage.MODEL == build_config(os.path.join(ROOT, "configs", "cpu", row + ".yaml")).MODEL
    read = stage.SISSI.SOURCE_DATASETS + stage.SISSI.TARGET_DATASETS + stage.SISSI.SOURCE_VAL_DATASETS + stage.DATASETS.TEST
    assert read and not any("usiigaci" in name for name in read)
    assert stage.SISSI.START_RULE == "never" and not stage.SISSI.ADELE.TRACK


def test_the_target_pretext_stage_has_the_rows_backbone_and_reads_no_label():
    """Its backbone must load into every CPU row, and a self-supervised stage may read the target's
    images but none of its labels, weak or true, nor the test set."""
    stage = build_config(os.path.join(ROOT, "configs", "cpu", "pretrain_target_pretext.yaml"))
    assert stage.MODEL.META_ARCHITECTURE == "MaskedImagePretext"
    for row in ("weak_only", "adele_sissi_s", "oracle"):
        model = build_config(os.path.join(ROOT, "configs", "cpu", row + ".yaml")).MODEL
        for node in ("BACKBONE", "RESNETS", "FPN", "PIXEL_MEAN", "PIXEL_STD"):
            assert stage.MODEL[node] == model[node], node
    assert set(stage.SISSI.SOURCE_DATASETS + stage.SISSI.TARGET_DATASETS) == {"usiigaci_train_images"}
    assert not stage.SISSI.SOURCE_VAL_DATASETS and not stage.DATASETS.TEST
    assert stage.SISSI.START_RULE == "never" and not stage.SISSI.ADELE.TRACK
