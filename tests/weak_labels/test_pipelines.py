"""Weak-label pipelines on cells drawn here: each finds most of them, and none crashes on odd input."""
import cv2
import numpy as np
import pytest

import sissi_d2  # noqa: F401  (compatibility patches first)
from sissi_d2.data.image_io import to_uint8
from sissi_d2.weak_labels import (
    WEAK_LABEL_PIPELINE_REGISTRY,
    alive_boxes,
    available_pipelines,
    dead_boxes,
    inhibited_boxes,
    make_weak_labels,
    nms,
    phase_boxes,
    size_scale,
)

PIPELINES = {"alive": alive_boxes, "inhibited": inhibited_boxes, "dead": dead_boxes, "phase": phase_boxes}


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def _grid_centres(rng, shape, n, cols=4, rows=3, jitter=12):
    h, w = shape
    for k in range(n):
        r, c = divmod(k, cols)
        yield (int((c + 0.5) * w / cols + rng.integers(-jitter, jitter + 1)),
               int((r + 0.5) * h / rows + rng.integers(-jitter, jitter + 1)))


def bright_ellipses(seed=0, shape=(480, 640), n=12, axes=(14, 16), scale=1.0, noise=3.0):
    """Bright ellipses on a gray background (spread cells, paper scale) and their true boxes."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 90, np.float32)
    boxes = []
    for cx, cy in _grid_centres(rng, shape, n, jitter=int(12 * scale)):
        a = int(round((axes[0] + rng.integers(0, 2)) * scale))
        b = int(round((axes[1] + rng.integers(0, 3)) * scale))
        if rng.random() < 0.5:
            a, b = b, a
        cv2.ellipse(img, (cx, cy), (a, b), 0, 0, 360, 200, -1)
        boxes.append([cx - a, cy - b, cx + a + 1, cy + b + 1])
    img += rng.normal(0, noise, shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(boxes, float)


def round_blobs(seed=0, shape=(480, 640), n=12, radii=(9, 13), noise=3.0):
    """Bright discs (rounded dead cells) and their circle boxes."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 90, np.float32)
    boxes = []
    for cx, cy in _grid_centres(rng, shape, n):
        r = int(rng.integers(radii[0], radii[1] + 1))
        cv2.circle(img, (cx, cy), r, 200, -1)
        boxes.append([cx - r, cy - r, cx + r + 1, cy + r + 1])
    img += rng.normal(0, noise, shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(boxes, float)


def phase_cells(seed=0, shape=(480, 640), n=12, axes=(18, 30), noise=3.0):
    """Phase-contrast-like cells: dark granular bodies with a bright halo, on gray."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 110, np.float32)
    halo = np.zeros(shape, np.uint8)
    body = np.zeros(shape, np.uint8)
    boxes = []
    for cx, cy in _grid_centres(rng, shape, n):
        a, b = int(axes[0] + rng.integers(0, 4)), int(axes[1] + rng.integers(0, 6))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(halo, (cx, cy), (a + 3, b + 3), angle, 0, 360, 1, -1)
        one = np.zeros(shape, np.uint8)
        cv2.ellipse(one, (cx, cy), (a, b), angle, 0, 360, 1, -1)
        body |= one
        ys, xs = np.nonzero(one)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    img[(halo > 0) & (body == 0)] = 190
    img[body > 0] = 75
    img += cv2.GaussianBlur(rng.normal(0, 12, shape).astype(np.float32), (0, 0), 1.0) * (body > 0)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, noise, shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(boxes, float)


def iou_matrix(a, b):
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def recall(pred, truth, iou=0.5):
    """Fraction of true boxes matched one-to-one (greedy by IoU) at ``iou``."""
    pred = np.asarray(pred, float).reshape(-1, 4)
    if len(pred) == 0:
        return 0.0
    m = iou_matrix(truth, pred)
    found = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        found += 1
        m[i, :] = -1
        m[:, j] = -1
    return found / len(truth)


def assert_valid(boxes, scores, shape):
    h, w = shape[:2]
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (len(boxes),)
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (scores > 0).all() and (scores <= 1).all()


# ---------------------------------------------------------------------------------------------
# each pipeline finds the cells it was made for
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_alive_finds_bright_ellipses(seed):
    img, truth = bright_ellipses(seed)
    boxes, scores = alive_boxes(img)
    assert_valid(boxes, scores, img.shape)
    assert recall(boxes, truth) >= 0.9
    assert len(boxes) <= len(truth) + 2  # no flood of background boxes


@pytest.mark.parametrize("seed", [0, 1])
def test_inhibited_finds_bright_ellipses(seed):
    img, truth = bright_ellipses(seed)
    boxes, scores = inhibited_boxes(img)
    assert_valid(boxes, scores, img.shape)
    assert recall(boxes, truth) >= 0.9
    assert len(boxes) <= len(truth) + 2


@pytest.mark.parametrize("seed", [0, 1])
def test_dead_finds_round_blobs(seed):
    img, truth = round_blobs(seed)
    boxes, scores = dead_boxes(img)
    assert_valid(boxes, scores, img.shape)
    expected = truth + np.array([-10, -10, 10, 10])  # box = circle +/- 10 px at 640x480
    expected[:, [0, 1]] = np.maximum(expected[:, [0, 1]], 0)
    assert recall(boxes, expected) >= 0.9
    # the score is the accumulator rank: the best len(truth) circles are the drawn ones
    top = boxes[np.argsort(-scores)[: len(truth)]]
    assert recall(top, expected) >= 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_phase_finds_phase_contrast_cells(seed):
    img, truth = phase_cells(seed)
    boxes, scores = phase_boxes(img)
    assert_valid(boxes, scores, img.shape)
    assert recall(boxes, truth) >= 0.9
    assert recall(boxes, truth, iou=0.7) >= 0.75  # tight boxes, the halo is not the cell
    assert len(boxes) <= len(truth) + 2


def test_phase_splits_touching_cells_at_their_shared_halo():
    rng = np.random.default_rng(0)
    img = np.full((240, 320), 110, np.float32)
    for cx in (140, 196):  # two cells side by side: the halo ring of each separates the bodies
        cv2.ellipse(img, (cx, 120), (28, 20), 0, 0, 360, 190, -1)
    for cx in (140, 196):
        cv2.ellipse(img, (cx, 120), (25, 17), 0, 0, 360, 75, -1)
    img = np.clip(cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    boxes, _ = phase_boxes(img)
    truth = np.array([[115, 103, 166, 138], [171, 103, 222, 138]], float)
    assert len(boxes) == 2
    assert recall(boxes, truth) == 1.0


def test_phase_scores_rank_whole_cells_above_fragments():
    img, truth = phase_cells(3)
    # add small dark specks (debris) that must not outrank cells
    rng = np.random.default_rng(3)
    for _ in range(15):
        x, y = int(rng.integers(10, 630)), int(rng.integers(10, 470))
        cv2.circle(img, (x, y), 4, 40, -1)
    boxes, scores = phase_boxes(img)
    top = boxes[np.argsort(-scores)[: len(truth)]]
    assert recall(top, truth) >= 0.9


# ---------------------------------------------------------------------------------------------
# sizes follow the image size and cell_size
# ---------------------------------------------------------------------------------------------
def test_size_scale():
    assert size_scale((480, 640)) == pytest.approx(1.0)
    assert size_scale((960, 1280)) == pytest.approx(2.0)
    assert size_scale((480, 640), cell_size=1.5) == pytest.approx(1.5)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cell_size"):
            size_scale((480, 640), bad)
    with pytest.raises(ValueError, match="cell_size"):
        make_weak_labels(np.zeros((32, 32), np.uint8), "phase", cell_size=0)


def test_alive_area_window_follows_cell_size():
    # cells twice as large as the paper's: outside the 400..1500 px box window at cell_size 1
    img, truth = bright_ellipses(0, scale=2.0, noise=2.0)
    small, _ = alive_boxes(img)
    assert recall(small, truth) <= 0.2
    big, _ = alive_boxes(img, cell_size=2.0)
    assert recall(big, truth) >= 0.8


def test_image_size_scales_the_limits():
    img, truth = phase_cells(0)
    up = cv2.resize(img, (1280, 960), interpolation=cv2.INTER_LINEAR)
    boxes, _ = phase_boxes(up)
    assert recall(boxes, truth * 2) >= 0.9
    blobs, circles = round_blobs(0)
    up = cv2.resize(blobs, (1280, 960), interpolation=cv2.INTER_LINEAR)
    boxes, _ = dead_boxes(up)
    assert recall(boxes, circles * 2 + np.array([-20, -20, 20, 20])) >= 0.8


# ---------------------------------------------------------------------------------------------
# odd input never crashes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("kind", ["zeros", "constant", "white"])
def test_blank_images_give_no_box(name, kind):
    value = {"zeros": 0, "constant": 117, "white": 255}[kind]
    img = np.full((480, 640), value, np.uint8)
    boxes, scores = make_weak_labels(img, name)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (2, 300), (300, 3), (64, 2000)])
def test_tiny_and_thin_images(name, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    boxes, scores = make_weak_labels(img, name)
    assert_valid(boxes, scores, shape)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pure_noise(name):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    boxes, scores = make_weak_labels(img, name)
    assert_valid(boxes, scores, img.shape)


@pytest.mark.parametrize("name", ["phase", "dead"])
def test_huge_image(name):
    img, _ = phase_cells(0) if name == "phase" else round_blobs(0)
    size = (4000, 3000) if name == "dead" else (3200, 2400)  # 12 / 7.7 Mpx, cells 6x / 5x larger
    huge = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    boxes, scores = make_weak_labels(huge, name)
    assert_valid(boxes, scores, huge.shape)
    assert len(boxes) >= 6


@pytest.mark.parametrize("name", ["alive", "inhibited"])
def test_large_image(name):
    img, truth = bright_ellipses(0)
    big = cv2.resize(img, (1120, 840), interpolation=cv2.INTER_LINEAR)  # cells 1.75x larger
    boxes, scores = make_weak_labels(big, name)
    assert_valid(boxes, scores, big.shape)
    assert recall(boxes, truth * 1.75) >= 0.8


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_colour_and_deep_inputs_match_gray(name):
    draw = {"phase": phase_cells, "dead": round_blobs}.get(name, bright_ellipses)
    img, truth = draw(2)
    if name == "dead":
        truth = truth + np.array([-10, -10, 10, 10])
    ref_boxes, ref_scores = make_weak_labels(img, name)
    ref_recall = recall(ref_boxes, truth)
    assert ref_recall >= 0.8
    bgr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    for variant in (bgr, bgra, img[:, :, None]):
        boxes, scores = make_weak_labels(variant, name)
        np.testing.assert_allclose(boxes, ref_boxes)
        np.testing.assert_allclose(scores, ref_scores)
    # 16-bit and float: stretched to 8 bit between the 0.5 / 99.5 percentiles (image_io.to_uint8)
    deep_variants = [img.astype(np.uint16) * 257] + ([img.astype(np.float32) / 255.0] if name in ("phase", "dead") else [])
    for deep in deep_variants:
        boxes, scores = make_weak_labels(deep, name)
        assert_valid(boxes, scores, img.shape)
        same, same_scores = make_weak_labels(to_uint8(deep), name)
        np.testing.assert_array_equal(boxes, same)
        if name != "inhibited":  # Canny's fixed thresholds make "inhibited" contrast-dependent
            assert recall(boxes, truth) >= ref_recall - 0.1


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        phase_boxes(np.zeros((4, 4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="BGR"):
        alive_boxes(np.zeros((32, 32, 2), np.uint8))


# ---------------------------------------------------------------------------------------------
# registry and dispatch
# ---------------------------------------------------------------------------------------------
def test_registry_holds_the_pipelines():
    names = available_pipelines()
    assert {"alive", "inhibited", "dead", "phase"} <= set(names)
    for name in ("alive", "inhibited", "dead", "phase"):
        assert callable(WEAK_LABEL_PIPELINE_REGISTRY.get(name))


@pytest.mark.parametrize("name", ["dead", "phase", "inhibited"])
def test_make_weak_labels_dispatches_by_name(name):
    img, _ = round_blobs(4) if name == "dead" else phase_cells(4)
    boxes, scores = make_weak_labels(img, pipeline=name, cell_size=1.2)
    want_boxes, want_scores = PIPELINES[name](img, cell_size=1.2)
    np.testing.assert_array_equal(boxes, want_boxes)
    np.testing.assert_array_equal(scores, want_scores)


def test_unknown_pipeline_lists_valid_names():
    with pytest.raises(ValueError) as e:
        make_weak_labels(np.zeros((16, 16), np.uint8), pipeline="zombie")
    msg = str(e.value)
    assert "zombie" in msg
    for name in ("alive", "inhibited", "dead", "phase"):
        assert name in msg


def test_pipeline_parameters_pass_through():
    img, truth = phase_cells(5)
    default, _ = make_weak_labels(img, "phase")
    no_orphans_strict, _ = make_weak_labels(img, "phase", texture_k=1000.0)
    assert len(default) >= 10 and len(no_orphans_strict) == 0
    with pytest.raises(TypeError):
        make_weak_labels(img, "dead", not_a_parameter=1)


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------
def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.5], np.float32)
    keep = nms(boxes, scores, 0.15)
    assert keep.tolist() == [1, 2]
    # equal scores: the larger box wins; IoU exactly at the threshold is kept
    keep = nms(np.array([[0, 0, 10, 9.5], [0, 0, 10, 10]]), np.ones(2), 0.5)
    assert keep.tolist() == [1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_drop_small_boxes_uses_the_median_of_the_whole_set():
    from sissi_d2.weak_labels import drop_small_boxes

    cells = np.array([[0, 0, 20, 20], [30, 30, 50, 50], [60, 0, 80, 20]], np.float32)  # 400 px² each
    speck = np.array([[5, 60, 12, 67]], np.float32)  # 49 px²: below 0.25 x 400
    edge = np.array([[90, 90, 100, 100]], np.float32)  # 100 px²: exactly 0.25 x 400, kept
    labels = {
        "a.png": (np.vstack([cells, speck]), np.array([0.9, 0.8, 0.7, 0.1], np.float32)),
        "b.png": (np.vstack([cells[:1], edge]), np.array([0.6, 0.5], np.float32)),
        "c.png": (speck, np.array([0.2], np.float32)),  # only a speck: left with no box
        "d.png": (np.zeros((0, 4), np.float32), np.zeros(0, np.float32)),
    }
    out, threshold = drop_small_boxes(labels, 0.25)
    assert threshold == pytest.approx(100.0)  # median of [400 x 4, 49 x 2, 100] = 400
    assert set(out) == set(labels)
    np.testing.assert_array_equal(out["a.png"][0], cells)
    np.testing.assert_allclose(out["a.png"][1], [0.9, 0.8, 0.7], rtol=1e-6)  # scores follow their boxes
    np.testing.assert_array_equal(out["b.png"][0], np.vstack([cells[:1], edge]))
    assert out["c.png"][0].shape == (0, 4) and out["c.png"][1].shape == (0,)
    assert out["d.png"][0].shape == (0, 4)
    # fraction 0 keeps everything; an empty set gives threshold 0; a bad fraction is refused
    assert sum(len(b) for b, _ in drop_small_boxes(labels, 0.0)[0].values()) == 7
    assert drop_small_boxes({"e.png": labels["d.png"]}, 0.25)[1] == 0.0
    with pytest.raises(ValueError, match="fraction"):
        drop_small_boxes(labels, 1.0)
