"""tools/train_net.py end to end: 2 gloo processes train, then --eval-only prints the COCO table."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_tiny_dataset

TINY_OPTS = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0",
    "SISSI.SOURCE_VAL_DATASETS", "()", "SISSI.EPOCHS", "1", "SOLVER.WARMUP_ITERS", "1",
    # the CPU rows' recipe draws each target image 6 times per epoch and records the memorisation
    # curve; one draw and no curve keep these command-line tests short
    "SISSI.TARGET_REPEATS", "1", "SISSI.ADELE.TRACK", "False",
]


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    from sissi_d2.data.datasets import save_records_as_coco

    root = tmp_path_factory.mktemp("cli")
    paths = {}
    for name, n, seed in (("src", 4, 1), ("tgt", 4, 2), ("test", 2, 3)):
        recs = write_tiny_dataset(str(root / name), n, seed)
        paths[name] = str(root / f"{name}.json")
        save_records_as_coco(recs, paths[name])
    return paths


def _run(args, cwd=ROOT):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py")] + args,
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _register_opts(paths):
    reg = "(" + ",".join(f"'cli_{k}=coco:{v}'" for k, v in paths.items()) + ",)"
    return ["SISSI.REGISTER", reg, "SISSI.SOURCE_DATASETS", "('cli_src',)",
            "SISSI.TARGET_DATASETS", "('cli_tgt',)", "DATASETS.TEST", "('cli_test',)"]


def test_two_process_training_then_eval_only(coco_data, tmp_path):
    cfg = os.path.join(ROOT, "configs", "cpu", "weak_only.yaml")
    opts = TINY_OPTS + _register_opts(coco_data) + ["OUTPUT_DIR", str(tmp_path),
            "SISSI.IMS_PER_BATCH_SOURCE", "2", "SISSI.IMS_PER_BATCH_TARGET", "2", "TEST.EVAL_PERIOD", "0"]
    out = _run(["--config-file", cfg, "--num-gpus", "2"] + opts)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gloo" in out.stderr + out.stdout
    ckpt = tmp_path / "model_final.pth"
    assert ckpt.exists()

    out = _run(["--config-file", cfg, "--eval-only"] + opts + ["MODEL.WEIGHTS", str(ckpt),
               "OUTPUT_DIR", str(tmp_path / "eval")])
    assert out.returncode == 0, out.stderr[-3000:]
    for col in ("AP50", "AP75", "AP", "AR"):
        assert col in out.stdout
    assert (tmp_path / "eval" / "inference" / "cli_test" / "metrics.json").exists()


def test_eval_only_with_several_readers(coco_data, tmp_path):
    cfg = os.path.join(ROOT, "configs", "cpu", "weak_only.yaml")
    opts = TINY_OPTS + _register_opts(coco_data) + ["OUTPUT_DIR", str(tmp_path), "SISSI.EPOCHS", "1"]
    assert _run(["--config-file", cfg] + opts).returncode == 0
    out = _run(["--config-file", cfg, "--eval-only", "--eval-reader", coco_data["test"], "--eval-reader", coco_data["src"]]
               + opts + ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")])
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout[out.stdout.rindex("| dataset"):]
    for reader in ("| dataset ", "| test ", "| src ", "| mean of readers "):
        assert reader in table


def test_bad_key_and_missing_weights_are_clear(coco_data, tmp_path):
    cfg = os.path.join(ROOT, "configs", "cpu", "weak_only.yaml")
    out = _run(["--config-file", cfg, "SISSI.START_RUEL", "adele"])
    assert out.returncode != 0 and "START_RUEL" in out.stderr
    out = _run(["--config-file", cfg, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "none.pth")]
               + _register_opts(coco_data))
    assert out.returncode != 0 and "none.pth" in out.stderr
