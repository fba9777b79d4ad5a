"""A run killed with SIGKILL mid-epoch resumes to the same labels and weights as an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import ROOT, write_tiny_dataset
from tests.tools.test_train_net import TINY_OPTS


def _cmd(out_dir, json_path, resume=False):
    opts = TINY_OPTS + [
        "SISSI.REGISTER", f"('kill_data=coco:{json_path}',)", "SISSI.SOURCE_DATASETS", "('kill_data',)",
        "SISSI.TARGET_DATASETS", "('kill_data',)", "DATASETS.TEST", "()", "SISSI.EPOCHS", "3",
        "SISSI.IMS_PER_BATCH_SOURCE", "2", "SISSI.IMS_PER_BATCH_TARGET", "2",
        "SISSI.START_RULE", "epoch:1", "SISSI.CLONING.MODE", "on_correction",
        "SISSI.PSEUDO.SCALES", "(1.0,)", "SISSI.PSEUDO.FLIPS", "('none', 'h')",
        "SISSI.PSEUDO.MIN_VIEW_SCORE", "0.0", "SISSI.PSEUDO.WBF_SKIP_BOX_THR", "0.0",
        "SISSI.PSEUDO.SCORE_THRESH", "0.0", "SISSI.PSEUDO.TOPK", "10", "SEED", "3",
        "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out_dir),
    ]
    return [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
            os.path.join(ROOT, "configs", "cpu", "weak_only.yaml")] + (["--resume"] if resume else []) + opts


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    from sissi_d2.data.datasets import save_records_as_coco

    json_path = tmp_path / "data.json"
    save_records_as_coco(write_tiny_dataset(str(tmp_path / "imgs"), 4, 9), str(json_path))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    ref = subprocess.run(_cmd(tmp_path / "ref", json_path), capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed_dir, json_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    snapshot = killed_dir / "sissi" / "pseudo_labels" / "epoch_0001.json"
    deadline = time.time() + 300
    while not snapshot.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # during epoch 1, after its pseudo-labels were written
    proc.wait()
    assert not (killed_dir / "model_final.pth").exists()
    for p in killed_dir.rglob("*.json"):
        if p.name != "metrics.json":  # Detectron2's line-oriented event log
            json.loads(p.read_text())

    res = subprocess.run(_cmd(killed_dir, json_path, resume=True), capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]

    for name in ("epoch_0001.json", "epoch_0002.json"):
        a = json.loads((tmp_path / "ref" / "sissi" / "pseudo_labels" / name).read_text())["annotations"]
        b = json.loads((killed_dir / "sissi" / "pseudo_labels" / name).read_text())["annotations"]
        assert [x["bbox"] for x in a] == [x["bbox"] for x in b], name
    wa = torch.load(tmp_path / "ref" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(killed_dir / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
