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


def test_cloning_runs_once_per_image_and_boxes_and_gives_the_same_images(tiny_datasets, tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    import sissi_d2.data.mappers as mappers

    off = ("SISSI.AUG.HFLIP_PROB", "0.0", "SISSI.AUG.VFLIP_PROB", "0.0", "SISSI.AUG.SSR_PROB", "0.0",
           "SISSI.AUG.BLUR_PROB", "0.0", "SISSI.AUG.CHANNEL_SHUFFLE_PROB", "0.0")
    calls = []
    real_clone = mappers.make_synthetic_like
    monkeypatch.setattr(mappers, "make_synthetic_like", lambda *a: calls.append(a[0].shape) or real_clone(*a))
    records = DatasetCatalog.get("tiny_target")[:2]
    cached = mappers.build_mapper(tiny_config(tmp_path, *off), "target", True, cloning=True)
    uncached = mappers.build_mapper(tiny_config(tmp_path, *off, "SISSI.CLONING.CACHE_MB", "0"), "target", True,
                                    cloning=True)
    draws = [cached(dict(r))["image"].numpy() for r in records * 3]
    assert len(calls) == 2 and cached.cloned.hits == 4
    fresh = [uncached(dict(r))["image"].numpy() for r in records * 3]
    assert len(calls) == 2 + 6
    assert all(np.array_equal(a, b) for a, b in zip(draws, fresh))
    # New labels for an image (a correction round) are a new clone, never the old one.
    moved = dict(records[0], annotations=records[0]["annotations"][:-1])
    assert not np.array_equal(cached(moved)["image"].numpy(), draws[0]) and len(calls) == 9
    # The budget bounds the memory: one image's worth keeps one clone.
    one = mappers.build_mapper(tiny_config(tmp_path, *off), "target", True, cloning=True)
    one.cloned = mappers._ClonedImageCache(max(a.nbytes for a in cached.cloned._arrays.values()) * 3 // 2)
    for r in records * 2:
        one(dict(r))
    assert len(one.cloned._arrays) == 1 and one.cloned.bytes <= one.cloned.max_bytes and one.cloned.hits == 0


def test_a_negative_cloning_cache_is_a_clear_error(tmp_path):
    from sissi_d2.data.mappers import build_mapper

    with pytest.raises(ValueError, match="CLONING.CACHE_MB"):
        build_mapper(tiny_config(tmp_path, "SISSI.CLONING.CACHE_MB", "-1"), "target", True, cloning=True)


def test_crowd_labels_are_kept_as_ignored_regions_only_when_asked_and_with_heads_that_read_them(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.mappers import build_mapper

    off = ("SISSI.AUG.HFLIP_PROB", "0.0", "SISSI.AUG.VFLIP_PROB", "0.0", "SISSI.AUG.SSR_PROB", "0.0",
           "SISSI.AUG.BLUR_PROB", "0.0", "SISSI.AUG.CHANNEL_SHUFFLE_PROB", "0.0")
    heads = ("MODEL.PROPOSAL_GENERATOR.NAME", "MissingLabelRPN", "MODEL.ROI_HEADS.NAME", "MissingLabelROIHeads")
    record = dict(DatasetCatalog.get("tiny_target")[0])
    labels = len(record["annotations"])
    assert labels > 0
    record["annotations"] = record["annotations"] + [{**record["annotations"][0], "iscrowd": 1}]
    dropped = build_mapper(tiny_config(tmp_path, *off), "target", True)(dict(record))["instances"]
    assert len(dropped) == labels and not dropped.has("gt_ignore")  # Detectron2's behaviour
    kept = build_mapper(tiny_config(tmp_path, *off, *heads, "MODEL.MISSING_LABELS.IGNORE_CROWD", "True"),
                        "target", True)(dict(record))["instances"]
    assert kept.gt_ignore.tolist() == [False] * labels + [True]
    with pytest.raises(ValueError, match="MissingLabelRPN"):  # Detectron2's heads would train it as a cell
        build_mapper(tiny_config(tmp_path, "MODEL.MISSING_LABELS.IGNORE_CROWD", "True"), "target", True)
