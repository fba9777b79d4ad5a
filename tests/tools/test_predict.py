"""tools/predict.py: folders, globs, 8/16-bit gray, RGBA; batched plain and TTA inference; counts,
overlays; a corrupt or missing image is named in a one-line error (or skipped with --skip-bad)."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, tiny_config, write_tiny_dataset

PREDICT = os.path.join(ROOT, "tools", "predict.py")


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(script, args, timeout=300):
    # one thread: on a shared 2-core machine OpenMP threads spinning against each other make a
    # tiny forward pass 20x slower
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, script] + [str(a) for a in args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny in-process forward passes run much faster on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny model saved by DetectionCheckpointer, and its config as a yaml file."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    root = tmp_path_factory.mktemp("predict_model")
    cfg = tiny_config(root)
    config_file = root / "tiny.yaml"
    config_file.write_text(cfg.dump())
    model = build_model(cfg)
    DetectionCheckpointer(model, str(root)).save("tiny")
    return str(config_file), str(root / "tiny.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 8-bit gray PNGs, a 16-bit gray PNG, an 8-bit RGBA PNG and a 16-bit RGB TIFF,
    plus a Cellpose mask that a folder input must leave out; and a second folder with a TIFF."""
    root = tmp_path_factory.mktemp("predict_images")
    recs = write_tiny_dataset(str(root / "imgs"), 2, seed=5)
    gray = cv2.imread(recs[0]["file_name"], cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / "imgs" / "deep16.png"), gray.astype(np.uint16) * 200 + 1000)
    rgba = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    rgba[..., 3] = 100
    cv2.imwrite(str(root / "imgs" / "alpha.png"), rgba)
    cv2.imwrite(str(root / "imgs" / "img000_masks.png"), np.zeros_like(gray))
    (root / "more").mkdir()
    cv2.imwrite(str(root / "more" / "rgb16.tif"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.uint16) * 64)
    cv2.imwrite(str(root / "more" / "wide.png"), cv2.resize(gray, (128, 64)))
    assert cv2.imread(str(root / "imgs" / "deep16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return root


def test_predict_folder_and_glob(tiny_model, images, tmp_path):
    config_file, weights = tiny_model
    out_dir = tmp_path / "out"
    out = run_tool(PREDICT, ["--config-file", config_file, "--weights", weights, "--output", out_dir,
                             images / "imgs", str(images / "more" / "*.tif"), "--overlays", "--batch-size", "2",
                             "--score-thresh", "0.3", "MODEL.DEVICE", "cpu"])
    assert out.returncode == 0, out.stderr[-3000:]
    expected = ["alpha.png", "deep16.png", "img000.png", "img001.png", "rgb16.tif"]  # not img000_masks.png

    det = json.loads((out_dir / "detections.json").read_text())
    assert [os.path.basename(i["file_name"]) for i in det["images"]] == expected
    assert all(os.path.isabs(i["file_name"]) and os.path.isfile(i["file_name"]) for i in det["images"])
    assert all((i["height"], i["width"]) == (96, 96) for i in det["images"])
    assert det["info"]["score_thresh"] == 0.3 and det["info"]["tta"] is False
    assert det["annotations"], "the untrained tiny model still outputs boxes above 0.05"
    ids = {i["id"] for i in det["images"]}
    for a in det["annotations"]:
        assert a["image_id"] in ids and a["category_id"] == 1 and 0 <= a["score"] <= 1
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96.01 and y + h <= 96.01

    with open(out_dir / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["file"]) for r in rows] == expected
    for img, row in zip(det["images"], rows):  # counts agree with the detections at the threshold
        scores = [a["score"] for a in det["annotations"] if a["image_id"] == img["id"]]
        kept = [s for s in scores if s >= 0.3]
        assert int(row["count"]) == len(kept)
        if kept:
            assert float(row["mean_score"]) == pytest.approx(np.mean(kept), abs=1e-3)
        else:
            assert row["mean_score"] == ""

    overlays = sorted(os.listdir(out_dir / "overlays"))
    assert overlays == sorted(os.path.splitext(n)[0] + ".png" for n in expected)
    ov = cv2.imread(str(out_dir / "overlays" / "deep16.png"))
    assert ov is not None and ov.shape[1] == 96 and ov.shape[0] > 96  # the image plus a title band
    assert "5 image(s)" in out.stdout


def test_corrupt_image_is_named_then_skipped_with_tta(tiny_model, images, tmp_path):
    config_file, weights = tiny_model
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = cv2.imread(str(images / "imgs" / "img001.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / "good.png"), good)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a complete png")
    base = ["--config-file", config_file, "--weights", weights, "--output", tmp_path / "out", folder, "--no-progress"]

    out = run_tool(PREDICT, base)
    assert out.returncode != 0
    assert "corrupt.png" in out.stderr and "--skip-bad" in out.stderr
    assert "Traceback" not in out.stderr

    out = run_tool(PREDICT, base + ["--skip-bad", "--tta", "--batch-size", "4", "--score-thresh", "0.0"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "corrupt.png" in out.stdout + out.stderr and "1 unreadable image(s) skipped" in out.stdout
    det = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [os.path.basename(i["file_name"]) for i in det["images"]] == ["good.png"]
    assert [os.path.basename(s["file_name"]) for s in det["skipped"]] == ["corrupt.png"]
    assert det["info"]["tta"] is True
    # the tiny config accepts every fused box (SISSI.PSEUDO thresholds 0, TOPK 20)
    assert 0 < len(det["annotations"]) <= 20
    with open(tmp_path / "out" / "counts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(rows[0]["count"]) == len(det["annotations"])


def test_tta_matches_the_pseudo_label_path(tiny_model, images):
    """--tta gives exactly RecordPredictor.fused_boxes (the training pseudo-labels) on read_bgr8."""
    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.engine.inference import RecordPredictor
    from sissi_d2.engine.predict import build_inference_model, predict_files
    from sissi_d2.config_builder import build_config

    config_file, weights = tiny_model
    cfg = build_config(config_file, ["MODEL.DEVICE", "cpu"])
    model = build_inference_model(cfg, weights)
    path = str(images / "imgs" / "deep16.png")
    preds, skipped = predict_files(cfg, model, [path], batch_size=3, tta=True, show_progress=False)
    with torch.no_grad():
        boxes, scores = RecordPredictor(cfg, batch_size=3).fused_boxes(model, read_bgr8(path))
    order = np.argsort(-np.asarray(scores), kind="stable")
    assert not skipped and len(preds) == 1
    np.testing.assert_allclose(preds[0].boxes, np.asarray(boxes).reshape(-1, 4)[order], atol=1e-3)
    np.testing.assert_allclose(preds[0].scores, np.asarray(scores)[order], atol=1e-5)
    # plain inference in batches equals one image at a time, also with an image of another size
    paths = [str(images / "imgs" / "img000.png"), str(images / "more" / "wide.png"),
             str(images / "imgs" / "img001.png")]
    batched, _ = predict_files(cfg, model, paths, batch_size=3, show_progress=False)
    single, _ = predict_files(cfg, model, paths, batch_size=1, show_progress=False)
    assert [p.file_name for p in batched] == paths and (batched[1].height, batched[1].width) == (64, 128)
    for a, b in zip(batched, single):
        assert a.file_name == b.file_name and len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)


def test_input_errors_are_clear(tiny_model, images, tmp_path, capsys):
    config_file, weights = tiny_model
    tool = load_tool("predict")
    base = ["--config-file", config_file, "--weights", weights, "--output", str(tmp_path / "o")]

    assert tool.main(base + [str(tmp_path / "nothing" / "*.png")]) == 2
    err = capsys.readouterr().err
    assert "No image files" in err and "nothing" in err

    assert tool.main(base + [str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "missing.png" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert tool.main(base + [str(empty)]) == 2
    assert "No image files" in capsys.readouterr().err
    assert tool.main(base + [str(images / "imgs"), "SISSI.NOT_A_KEY", "1"]) == 2
    assert "NOT_A_KEY" in capsys.readouterr().err
    # a config whose model differs from the checkpoint's is an error, not half-loaded weights
    assert tool.main(base + [str(images / "imgs"), "MODEL.FPN.OUT_CHANNELS", "64"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "tiny.pth" in err and "(32," in err


def test_config_overrides_follow_the_inputs():
    tool = load_tool("predict")
    args = tool.parse_args(["--config-file", "c.yaml", "--output", "o", "a.png", "dir/*.tif",
                            "MODEL.DEVICE", "cuda", "INPUT.MIN_SIZE_TEST", "1024"])
    assert args.inputs == ["a.png", "dir/*.tif"]
    assert args.opts == ["MODEL.DEVICE", "cuda", "INPUT.MIN_SIZE_TEST", "1024"]
