"""The cut-paste synthesizer on its own: patches, canvases, exact boxes, determinism."""
import numpy as np
import pytest


def _colour_patches(n=6, size=(12, 8)):
    """Patches of one distinct grey level each (w x h = size), cut from a tiny image."""
    from sissi_d2.algorithms.cut_paste import cut_patches

    w, h = size
    out = []
    for i in range(n):
        image = np.full((h + 10, w + 10), 40 + 30 * i, np.uint8)
        out += cut_patches(image, [[5, 5, 5 + w, 5 + h]], margin=0.0)
    return out


def test_cut_patches_keep_a_margin_inside_the_image():
    from sissi_d2.algorithms.cut_paste import cut_patches

    image = np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8)
    p, edge = cut_patches(image, [[20, 30, 40, 40], [0, 0, 10, 10], [200, 0, 210, 5]], margin=0.1)
    assert p.pixels.shape == (12, 24) and p.box == (2.0, 1.0, 22.0, 11.0)
    np.testing.assert_array_equal(p.pixels, image[29:41, 18:42])
    assert edge.box == (0.0, 0.0, 10.0, 10.0) and edge.pixels.shape == (11, 11)  # clipped at the border
    # the box outside the image gave no patch


def test_every_pasted_cell_has_its_exact_box_inside_the_canvas():
    from sissi_d2.algorithms.cut_paste import SynthParams, synth_rng, synthesize

    patches = _colour_patches()
    params = SynthParams(count=(25, 25), max_overlap=0.0, blend="hard", size_jitter=0.0)
    for index in range(5):
        image, boxes, negatives = synthesize(np.zeros((64, 80), np.uint8), patches, synth_rng(0, 0, index), params)
        assert len(negatives) == 0 and 0 < len(boxes) <= 25
        assert boxes.dtype == np.float32 and np.all(boxes == np.round(boxes))
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 80) and np.all(boxes[:, 3] <= 64)
        sizes = sorted({(int(b[2] - b[0]), int(b[3] - b[1])) for b in boxes})
        assert set(sizes) <= {(12, 8), (8, 12)}  # rotated by 90 degrees or not, never inflated
        covered = np.zeros(image.shape, bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            region = image[y0:y1, x0:x1]
            assert region.min() == region.max() > 0, "a box holds exactly one pasted cell"
            covered[y0:y1, x0:x1] = True
        assert np.array_equal(covered, image > 0), "every pasted pixel is inside a box"


def test_textured_patch_pasted_pixel_for_pixel():
    from sissi_d2.algorithms.cut_paste import SynthParams, cut_patches, synthesize

    rng = np.random.default_rng(1)
    source = rng.integers(1, 255, (40, 50, 3), dtype=np.uint8)
    patch = cut_patches(source, [[10, 5, 30, 25]], margin=0.2)
    params = SynthParams(count=(1, 1), blend="hard", size_jitter=0.0, flip=False, rotate90=False)
    image, boxes, _ = synthesize(np.zeros((60, 60, 3), np.uint8), patch, np.random.default_rng(3), params)
    x0, y0, x1, y1 = boxes[0].astype(int)
    np.testing.assert_array_equal(image[y0:y1, x0:x1], source[5:25, 10:30])


def test_deterministic_per_seed_epoch_and_index():
    from sissi_d2.algorithms.cut_paste import SynthParams, synth_rng, synthesize

    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    patches = _colour_patches(4, (6, 5))

    def make(seed, epoch, index):
        return synthesize(canvas, patches, synth_rng(seed, epoch, index), SynthParams(count=(3, 9)))

    a, b = make(0, 1, 2), make(0, 1, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for other in (make(1, 1, 2), make(0, 2, 2), make(0, 1, 3)):
        assert not (np.array_equal(a[0], other[0]) and np.array_equal(a[1], other[1]))


def test_negatives_are_pasted_without_a_box_and_overlap_is_bounded():
    from sissi_d2.algorithms.cut_paste import Patch, SynthParams, synthesize

    cell = Patch(np.full((10, 10), 200, np.uint8), (0, 0, 10, 10))
    debris = Patch(np.full((6, 6), 90, np.uint8), (0, 0, 6, 6), negative=True)
    params = SynthParams(count=(8, 8), negatives=(5, 5), max_overlap=0.2, blend="hard", size_jitter=0.0)
    image, boxes, negatives = synthesize(np.zeros((80, 80), np.uint8), [cell, debris], np.random.default_rng(0), params)
    assert len(boxes) == 8 and len(negatives) == 5
    assert (image == 90).any() and (image == 200).any()
    allb = np.vstack([boxes, negatives]).astype(float)
    area = (allb[:, 2] - allb[:, 0]) * (allb[:, 3] - allb[:, 1])
    for i in range(len(allb)):
        for j in range(i):
            iw = max(0.0, min(allb[i, 2], allb[j, 2]) - max(allb[i, 0], allb[j, 0]))
            ih = max(0.0, min(allb[i, 3], allb[j, 3]) - max(allb[i, 1], allb[j, 1]))
            assert iw * ih <= 0.2 * min(area[i], area[j]) + 1e-9


def test_a_full_canvas_leaves_patches_out_and_size_jitter_stays_in_range():
    from sissi_d2.algorithms.cut_paste import Patch, SynthParams, jitter_crop, synthesize

    big = Patch(np.full((30, 30), 255, np.uint8), (0, 0, 30, 30))
    image, boxes, _ = synthesize(np.zeros((40, 40), np.uint8), [big], np.random.default_rng(0),
                                 SynthParams(count=(5, 5), max_overlap=0.0, size_jitter=0.0))
    assert len(boxes) == 1  # one fits, the others find no place
    too_big = Patch(np.full((50, 50), 255, np.uint8), (0, 0, 50, 50))
    assert len(synthesize(np.zeros((40, 40), np.uint8), [too_big], np.random.default_rng(0))[1]) == 0
    padded = Patch(np.zeros((60, 60), np.uint8), (10, 10, 50, 50))  # a 40 px cell with a 10 px margin
    rng = np.random.default_rng(5)
    sides = [jitter_crop(padded, rng, 0.1).shape[0] for _ in range(200)]
    assert 36 <= min(sides) < 39 and 41 < max(sides) <= 44


def test_canvases_and_blends():
    from sissi_d2.algorithms.cloning import blur_background
    from sissi_d2.algorithms.cut_paste import Patch, SynthParams, make_canvas, median_kernel, synthesize

    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 100, np.uint8)
    image[20:26, 30:36] = 250  # a small bright cell
    np.testing.assert_array_equal(make_canvas(image, "blur", (21, 7.0)), blur_background(image, 21, 7.0))
    median = make_canvas(image, "median", median_ksize=median_kernel(6))
    assert median_kernel(6) == 15 and np.all(median == 100), "the median of a window 2.5 cells wide is background"
    blank = make_canvas(image, "blank")
    assert blank.shape == image.shape and np.all(blank == 100)
    with pytest.raises(ValueError, match="SISSI.SYNTH.CANVAS='paper'"):
        make_canvas(image, "paper")

    cell = Patch(np.full((12, 12, 3), 220, np.uint8), (0, 0, 12, 12))
    canvas = np.full((40, 40, 3), 100, np.uint8)
    params = dict(count=(1, 1), size_jitter=0.0)
    out, boxes, _ = synthesize(canvas, [cell], np.random.default_rng(2), SynthParams(blend="feather", feather=3, **params))
    x0, y0, x1, y1 = boxes[0].astype(int)
    assert np.all(out[y0 + 3:y1 - 3, x0 + 3:x1 - 3] == 220) and 100 < out[y0, x0, 0] < 220  # a soft edge
    # Poisson cloning keeps the patch's gradients (a flat patch would vanish): a textured cell
    textured = Patch(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), (0, 0, 12, 12))
    out, boxes2, _ = synthesize(canvas, [textured], np.random.default_rng(2), SynthParams(blend="seamless", **params))
    assert np.array_equal(boxes, boxes2) and out.shape == canvas.shape
    assert out[y0 + 4:y1 - 4, x0 + 4:x1 - 4].std() > 20 and np.all(out[:, :x0 - 1] == 100)


@pytest.mark.parametrize("kwargs, message", [
    ({"count": (5, 2)}, "count"), ({"max_overlap": 1.5}, "max_overlap"), ({"size_jitter": 1.0}, "size_jitter"),
    ({"blend": "poisson"}, "blend"), ({"tries": 0}, "tries"),
])
def test_bad_parameters_are_named(kwargs, message):
    from sissi_d2.algorithms.cut_paste import SynthParams

    with pytest.raises(ValueError, match=message):
        SynthParams(**kwargs)
