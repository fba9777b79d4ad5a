"""Registered components in a plain Detectron2 trainer; a NaN loss stops with a clear message."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import ROOT, tiny_config, write_tiny_dataset

PLAIN_SCRIPT = textwrap.dedent('''
    import sys
    import sissi_d2
    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.engine import DefaultTrainer
    from sissi_d2.data.mappers import SISSI_MAPPER_REGISTRY
    from sissi_d2.engine import MemorisationHook
    from sissi_d2.config_builder import build_config, register_from_spec

    register_from_spec("plain_train=coco:" + sys.argv[1])
    cfg = build_config(sys.argv[2], sys.argv[4:])

    class PlainTrainer(DefaultTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            mapper = SISSI_MAPPER_REGISTRY.get("SISSITargetMapper")(cfg, True, cloning=True)
            return build_detection_train_loader(cfg, mapper=mapper)

    trainer = PlainTrainer(cfg)
    hook = MemorisationHook(cfg, DatasetCatalog.get("plain_train"), iters_per_epoch=1, horizon=10,
                            output_dir=sys.argv[3])
    trainer.register_hooks([hook])
    trainer.resume_or_load(resume=False)
    trainer.train()
    print("AP50 curve", hook.detector.ap50)
''')


def test_components_in_plain_default_trainer(tmp_path):
    from sissi_d2.data.datasets import save_records_as_coco

    json_path = tmp_path / "plain.json"
    save_records_as_coco(write_tiny_dataset(str(tmp_path / "imgs"), 2, 5), str(json_path))
    script = tmp_path / "plain_train.py"
    script.write_text(PLAIN_SCRIPT)
    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "96",
            "INPUT.MAX_SIZE_TEST", "96", "DATASETS.TRAIN", "('plain_train',)", "DATASETS.TEST", "()",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    out = subprocess.run([sys.executable, str(script), str(json_path),
                          os.path.join(ROOT, "configs", "cpu", "Base-SISSI-CPU.yaml"), str(tmp_path / "mem")] + opts,
                         capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AP50 curve" in out.stdout
    assert len(eval(out.stdout.split("AP50 curve", 1)[1].strip())) == 3  # one value per "epoch"
    assert (tmp_path / "mem" / "memorisation.json").exists()


def test_nan_loss_stops_with_last_good_checkpoint(tiny_datasets, tmp_path):
    from sissi_d2.engine import SISSITrainer

    trainer = SISSITrainer(tiny_config(tmp_path, "SISSI.EPOCHS", "3"))
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    real_forward = model.forward

    def forward(batch):
        losses = real_forward(batch)
        if trainer.iter >= 3:  # diverge in the second epoch, after the epoch-1 checkpoint
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    model.forward = forward
    with pytest.raises(FloatingPointError, match="last good checkpoint is .*model_0000001.pth"):
        trainer.train()
    ckpt = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
