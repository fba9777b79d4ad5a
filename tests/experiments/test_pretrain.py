"""The shared pretraining stage: cached under a key of its settings, reused, resumed, loaded by rows."""
import json
import os

import cv2
import pytest
import torch
from detectron2.engine import HookBase

from sissi_d2.config_builder import build_config
from sissi_d2.engine.trainer import SISSITrainer
from sissi_d2.experiments.pretrain import (RECORD_NAME, WEIGHTS_NAME, pretrain_dir, pretrain_key, pretrained_weights,
                                           stage_record)
from tests.conftest import TINY_BASE_CONFIG, tiny_config, tiny_opts


def test_the_key_ignores_where_the_stage_writes_and_follows_every_other_setting(tmp_path):
    a = tiny_config(tmp_path / "a")
    assert pretrain_key(a) == pretrain_key(tiny_config(tmp_path / "b"))
    assert pretrain_key(a) != pretrain_key(tiny_config(tmp_path / "a", "SEED", "1"))
    assert pretrain_key(a) != pretrain_key(tiny_config(tmp_path / "a", "SOLVER.BASE_LR", "0.02"))
    assert pretrain_dir(a, "/cache") == os.path.join("/cache", pretrain_key(a))


class _Killed(Exception):
    pass


def _killed_at(iteration):
    class StopAt(HookBase):
        def after_step(self):
            if self.trainer.iter == iteration:
                raise _Killed()

    class KilledTrainer(SISSITrainer):
        def build_hooks(self):
            return super().build_hooks() + [StopAt()]

    return KilledTrainer


class _MustNotTrain(SISSITrainer):
    def __init__(self, cfg):
        raise AssertionError("the cached stage was trained again")


def test_a_killed_stage_resumes_then_is_reused_and_rows_start_from_its_weights(tiny_datasets, tmp_path):
    cache = str(tmp_path / "cache")
    opts = tiny_opts(tmp_path / "ignored", "SISSI.TARGET_DATASETS", "('tiny_source',)")
    # 6 source images as the target set, 2 per batch: 3 iterations per epoch, 9 in all; killed
    # in epoch 1, after the checkpoint of epoch 0 (its last iteration, 2)
    with pytest.raises(_Killed):
        pretrained_weights(TINY_BASE_CONFIG, cache, opts, trainer_cls=_killed_at(3))
    out = pretrain_dir(build_config(TINY_BASE_CONFIG, opts), cache)
    assert not os.path.exists(os.path.join(out, WEIGHTS_NAME))

    weights = pretrained_weights(TINY_BASE_CONFIG, cache, opts)
    record = json.load(open(os.path.join(out, RECORD_NAME)))
    assert weights == os.path.join(out, WEIGHTS_NAME) and os.path.isfile(weights)
    assert record["resumed_from_iteration"] == 3 and record["iterations"] == 9
    assert record["key"] == os.path.basename(out)
    assert stage_record(weights) == {"weights": weights, **record}  # what table1 puts in results.json
    # done: only the final weights stay (no resume checkpoints), and they are what a resume finds
    assert sorted(n for n in os.listdir(out) if n.endswith(".pth")) == [WEIGHTS_NAME]
    # without the optimizer's state: the weights and the iteration that says the stage is done
    final = torch.load(weights, map_location="cpu", weights_only=False)
    assert set(final) == {"model", "iteration", "trainer"} and final["trainer"] == {"iteration": 8}
    assert open(os.path.join(out, "last_checkpoint")).read() == WEIGHTS_NAME

    assert pretrained_weights(TINY_BASE_CONFIG, cache, opts, trainer_cls=_MustNotTrain) == weights
    # another setting is another stage
    other = pretrain_dir(build_config(TINY_BASE_CONFIG, opts + ["SEED", "3"]), cache)
    assert other != out and not os.path.exists(other)

    row = SISSITrainer(tiny_config(tmp_path / "row", "MODEL.WEIGHTS", weights))
    row.resume_or_load(resume=True)
    saved = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    name = "backbone.bottom_up.stem.conv1.weight"
    assert row.start_iter == 0
    assert torch.equal(row.model.state_dict()[name], torch.as_tensor(saved[name]))


def test_a_pretext_stage_hands_rows_its_backbone_only(tiny_datasets, tmp_path):
    cache = str(tmp_path / "cache")
    opts = tiny_opts(tmp_path / "ignored", "MODEL.META_ARCHITECTURE", "MaskedImagePretext",
                     "MODEL.MASKED_PRETEXT.PATCH_SIZE", "16", "SISSI.EPOCHS", "1")
    weights = pretrained_weights(TINY_BASE_CONFIG, cache, opts)
    saved = torch.load(weights, map_location="cpu", weights_only=False)
    assert saved["model"] and all(k.startswith("backbone.") for k in saved["model"])  # the decoder is gone
    assert saved["iteration"] == stage_record(weights)["iterations"] - 1  # a resume finds it finished
    assert set(saved) == {"model", "iteration", "trainer"} and set(saved["trainer"]) == {"iteration"}  # no optimizer
    assert stage_record(weights)["metrics"] == {}  # no labels, nothing scored
    figure = cv2.imread(stage_record(weights)["figure"])
    assert figure is not None and figure.shape[1] > 3 * 96  # three panels per training image

    row = SISSITrainer(tiny_config(tmp_path / "row", "MODEL.WEIGHTS", weights))
    row.resume_or_load(resume=True)
    state = row.model.state_dict()
    assert set(saved["model"]) == {k for k in state if k.startswith("backbone.")}
    assert all(torch.equal(state[k], torch.as_tensor(v)) for k, v in saved["model"].items())
    assert pretrained_weights(TINY_BASE_CONFIG, cache, opts, trainer_cls=_MustNotTrain) == weights

    # stopped after its weights were cut and before its record: it finishes without training again
    os.remove(os.path.join(os.path.dirname(weights), RECORD_NAME))
    assert pretrained_weights(TINY_BASE_CONFIG, cache, opts) == weights
    again = stage_record(weights)
    assert again["resumed_from_iteration"] == again["iterations"] and again["figure"] == stage_record(weights)["figure"]
    assert os.path.isfile(again["figure"])
