"""The cut-paste mapper (SISSI.SYNTH): valid Detectron2 inputs, exact per (seed, epoch, position)
through the two-source loader and on resume, patches from the epoch's labels inside SISSI."""
import numpy as np
import pytest

from tests.conftest import tiny_config

NO_AUG = ("SISSI.AUG.HFLIP_PROB", "0.0", "SISSI.AUG.VFLIP_PROB", "0.0", "SISSI.AUG.SSR_PROB", "0.0",
          "SISSI.AUG.BLUR_PROB", "0.0", "SISSI.AUG.CHANNEL_SHUFFLE_PROB", "0.0")
SYNTH = ("SISSI.SYNTH.ENABLED", "True", "SISSI.SYNTH.COUNT", "(3, 6)")


def _mapper(cfg, epoch=0):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.mappers import build_cut_paste_mapper

    return build_cut_paste_mapper(cfg, DatasetCatalog.get("tiny_target"), DatasetCatalog.get("tiny_source"), epoch)


def test_mapper_gives_valid_detectron2_inputs(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Instances

    record = DatasetCatalog.get("tiny_target")[0]
    cfg = tiny_config(tmp_path, *NO_AUG, *SYNTH, "SISSI.SYNTH.REAL_FRACTION", "0.0")
    mapper = _mapper(cfg)
    assert mapper.patches and all(p.pixels.dtype == np.uint8 for p in mapper.patches)
    for seed in range(4):
        np.random.seed(seed)
        out = mapper(dict(record))
        image, inst = out["image"], out["instances"]
        assert out["sissi_synthetic"] and out["domain"] == "target"
        assert image.dtype.is_floating_point is False and image.shape == (3, 96, 96)
        assert isinstance(inst, Instances) and 3 <= len(inst) <= 6 and inst.image_size == (96, 96)
        boxes = inst.gt_boxes.tensor
        assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 96).all())
        assert bool((boxes[:, 2] > boxes[:, 0]).all()) and inst.gt_classes.tolist() == [0] * len(inst)
    assert record["annotations"] == DatasetCatalog.get("tiny_target")[0]["annotations"], "the record is not changed"
    real = _mapper(tiny_config(tmp_path, *NO_AUG, *SYNTH, "SISSI.SYNTH.REAL_FRACTION", "1.0"))(dict(record))
    assert "sissi_synthetic" not in real and len(real["instances"]) == len(record["annotations"])


def test_same_images_per_seed_epoch_and_position_and_on_resume(tiny_datasets, tmp_path):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.mappers import build_mapper
    from sissi_d2.data.two_source import TwoSourceLoader

    cfg = tiny_config(tmp_path, *SYNTH, "SISSI.SYNTH.REAL_FRACTION", "0.3")
    source, target = DatasetCatalog.get("tiny_source"), DatasetCatalog.get("tiny_target")

    def batches(epoch, start_batch=0, seed=0):
        loader = TwoSourceLoader.for_epoch(source, target * 3, build_mapper(cfg, "source"), _mapper(cfg, epoch),
                                           source_batch_total=2, target_batch_total=2, seed=seed, epoch=epoch,
                                           start_batch=start_batch)
        return [[(d["image"].numpy(), d["instances"].gt_boxes.tensor.numpy()) for d in batch[2:]] for batch in loader]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                                        for p, q in zip(a, b) for x, y in zip(p, q))

    full = batches(1)
    assert len(full) == 6 and same(full, batches(1))
    assert same(full[4:], batches(1, start_batch=4)), "a resumed epoch draws the same images"
    assert not same(full, batches(2)) and not same(full, batches(1, seed=5))


def test_bad_synth_settings_are_named(tiny_datasets, tmp_path):
    for key, value in (("SISSI.SYNTH.REAL_FRACTION", "1.5"), ("SISSI.SYNTH.PATCHES_FROM", "('both',)"),
                       ("SISSI.SYNTH.CANVAS", "'white'"), ("SISSI.SYNTH.BLEND", "'poisson'"),
                       ("SISSI.MAPPER.TARGET", "'MyMapper'")):
        with pytest.raises(ValueError, match=key.split(".")[-1].lower() if key.endswith("BLEND") else key):
            _mapper(tiny_config(tmp_path, *SYNTH, key, value))


def test_sissi_correction_cuts_patches_from_the_current_pseudo_labels(tiny_datasets, tmp_path, monkeypatch):
    import sissi_d2.data.mappers as mappers
    from sissi_d2.engine import SISSITrainer

    banks = []
    original = mappers.build_patch_bank

    def spy(records, *args, **kwargs):
        banks.append([len(r["annotations"]) for r in records] + [any("score" in a for r in records for a in r["annotations"])])
        return original(records, *args, **kwargs)

    monkeypatch.setattr(mappers, "build_patch_bank", spy)
    cfg = tiny_config(tmp_path, *SYNTH, "SISSI.START_RULE", "epoch:1", "SISSI.CLONING.MODE", "on_correction",
                      "SISSI.EPOCHS", "2")
    trainer = SISSITrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weak = [len(r["annotations"]) for r in trainer.correction_hook.initial_records]
    pseudo = [len(r["annotations"]) for r in trainer.correction_hook.records]
    assert banks == [weak + [False], pseudo + [True]], "epoch 0 cuts the weak labels, epoch 1 the pseudo-labels"
