"""Synthetic-like images: boxed cells keep their structure and place, the rest is blurred."""
import cv2
import numpy as np
import pytest

from sissi_d2.algorithms.cloning import blur_background, boxes_to_mask, make_synthetic_like

KSIZE, SIGMA = 31, 10.0
MARGIN = 7  # box margin around a cell: OpenCV erodes the cloning mask by ~4 px


def _cell_image(height, width, cells, seed=0):
    """Noisy background (~90) with bright textured elliptic cells; returns image and masks."""
    rng = np.random.default_rng(seed)
    image = rng.normal(90, 4, (height, width))
    masks = []
    for cx, cy, ax, ay in cells:
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 255, -1)
        texture = cv2.GaussianBlur(rng.normal(0, 30, (height, width)), (0, 0), 1.0)
        image = np.where(mask > 0, 170 + texture, image)
        masks.append(mask > 0)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _cell_box(cell, height, width, margin=MARGIN):
    cx, cy, ax, ay = cell
    return [max(0, cx - ax - margin), max(0, cy - ay - margin),
            min(width, cx + ax + margin + 1), min(height, cy + ay + margin + 1)]


def _laplacian(image):
    return cv2.Laplacian(image.astype(np.float64), cv2.CV_64F)


def _structure_corr(a, b, region):
    """Correlation of the Laplacians of a and b over a boolean region."""
    la, lb = _laplacian(a)[region], _laplacian(b)[region]
    return float(np.corrcoef(la, lb)[0, 1])


def _best_shift(out, image, region):
    scores = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(image, (dy, dx), axis=(0, 1))
            scores[(dx, dy)] = _structure_corr(out, shifted, region)
    return max(scores, key=scores.get)


# (cx, cy, half-axis x, half-axis y); odd image size on purpose
HEIGHT, WIDTH = 121, 163
BOXED = [(40, 40, 12, 9), (100, 70, 10, 12), (5, 95, 11, 9), (158, 20, 10, 10), (120, 116, 12, 8)]
UNBOXED = [(80, 25, 10, 8), (40, 95, 9, 11)]


@pytest.fixture(scope="module")
def scene():
    image, masks = _cell_image(HEIGHT, WIDTH, BOXED + UNBOXED)
    boxes = np.array([_cell_box(c, HEIGHT, WIDTH) for c in BOXED], dtype=np.float64)
    out = make_synthetic_like(image, boxes, KSIZE, SIGMA)
    return image, masks, boxes, out


def test_shape_dtype_and_inputs_untouched(scene):
    image, _, boxes, out = scene
    assert out.shape == image.shape and out.dtype == np.uint8
    image_copy, boxes_copy = image.copy(), boxes.copy()
    make_synthetic_like(image, boxes, KSIZE, SIGMA)
    assert np.array_equal(image, image_copy) and np.array_equal(boxes, boxes_copy)
    # deterministic (OpenCV's in-place mask edits would make a second call differ)
    assert np.array_equal(make_synthetic_like(image, boxes, KSIZE, SIGMA), out)


def test_boxed_cells_keep_their_structure_in_place(scene):
    image, masks, _, out = scene
    blurred = blur_background(image, KSIZE, SIGMA)
    for cell, mask in zip(BOXED, masks[: len(BOXED)]):
        assert _structure_corr(out, image, mask) > 0.8, cell
        assert _structure_corr(blurred, image, mask) < 0.3, cell
        assert _best_shift(out, image, mask) == (0, 0), cell
        # the cell stays brighter than the background around it
        assert out[mask].mean() > np.median(out) + 30, cell


def test_cells_at_the_image_border_keep_their_border_pixels(scene):
    image, masks, _, out = scene
    # cells 2 and 3 are cut by the left and right border; check the 3 outermost columns
    for index, columns in [(2, slice(0, 3)), (3, slice(WIDTH - 3, WIDTH))]:
        strip = np.zeros_like(masks[index])
        strip[:, columns] = True
        region = masks[index] & strip
        region[[0, -1], :] = False  # the Laplacian needs both vertical neighbours
        assert region.sum() > 20
        assert _structure_corr(out, image, region) > 0.7, index
        # intensities, not just gradients, stay those of the cell
        assert np.abs(out[region].astype(int) - image[region]).mean() < 25, index


def test_unboxed_cells_vanish(scene):
    image, masks, _, out = scene
    blurred = blur_background(image, KSIZE, SIGMA)
    for cell, mask in zip(UNBOXED, masks[len(BOXED):]):
        # the cell's box: the cell against its background
        region = boxes_to_mask(HEIGHT, WIDTH, [_cell_box(cell, HEIGHT, WIDTH, margin=3)]) > 0
        original_std = image[region].std()
        out_std, blurred_std = out[region].std(), blurred[region].std()
        assert original_std > 30
        assert out_std < 1.5 * blurred_std + 1.0, cell
        assert out_std < 0.5 * original_std, cell
        # no texture left: the Laplacian energy is that of a blur, not the cell's
        out_energy = np.abs(_laplacian(out)[mask]).mean()
        assert out_energy < 0.1 * np.abs(_laplacian(image)[mask]).mean(), cell
        assert out_energy < 2 * np.abs(_laplacian(blurred)[mask]).mean() + 0.5, cell


