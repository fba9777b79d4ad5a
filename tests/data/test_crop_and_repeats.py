"""Recipe levers in the data path: training crops after the resize, and target repeats per epoch."""
import numpy as np

from tests.conftest import tiny_config

NO_AUG = ["SISSI.AUG.HFLIP_PROB", "0.0", "SISSI.AUG.VFLIP_PROB", "0.0", "SISSI.AUG.SSR_PROB", "0.0",
          "SISSI.AUG.BLUR_PROB", "0.0", "SISSI.AUG.CHANNEL_SHUFFLE_PROB", "0.0"]
CROP = ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[48, 40]"]


def test_training_crop_comes_after_the_resize_and_keeps_boxes_inside(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.mappers import build_mapper

    cfg = tiny_config(tmp_path, *(NO_AUG + CROP))
    record = DatasetCatalog.get("tiny_source")[0]
    np.random.seed(0)
    sizes, kept = set(), 0
    for _ in range(8):
        out = build_mapper(cfg, "source", True)(dict(record))
        sizes.add(tuple(out["image"].shape[1:]))
        boxes = out["instances"].gt_boxes.tensor.numpy()
        assert np.all(boxes[:, [0, 2]] <= 40) and np.all(boxes[:, [1, 3]] <= 48) and np.all(boxes >= 0)
        kept += len(boxes)
    assert sizes == {(48, 40)}  # a crop of the 96 px training resize, at the scale of the test resize
    assert 0 < kept < 8 * len(record["annotations"])  # crops keep some cells and cut others out
    test = build_mapper(cfg, "source", False)(dict(record))
    assert tuple(test["image"].shape[1:]) == (96, 96)  # never cropped at test time


def test_target_repeats_multiply_the_epoch(tiny_datasets, tmp_path):
    from sissi_d2.engine.trainer import SISSITrainer

    one = SISSITrainer(tiny_config(tmp_path / "one", *CROP))
    three = SISSITrainer(tiny_config(tmp_path / "three", *(CROP + ["SISSI.TARGET_REPEATS", "3"])))
    assert three.iters_per_epoch == 3 * one.iters_per_epoch
    assert three.max_iter == 3 * one.max_iter
    three.set_epoch_loader(0, 0, three.initial_target_records, cloning=False)
    seen = [r["file_name"] for batch in three._loader for r in batch if r["domain"] == "target"]
    names = sorted({r["file_name"] for r in three.initial_target_records})
    assert sorted(seen) == sorted(names * 3)  # every target image exactly 3 times in the epoch
    three.close_loader()
