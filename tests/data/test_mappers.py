"""The source / target mappers on their own: tensors and boxes out, cloning only when asked."""
import numpy as np
import pytest

from tests.conftest import tiny_config


def test_mappers_give_images_and_instances(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.mappers import SISSITargetMapper, build_mapper

    cfg = tiny_config(tmp_path, "SISSI.AUG.HFLIP_PROB", "0.0", "SISSI.AUG.VFLIP_PROB", "0.0", "SISSI.AUG.SSR_PROB", "0.0",
                      "SISSI.AUG.BLUR_PROB", "0.0", "SISSI.AUG.CHANNEL_SHUFFLE_PROB", "0.0")
    record = DatasetCatalog.get("tiny_source")[0]
    out = build_mapper(cfg, "source", True)(dict(record))
    assert out["image"].shape[0] == 3 and len(out["instances"]) == len(record["annotations"])
    target = DatasetCatalog.get("tiny_target")[0]
    plain = build_mapper(cfg, "target", True)(dict(target))
    cloned = build_mapper(cfg, "target", True, cloning=True)(dict(target))
    assert isinstance(build_mapper(cfg, "target", True, cloning=True), SISSITargetMapper)
    assert plain["image"].shape == cloned["image"].shape
    assert not np.array_equal(plain["image"].numpy(), cloned["image"].numpy())  # the background is blurred
    test = build_mapper(cfg, "source", False)(dict(record))
    assert "instances" not in test or len(test["instances"]) == len(record["annotations"])


def test_unknown_blur_preset_is_a_clear_error(tmp_path):
    from sissi_d2.data.mappers import cloning_blur

    with pytest.raises(ValueError, match="CLONING.BLUR"):
        cloning_blur(tiny_config(tmp_path, "SISSI.CLONING.BLUR", "medium"))
