"""Random patch masks and the masked reconstruction loss (no model)."""
import pytest
import torch

from sissi_d2.algorithms.masking import masked_mse, random_patch_mask


def test_each_image_hides_the_asked_share_of_whole_patches():
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask(3, 64, 96, 16, 0.5, generator=g)
    assert mask.shape == (3, 64, 96) and mask.dtype == torch.bool
    grid = mask.view(3, 4, 16, 6, 16)
    # every 16 px square is all hidden or all visible
    assert torch.equal(grid.all(dim=2).all(dim=3), grid.any(dim=2).any(dim=3))
    assert grid[:, :, 0, :, 0].sum(dim=(1, 2)).tolist() == [12, 12, 12]  # 0.5 of 4 x 6
    assert not torch.equal(mask[0], mask[1])  # each image draws its own squares


def test_edge_patches_are_cut_to_the_image_and_the_draw_follows_the_generator():
    a = random_patch_mask(2, 50, 40, 16, 0.6, generator=torch.Generator().manual_seed(5))
    b = random_patch_mask(2, 50, 40, 16, 0.6, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 50, 40) and torch.equal(a, b)
    # a grid of 4 x 3 squares (the last row 2 px high, the last column 8 px wide), 7 hidden
    # (round(0.6 * 12)) in each image, every square all hidden or all visible
    for image in a:
        blocks = [image[r:r + 16, c:c + 16] for r in range(0, 50, 16) for c in range(0, 40, 16)]
        assert all(bool(b.all()) == bool(b.any()) for b in blocks)
        assert sum(bool(b.all()) for b in blocks) == 7


def test_at_least_one_patch_is_hidden_and_one_stays_visible():
    tiny = random_patch_mask(4, 32, 32, 16, 0.01)
    assert (tiny.view(4, -1).sum(dim=1) == 256).all()  # one of four squares
    most = random_patch_mask(4, 32, 32, 16, 0.99)
    assert (most.view(4, -1).sum(dim=1) == 768).all()  # three of four


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch=0, ratio=0.5), "patch side"), (dict(patch=8, ratio=1.0), "between 0 and 1"),
    (dict(patch=8, ratio=0.0), "between 0 and 1"), (dict(patch=64, ratio=0.5), "single"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_patch_mask(1, 32, 32, **kwargs)


def test_the_loss_counts_hidden_pixels_only():
    target = torch.zeros(1, 2, 4, 4)
    prediction = torch.zeros(1, 2, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    prediction[0, :, 2:] = 100.0  # wrong where visible: does not count
    assert masked_mse(prediction, target, mask).item() == 0.0
    prediction[0, 0, :2] = 2.0  # wrong on one channel of the hidden half
    assert masked_mse(prediction, target, mask).item() == pytest.approx(2.0)  # 4 averaged with 0


def test_the_loss_refuses_mismatched_shapes_and_an_empty_mask():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="differ"):
        masked_mse(x, torch.zeros(1, 1, 4, 5), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        masked_mse(x, x, torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="no pixel"):
        masked_mse(x, x, torch.zeros(1, 4, 4, dtype=torch.bool))
