"""sissi_d2.utils.visualize: boxes over images, image grids, the memorisation curve figure."""
import json

import cv2
import numpy as np
import pytest

from sissi_d2.utils.visualize import (COLORS, draw_boxes, plot_label_quality, plot_memorisation_curve, save_png,
                                     side_by_side, to_bgr)

# The first values of the method.md regression fixture (AP50 vs weak labels per epoch).
FIXTURE = [0.0591, 0.1666, 0.2074, 0.1634, 0.1848, 0.1980, 0.2287, 0.2323, 0.2290, 0.2263]


def test_draw_boxes_draws_a_copy_in_the_given_colour():
    img = np.full((40, 50), 100, np.uint8)
    out = draw_boxes(img, [[5, 6, 20, 30]], "red")
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert (img == 100).all(), "the input must not change"
    red = np.array(COLORS["red"])
    assert (out[6, 5] == red).all() and (out[29, 19] == red).all()  # corners (x1, y1 exclusive)
    assert (out[15, 12] == 100).all()  # inside stays untouched
    assert (out[0, 0] == 100).all()


def test_draw_boxes_skips_bad_boxes_and_low_scores():
    img = np.zeros((30, 30, 3), np.uint8)
    boxes = [[2, 2, 10, 10], [np.nan, 1, 5, 5], [8, 8, 8, 20], [15, 15, 25, 25]]
    out = draw_boxes(img, boxes, (0, 255, 0), scores=[0.9, 0.9, 0.9, 0.1], min_score=0.5)
    assert (out[2, 2] == (0, 255, 0)).all()
    assert not out[15:, 15:].any(), "the low-score box is skipped"
    assert not out[:, 8][11:].any(), "the zero-width box is skipped"
    assert draw_boxes(img, np.zeros((0, 4)), "green").shape == (30, 30, 3)
    assert draw_boxes(img, None, "green").shape == (30, 30, 3)


def test_draw_boxes_clips_to_the_image_and_checks_arguments():
    img = np.zeros((20, 20), np.uint8)
    out = draw_boxes(img, [[-5, -5, 40, 40]], "white")
    assert (out[0, 0] == 255).all() and (out[19, 19] == 255).all()
    with pytest.raises(ValueError, match="scores"):
        draw_boxes(img, [[1, 1, 5, 5]], "red", scores=[0.1, 0.2])
    with pytest.raises(ValueError, match="colour"):
        draw_boxes(img, [[1, 1, 5, 5]], "chartreuse")


def test_draw_boxes_writes_scores():
    img = np.zeros((60, 60), np.uint8)
    plain = draw_boxes(img, [[10, 20, 50, 50]], "green", scores=[0.87])
    labelled = draw_boxes(img, [[10, 20, 50, 50]], "green", scores=[0.87], show_scores=True)
    assert labelled[:20].sum() > plain[:20].sum()  # text above the box


def test_to_bgr_accepts_gray_bgra_and_16_bit():
    assert to_bgr(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_bgr(np.zeros((4, 5, 1), np.uint8)).shape == (4, 5, 3)
    assert to_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    deep = to_bgr(np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000)
    assert deep.dtype == np.uint8 and deep.max() > 200
    with pytest.raises(ValueError):
        to_bgr(np.zeros((4, 5, 2), np.uint8))


def test_side_by_side_layout():
    a = np.zeros((32, 40), np.uint8)
    b = np.full((32, 40, 3), 200, np.uint8)
    row = side_by_side([a, b], ["left", "right"], pad=4, title_height=18)
    assert row.shape == (4 + 18 + 32 + 4, 4 + 40 + 4 + 40 + 4, 3)
    assert (row[4 + 18 + 10, 4 + 40 + 4 + 10] == 200).all()  # second image in the second cell
    assert row[4:4 + 18, 4:44].min() < 128, "the title is written"
    grid = side_by_side([a, b, a], ncols=2, pad=2)
    assert grid.shape == (2 + 32 + 2 + 32 + 2, 2 + 40 + 2 + 40 + 2, 3)  # no titles: no title bar


def test_side_by_side_resizes_to_a_common_height():
    out = side_by_side([np.zeros((20, 20), np.uint8), np.zeros((40, 10), np.uint8)], pad=0)
    assert out.shape[0] == 40
    with pytest.raises(ValueError):
        side_by_side([])
    with pytest.raises(ValueError, match="titles"):
        side_by_side([np.zeros((4, 4), np.uint8)], ["a", "b"])


def test_save_png_creates_the_folder(tmp_path):
    path = save_png(str(tmp_path / "a" / "b" / "x.png"), np.zeros((5, 6, 3), np.uint8))
    assert cv2.imread(path).shape == (5, 6, 3)


def _report(values, horizon=31):
    from sissi_d2.algorithms.adele import MemorisationDetector

    det = MemorisationDetector(horizon=horizon, threshold=0.9, min_points=4)
    for e, v in enumerate(values):
        det.observe(e, v)
    d = det.state_dict()
    d["epochs"] = list(range(len(values)))
    return d


def test_plot_memorisation_curve_from_dict_and_file(tmp_path):
    report = _report(FIXTURE)
    assert report["fired_epoch"] == 9  # the method.md fixture fires at epoch 9
    out = plot_memorisation_curve(report, str(tmp_path / "figs" / "mem.png"))
    img = cv2.imread(out)
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    # drawn in colour: the points, the fitted curve and the firing line
    assert (np.abs(img.astype(int)[:, :, 2] - img.astype(int)[:, :, 0]) > 60).any()

    path = tmp_path / "memorisation.json"
    path.write_text(json.dumps(report))
    out2 = plot_memorisation_curve(str(path), str(tmp_path / "mem2.png"), title="from a file")
    assert cv2.imread(out2) is not None


def test_plot_memorisation_curve_without_a_fit(tmp_path):
    report = _report(FIXTURE[:2])  # too few points: no fit, not fired
    assert all(p is None for p in report["fit_params"]) and report["fired_epoch"] is None
    assert cv2.imread(plot_memorisation_curve(report, str(tmp_path / "m.png"))) is not None
    assert cv2.imread(plot_memorisation_curve({"ap50": [], "epochs": []}, str(tmp_path / "e.png"))) is not None


def test_plot_label_quality_draws_runs_and_reference(tmp_path):
    series = {"A+SISSI(S)": [(12, 40.0), (13, 45.5)], "Baseline": [(7, 10.0)], "empty": []}
    out = plot_label_quality(series, str(tmp_path / "q" / "quality.png"), reference=52.4)
    image = cv2.imread(out)
    assert image is not None and image.shape[0] > 100
    bare = cv2.imread(plot_label_quality(series, str(tmp_path / "bare.png")))
    assert bare.shape == image.shape and not np.array_equal(bare, image)  # the reference line is drawn