def test_no_shift_for_boxes_touching_right_and_bottom_borders():
    # OpenCV trims the mask's outer ring; a centre computed from the untrimmed rect would
    # shift the content by one pixel when the mask touches the right/bottom border.
    for height, width in [(64, 81), (37, 53), (50, 50)]:
        cells = [(width - 8, height - 8, 10, 10), (10, 10, 8, 8)]
        image, _ = _cell_image(height, width, cells, seed=3)
        for box in ([width - 30, height - 25, width, height], [0, 0, width, height],
                    [3, 0, width - 5, height]):
            out = make_synthetic_like(image, [box], KSIZE, SIGMA)
            region = boxes_to_mask(height, width, [box]).astype(bool)
            region &= cv2.erode(region.astype(np.uint8), np.ones((11, 11), np.uint8),
                                borderType=cv2.BORDER_REPLICATE).astype(bool)
            assert _best_shift(out, image, region) == (0, 0), (height, width, box)


def test_whole_image_box_keeps_the_image_structure():
    image, _ = _cell_image(57, 75, [(20, 20, 10, 8), (60, 40, 9, 9)], seed=5)
    out = make_synthetic_like(image, [[0, 0, 75, 57]], KSIZE, SIGMA)
    interior = np.zeros(image.shape, bool)
    interior[1:-1, 1:-1] = True
    assert _structure_corr(out, image, interior) > 0.9


@pytest.mark.parametrize("boxes", [[], np.zeros((0, 4)), [[10, 10, 10, 20]], [[30, 30, 5, 5]],
                                   [[np.nan, 0, 5, 5]], [[500, 500, 600, 600]]])
def test_no_valid_box_gives_exactly_the_blurred_image(scene, boxes):
    image = scene[0]
    assert np.array_equal(make_synthetic_like(image, boxes, KSIZE, SIGMA),
                          blur_background(image, KSIZE, SIGMA))


def test_gray_color_and_single_channel_agree(scene):
    image, _, boxes, out = scene
    color = np.repeat(image[:, :, None], 3, axis=2)
    out_color = make_synthetic_like(color, boxes, KSIZE, SIGMA)
    assert out_color.shape == color.shape and out_color.dtype == np.uint8
    assert np.array_equal(out_color[:, :, 0], out)
    assert np.array_equal(out_color[:, :, 1], out_color[:, :, 2])
    out_single = make_synthetic_like(image[:, :, None], boxes, KSIZE, SIGMA)
    assert out_single.shape == image.shape + (1,)
    assert np.array_equal(out_single[:, :, 0], out)


def test_color_channels_are_processed_independently():
    planes = [_cell_image(45, 61, [(20, 20, 9, 7)], seed=s)[0] for s in (1, 2, 3)]
    image = np.stack(planes, axis=2)
    box = [[6, 6, 36, 34]]
    out = make_synthetic_like(image, box, KSIZE, SIGMA)
    for channel in range(3):
        region = np.zeros((45, 61), bool)
        region[12:28, 12:30] = True
        assert _structure_corr(out[:, :, channel], planes[channel], region) > 0.8
    assert not np.array_equal(out[:, :, 0], out[:, :, 1])


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 3, 3), (5, 1), (9, 7), (16, 16, 1)])
def test_tiny_images(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    height, width = shape[:2]
    for boxes in ([[0, 0, width, height]], [[0, 0, 1, 1]], [[width / 2, 0, width, height / 2]]):
        out = make_synthetic_like(image, boxes, 3, 1.0)
        assert out.shape == image.shape and out.dtype == np.uint8


def test_mask_margin_preserves_the_box_edges():
    # Cells filling their boxes: with the default the outer pixels of the box are lost to
    # OpenCV's mask erosion; a margin of 4 keeps them.
    image, masks = _cell_image(90, 120, [(40, 45, 18, 14), (90, 40, 14, 18)], seed=11)
    boxes = [_cell_box(cell, 90, 120, margin=0) for cell in [(40, 45, 18, 14), (90, 40, 14, 18)]]
    ring = boxes_to_mask(90, 120, boxes).astype(bool)
    ring &= ~cv2.erode(ring.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    ring &= masks[0] | masks[1]
    plain = make_synthetic_like(image, boxes, KSIZE, SIGMA)
    grown = make_synthetic_like(image, boxes, KSIZE, SIGMA, mask_margin=4)
    assert _structure_corr(grown, image, ring) > 0.8
    assert _structure_corr(plain, image, ring) < _structure_corr(grown, image, ring) - 0.2
    with pytest.raises(ValueError, match="mask_margin"):
        make_synthetic_like(image, boxes, KSIZE, SIGMA, mask_margin=-1)


def test_blur_background_validates_kernel():
    image = np.zeros((20, 20), np.uint8)
    for bad in (0, -3, 4, 2.5):
        with pytest.raises(ValueError, match=str(bad)):
            blur_background(image, bad, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        blur_background(image, 3, -1.0)
    assert blur_background(image[:, :, None], 5, 2.0).shape == (20, 20, 1)
    with pytest.raises(ValueError, match="uint8"):
        make_synthetic_like(image.astype(np.float32), [], 3, 1.0)


def test_boxes_to_mask():
    mask = boxes_to_mask(10, 12, [[1.2, 2.7, 3.1, 4.0], [10.5, 8.5, 20, 20],
                                  [5, 5, 5, 9], [7, 7, 6, 9], [np.nan, 1, 2, 3]])
    assert mask.dtype == np.uint8 and mask.shape == (10, 12)
    assert set(np.unique(mask)) == {0, 255}
    expected = np.zeros((10, 12), np.uint8)
    expected[2:4, 1:4] = 255  # rounded outward
    expected[8:10, 10:12] = 255  # clipped to the image
    assert np.array_equal(mask, expected)
    assert not boxes_to_mask(5, 5, []).any()
