"""tools/points.py boxes / preview: an export of clicks -> COCO boxes -> cut-paste preview."""
import os
import sys

import cv2
import numpy as np

from tests.conftest import ROOT, draw_cells

sys.path.insert(0, os.path.join(ROOT, "tools"))


def test_boxes_then_preview(tmp_path, capsys):
    import points as tool

    from sissi_d2.data.label_files import load_coco_boxes

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,x,y"]
    for i in range(2):
        img, boxes = draw_cells(rng)
        cv2.imwrite(str(images / f"img{i}.png"), img)
        rows += [f"img{i}.png,{(b[0] + b[2]) / 2},{(b[1] + b[3]) / 2}" for b in boxes]
    (tmp_path / "clicks.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "boxes.json"
    assert tool.main(["boxes", str(tmp_path / "clicks.csv"), "--images", str(images), "--cell-size", "16",
                      "--output", str(out)]) == 0
    records = load_coco_boxes(out)
    assert [len(r["annotations"]) for r in records] == [5, 5]
    assert "10 boxes on 2 images (fixed sizes)" in capsys.readouterr().out
    png = tmp_path / "preview.png"
    assert tool.main(["preview", str(out), "--output", str(png), "--count", "2", "SISSI.SYNTH.COUNT", "(3, 3)"]) == 0
    assert "10 patches from 2 images" in capsys.readouterr().out
    assert cv2.imread(str(png)).shape[1] > 150


def test_compare_plans(capsys):
    import points as tool
    import pytest

    assert not tool.parse_args(["compare"]).full and not tool.parse_args(["compare"]).quick  # the real plan, < 1 h
    assert tool.parse_args(["compare", "--full", "--plan-only"]).full
    args = tool.parse_args(["compare", "SISSI.SYNTH.CANVAS", "blank", "--fractions", "25", "50", "100"])
    assert args.fractions == [25, 50, 100] and args.opts == ["SISSI.SYNTH.CANVAS", "blank"]
    with pytest.raises(SystemExit):
        tool.parse_args(["compare", "--full", "--quick"])
    assert "not allowed with argument" in capsys.readouterr().err
