"""Random patch masks and the masked reconstruction loss of a masked-image pretext.

A self-supervised pretext (the stage in ``sissi_d2/modeling/masked_pretext.py``) hides square
patches of each unlabelled image and trains the network to paint them back from what is left.
With patches about a cell wide, painting one back means knowing what a cell and its surroundings
look like, which is what the detector has to learn (masked image modelling: Context Encoders,
Pathak et al. 2016; MAE, He et al. 2022; SparK, Tian et al. 2023 for CNNs). Torch only, no model.
"""
from __future__ import annotations

import torch

__all__ = ["random_patch_mask", "masked_mse"]


def random_patch_mask(n: int, height: int, width: int, patch: int, ratio: float,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A bool mask (n, height, width), True where a pixel is hidden.

    Each image hides exactly ``round(ratio * cells)`` of its ``ceil(height / patch) x
    ceil(width / patch)`` grid cells, drawn without replacement (at least one and at least one
    left visible, so the loss and the context are never empty); cells at the right and bottom
    edges are cut to the image."""
    if patch < 1:
        raise ValueError(f"patch={patch}: the patch side must be at least 1 pixel")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio={ratio}: the share of hidden patches must be between 0 and 1 (exclusive)")
    gh, gw = -(-height // patch), -(-width // patch)
    cells = gh * gw
    if cells < 2:
        raise ValueError(f"a {height}x{width} image holds a single {patch} px patch: nothing would stay visible")
    hidden = min(cells - 1, max(1, round(ratio * cells)))
    scores = torch.rand(n, cells, generator=generator)
    order = scores.argsort(dim=1)
    grid = torch.zeros(n, cells, dtype=torch.bool)
    grid.scatter_(1, order[:, :hidden], True)
    grid = grid.view(n, 1, gh, gw).float()
    full = torch.nn.functional.interpolate(grid, scale_factor=patch, mode="nearest")[:, 0, :height, :width]
    return full.bool().to(device) if device is not None else full.bool()


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels only (``mask`` True), all channels.

    ``prediction`` and ``target``: (n, c, h, w); ``mask``: (n, h, w). Visible pixels do not count:
    copying them through would teach nothing."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    if mask.shape != (target.shape[0],) + tuple(target.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the images {tuple(target.shape)}")
    weight = mask.unsqueeze(1).to(prediction.dtype)
    hidden = weight.sum() * prediction.shape[1]
    if hidden == 0:
        raise ValueError("the mask hides no pixel: nothing to reconstruct")
    return (((prediction - target) ** 2) * weight).sum() / hidden
