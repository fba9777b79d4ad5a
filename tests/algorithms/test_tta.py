"""TTA views: sizes, image transforms, and exact box round trips through every view."""
import numpy as np
import pytest

from sissi_d2.algorithms.tta import (
    TTAView,
    apply_view,
    apply_view_to_boxes,
    make_views,
    undo_view,
    view_size,
)

SIZES = [(37, 53), (64, 64), (480, 640), (101, 17)]


def _random_boxes(rng, height, width, n=25):
    x = np.sort(rng.uniform(0, width, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    # boxes touching every border too
    edge = np.array([[0, 0, width / 3, height / 4], [width / 2, height / 2, width, height]])
    return np.vstack([boxes, edge])


def test_default_views_are_the_20_of_the_paper():
    views = make_views()
    assert len(views) == 20 == len(set(views))
    assert sorted({v.scale for v in views}) == [0.8, 0.9, 1.0, 1.1, 1.2]
    flips = {(v.hflip, v.vflip) for v in views}
    assert flips == {(False, False), (True, False), (False, True), (True, True)}
    assert TTAView(1.0, False, False) in views


def test_bad_flip_or_scale_is_rejected_by_name():
    with pytest.raises(ValueError, match="'diag'"):
        make_views(flips=("none", "diag"))
    with pytest.raises(ValueError, match="scale"):
        make_views(scales=(1.0, 0.0))
    assert len(make_views(scales=(1.0,), flips=("h",))) == 1


def test_view_size_rounds_and_is_at_least_one():
    assert view_size(TTAView(0.8, False, False), 37, 53) == (30, 42)  # 29.6 -> 30, 42.4 -> 42
    assert view_size(TTAView(1.1, True, True), 37, 53) == (41, 58)  # 40.7, 58.3
    assert view_size(TTAView(0.5, False, False), 3, 5) == (2, 3)  # halves round up
    assert view_size(TTAView(0.01, False, False), 5, 5) == (1, 1)


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3), (37, 53, 1), (20, 30, 2)])
def test_apply_view_shapes_and_flips(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    for view in make_views():
        out = apply_view(image, view)
        h, w = view_size(view, *shape[:2])
        assert out.shape == (h, w) + tuple(shape[2:])
        assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    # At scale 1 the flips are exact pixel permutations.
    assert np.array_equal(apply_view(image, TTAView(1.0, False, False)), image)
    assert np.array_equal(apply_view(image, TTAView(1.0, True, False)), image[:, ::-1])
    assert np.array_equal(apply_view(image, TTAView(1.0, False, True)), image[::-1])
    assert np.array_equal(apply_view(image, TTAView(1.0, True, True)), image[::-1, ::-1])


def test_image_and_box_transforms_agree():
    # A bright rectangle drawn in the original must land where apply_view_to_boxes says.
    height, width = 61, 83
    image = np.zeros((height, width), np.uint8)
    box = np.array([[10.0, 20.0, 40.0, 50.0]])
    image[20:50, 10:40] = 255
    for view in make_views():
        out = apply_view(image, view)
        x1, y1, x2, y2 = apply_view_to_boxes(box, view, height, width)[0]
        rows = slice(int(np.ceil(y1)) + 1, int(np.floor(y2)) - 1)
        cols = slice(int(np.ceil(x1)) + 1, int(np.floor(x2)) - 1)
        inside = out[rows, cols]
        assert inside.min() == 255, view
        grown = out.copy()
        rows = slice(max(0, int(y1) - 1), int(np.ceil(y2)) + 1)
        cols = slice(max(0, int(x1) - 1), int(np.ceil(x2)) + 1)
        grown[rows, cols] = 0
        assert grown.max() == 0, view  # nothing bright outside the mapped box


@pytest.mark.parametrize("height,width", SIZES)
def test_undo_inverts_every_view_exactly(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    boxes = _random_boxes(rng, height, width)
    for view in make_views():
        # A fake model that finds exactly the known boxes in the view it is shown.
        predicted = apply_view_to_boxes(boxes, view, height, width)
        view_h, view_w = view_size(view, height, width)
        assert predicted.min() >= -1e-9
        assert predicted[:, [0, 2]].max() <= view_w + 1e-9
        assert predicted[:, [1, 3]].max() <= view_h + 1e-9
        assert np.all(predicted[:, 2] >= predicted[:, 0])
        assert np.all(predicted[:, 3] >= predicted[:, 1])
        restored = undo_view(predicted, view, height, width)
        np.testing.assert_allclose(restored, boxes, atol=1e-4, err_msg=str(view))


def test_nominal_scale_would_not_be_exact():
    # Why undo_view divides by the real ratio: 37 * 0.8 = 29.6 is rounded to 30 rows.
    view = TTAView(0.8, False, True)
    boxes = np.array([[5.0, 30.0, 20.0, 37.0]])
    predicted = apply_view_to_boxes(boxes, view, 37, 53)
    naive = predicted.copy()
    naive[:, [1, 3]] = 30 - predicted[:, [3, 1]]
    naive /= view.scale
    assert np.abs(naive - boxes).max() > 0.1
    np.testing.assert_allclose(undo_view(predicted, view, 37, 53), boxes, atol=1e-9)


def test_undo_clips_and_handles_empty():
    view = TTAView(1.2, True, False)
    out = undo_view(np.array([[-10.0, -5.0, 1000.0, 1000.0]]), view, 37, 53)
    assert out.tolist() == [[0.0, 0.0, 53.0, 37.0]]
    assert undo_view(np.zeros((0, 4)), view, 37, 53).shape == (0, 4)
    assert undo_view([], view, 37, 53).shape == (0, 4)
    with pytest.raises(ValueError, match="Nx4"):
        undo_view(np.zeros((3, 5)), view, 37, 53)
