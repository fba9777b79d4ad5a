"""Every iteration holds exactly n source + n target images, whatever the workers or processes."""
import json
import os

import numpy as np
import pytest

from tests.conftest import tiny_config


def _records(name):
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get(name)


def _domains_per_batch(cfg, num_workers, epoch=0, start_batch=0):
    from sissi_d2.data.mappers import build_mapper
    from sissi_d2.data.two_source import TwoSourceLoader

    loader = TwoSourceLoader.for_epoch(
        _records("tiny_source"), _records("tiny_target"), build_mapper(cfg, "source"), build_mapper(cfg, "target"),
        source_batch_total=cfg.SISSI.IMS_PER_BATCH_SOURCE, target_batch_total=cfg.SISSI.IMS_PER_BATCH_TARGET,
        seed=0, epoch=epoch, start_batch=start_batch, num_workers=num_workers,
    )
    return [[(d["domain"], d["image_id"]) for d in batch] for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_ratio(tiny_datasets, tmp_path, workers):
    cfg = tiny_config(tmp_path, "SISSI.IMS_PER_BATCH_SOURCE", "2", "SISSI.IMS_PER_BATCH_TARGET", "2")
    batches = _domains_per_batch(cfg, workers)
    assert len(batches) == 2  # 4 target images / 2 per batch
    for batch in batches:
        assert [d for d, _ in batch] == ["source", "source", "target", "target"]
    targets = [i for b in batches for d, i in b if d == "target"]
    assert sorted(targets) == sorted(r["image_id"] for r in _records("tiny_target"))  # one pass


def test_epoch_order_is_reproducible_and_resumable(tiny_datasets, tmp_path):
    cfg = tiny_config(tmp_path)
    full = _domains_per_batch(cfg, 0, epoch=3)
    assert _domains_per_batch(cfg, 0, epoch=3) == full
    assert _domains_per_batch(cfg, 0, epoch=3, start_batch=1) == full[1:]
    assert _domains_per_batch(cfg, 0, epoch=4) != full


def test_sampler_shards_global_batches():
    from sissi_d2.data.two_source import EpochIndexSampler

    kw = dict(size=10, global_batch=4, num_batches=3, seed=1, epoch=0)
    ranks = [[i for i, _ in EpochIndexSampler(**kw, rank=r, world_size=2)] for r in (0, 1)]
    order = EpochIndexSampler(**kw).global_order().reshape(3, 4)
    for b in range(3):
        assert ranks[0][2 * b : 2 * b + 2] + ranks[1][2 * b : 2 * b + 2] == order[b].tolist()
    assert sorted(order.ravel()[:10].tolist()) == list(range(10))
    with pytest.raises(ValueError, match="multiple"):
        EpochIndexSampler(**kw, rank=0, world_size=3)


def test_augmentation_independent_of_workers(tiny_datasets, tmp_path):
    from sissi_d2.data.mappers import build_mapper
    from sissi_d2.data.two_source import TwoSourceLoader

    cfg = tiny_config(tmp_path)

    def images(workers):
        loader = TwoSourceLoader.for_epoch(
            _records("tiny_source"), _records("tiny_target"), build_mapper(cfg, "source"),
            build_mapper(cfg, "target", cloning=True), source_batch_total=2, target_batch_total=2,
            seed=0, epoch=1, num_workers=workers)
        return [(d["image"].float().sum().item(), d["instances"].gt_boxes.tensor.sum().item())
                for batch in loader for d in batch]

    assert images(0) == images(2)


def _rank_batches(out_dir, root):
    import sissi_d2  # noqa: F401
    from detectron2.utils import comm

    from tests.conftest import register_tiny_on_every_rank

    register_tiny_on_every_rank(root)
    cfg = tiny_config(out_dir, "SISSI.IMS_PER_BATCH_SOURCE", "4", "SISSI.IMS_PER_BATCH_TARGET", "4")
    batches = _domains_per_batch(cfg, 0)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(batches, f)


def test_two_gloo_processes_each_get_their_share(tmp_path):
    from sissi_d2.engine.launch import launch

    launch(_rank_batches, 2, dist_url="auto", args=(str(tmp_path), str(tmp_path / "data")))
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 1  # 4 target images / 4 per global batch
    for batches in per_rank:
        for batch in batches:
            assert [d for d, _ in batch] == ["source", "source", "target", "target"]
    global_targets = [i for r in per_rank for b in r for d, i in b if d == "target"]
    assert len(set(global_targets)) == 4  # the ranks split one global batch without overlap
    assert np.all([len(b) == 4 for r in per_rank for b in r])
