"""tools/export.py: a tiny Faster R-CNN saved as TorchScript runs in a ten-line script without
sissi_d2 or Detectron2 and gives the eager model's boxes."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, draw_cells
from tests.tools.test_train_net import TINY_OPTS

EXPORT = os.path.join(ROOT, "tools", "export.py")
CONFIG = os.path.join(ROOT, "configs", "cpu", "Base-SISSI-CPU.yaml")
# An untrained model scores low: keep all its boxes so that there is something to compare.
OPTS = TINY_OPTS + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.DEVICE", "cpu"]

# The script of tools/export.py's help, plus the check that Detectron2 was never imported, and
# the boxes printed for the test to read.
RUN_EXPORTED = """\
import json, sys
import cv2
import torch
import torchvision  # noqa: F401  (registers torchvision::nms and roi_align)

model = torch.jit.load(sys.argv[1])
image = torch.from_numpy(cv2.imread(sys.argv[2], cv2.IMREAD_UNCHANGED))
with torch.no_grad():
    boxes, scores, classes = model(image)
assert not any(m.startswith(("detectron2", "sissi_d2")) for m in sys.modules), "needs no detectron2"
print(json.dumps({"boxes": boxes.tolist(), "scores": scores.tolist(), "classes": classes.tolist()}))
"""


def _env():
    # one OpenMP thread: on a shared 2-core machine competing threads slow a tiny model down
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(config, weights file, eager model) of a randomly initialised tiny Faster R-CNN."""
    from detectron2.modeling import build_model

    import sissi_d2  # noqa: F401
    from sissi_d2.config import add_sissi_config
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_sissi_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(OPTS)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = tmp_path_factory.mktemp("export") / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    return cfg, str(weights), model


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    _, weights, _ = tiny_model
    out = tmp_path_factory.mktemp("exported") / "model.ts"
    proc = subprocess.run(
        [sys.executable, EXPORT, "--config-file", CONFIG, "--weights", weights, "--output", str(out)] + OPTS,
        capture_output=True, text=True, env=_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the same as the eager model" in proc.stderr
    return out


def _run_exported(model_file, image_file):
    script = model_file.parent / "run_exported.py"
    script.write_text(RUN_EXPORTED)
    proc = subprocess.run([sys.executable, str(script), str(model_file), str(image_file)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _eager(model, bgr):
    with torch.no_grad():
        image = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).float()
        return model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]


def test_run_exported_script_is_ten_lines():
    code = [line for line in RUN_EXPORTED.splitlines() if line.strip()]
    # the assert on sys.modules and the JSON print are the test's additions
    assert len(code) - 2 <= 10


def test_exported_model_gives_eager_boxes(tiny_model, exported, tmp_path):
    _, _, model = tiny_model
    gray, _ = draw_cells(np.random.default_rng(5), size=96)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    image_file = tmp_path / "cells.png"
    cv2.imwrite(str(image_file), bgr)

    result = _run_exported(exported, image_file)
    eager = _eager(model, bgr)  # 96 x 96 is the test size: no resize on either side
    assert len(result["boxes"]) == len(eager) > 0
    np.testing.assert_allclose(result["boxes"], eager.pred_boxes.tensor.numpy(), atol=1e-3)
    np.testing.assert_allclose(result["scores"], eager.scores.numpy(), atol=1e-5)
    assert result["classes"] == eager.pred_classes.tolist()


def test_exported_model_takes_gray_images_of_other_sizes(exported, tmp_path):
    gray, _ = draw_cells(np.random.default_rng(6), size=150)
    gray = np.ascontiguousarray(gray[:, :120])  # 150 x 120: resized to 96 x 77 inside
    image_file = tmp_path / "gray.png"
    cv2.imwrite(str(image_file), gray)

    result = _run_exported(exported, image_file)
    boxes = np.array(result["boxes"]).reshape(-1, 4)
    assert len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 150).all()
    # in the image's own pixels: some box reaches beyond the 96 x 77 detector input
    assert boxes[:, 3].max() > 96 or boxes[:, 2].max() > 77


def test_resized_shape_matches_detectron2():
    from detectron2.data.transforms import ResizeShortestEdge

    from tests.tools.test_predict import load_tool

    export = load_tool("export")
    for h, w in ((150, 120), (96, 96), (1024, 1022), (300, 2000), (77, 53)):
        assert export.resized_shape(h, w, 96, 160) == ResizeShortestEdge.get_output_shape(h, w, 96, 160)
