"""``MaskedImagePretext``: a self-supervised pretraining stage for the detector's backbone.

The CPU stand-in for model-zoo weights may be learnt from the unlabelled target images instead
of the labelled source (issue 13; ``configs/cpu/pretrain_target_pretext.yaml``). This
meta-architecture holds the detector's own backbone (``build_backbone``, so its weights are
named ``backbone.*`` as in ``GeneralizedRCNN``) and a small decoder on one backbone level: each
training image gets square patches hidden (``MODEL.MASKED_PRETEXT``), and the loss is the mean
squared error of the painted-back pixels (``sissi_d2/algorithms/masking.py``). Only the backbone
carries over to the detector: the pretraining stage keeps ``TRANSFER_PREFIX`` of the weights.

It trains with ``SISSITrainer`` like any row (epochs, checkpoints, resume, ETA): the loader's
boxes are ignored, so the image-only ``usiigaci_train_images`` set needs no labels.
"""
from __future__ import annotations

import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..algorithms.masking import masked_mse, random_patch_mask

__all__ = ["MaskedImagePretext", "reconstruction_panels"]


@META_ARCH_REGISTRY.register()
class MaskedImagePretext(nn.Module):
    """Backbone + a decoder that paints hidden patches back (``MODEL.META_ARCHITECTURE``)."""

    # What a detector takes from this model's weights.
    TRANSFER_PREFIX = "backbone."

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        feature = cfg.MODEL.MASKED_PRETEXT.IN_FEATURE or min(shapes, key=lambda k: shapes[k].stride)
        if feature not in shapes:
            raise ValueError(f"MODEL.MASKED_PRETEXT.IN_FEATURE={feature!r}: the backbone outputs {sorted(shapes)}")
        self.in_feature = feature
        self.patch = int(cfg.MODEL.MASKED_PRETEXT.PATCH_SIZE)
        self.ratio = float(cfg.MODEL.MASKED_PRETEXT.MASK_RATIO)
        channels, stride = shapes[feature].channels, shapes[feature].stride
        n_pixel = len(cfg.MODEL.PIXEL_MEAN)
        # Light on purpose: the backbone should do the work that transfers, not the decoder.
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, n_pixel * stride * stride, 1), nn.PixelShuffle(stride),
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        """Training: {"loss_masked_reconstruction"}. Inference: per image {"reconstruction",
        "mask"} in normalised pixels, for looking at what the stage learnt."""
        images = ImageList.from_tensors(
            [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs],
            self.backbone.size_divisibility)
        target = images.tensor
        n, _, h, w = target.shape
        mask = random_patch_mask(n, h, w, self.patch, self.ratio, device=self.device)
        valid = torch.zeros_like(mask)
        for i, (ih, iw) in enumerate(images.image_sizes):
            valid[i, :ih, :iw] = True
        mask &= valid  # padding is neither hidden nor scored
        features = self.backbone(target * (~mask).unsqueeze(1).to(target.dtype))
        reconstruction = self.decoder(features[self.in_feature])[:, :, :h, :w]
        if self.training:
            return {"loss_masked_reconstruction": masked_mse(reconstruction, target, mask)}
        return [{"reconstruction": reconstruction[i, :, :ih, :iw], "mask": mask[i, :ih, :iw]}
                for i, (ih, iw) in enumerate(images.image_sizes)]


def reconstruction_panels(model: MaskedImagePretext, batched_inputs) -> list:
    """What the pretext learnt, to look at: per image (input, what the backbone saw, the hidden
    squares painted back over the visible input), gray uint8 numpy arrays (first channel)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(batched_inputs)
    finally:
        model.train(was_training)
    mean, std = model.pixel_mean[0].cpu(), model.pixel_std[0].cpu()
    panels = []
    for x, out in zip(batched_inputs, outputs):
        image = x["image"][0].float().cpu()
        hidden = out["mask"].cpu()
        painted = torch.where(hidden, out["reconstruction"][0].cpu() * std + mean, image)
        seen = torch.where(hidden, mean, image)  # a hidden pixel is the mean after normalisation
        panels.append(tuple(t.clamp(0, 255).round().to(torch.uint8).numpy() for t in (image, seen, painted)))
    return panels
