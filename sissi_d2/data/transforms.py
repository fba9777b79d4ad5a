"""The paper's training augmentations as Detectron2 augmentations.

Channel shuffle, Gaussian blur, horizontal and vertical flips and shift-scale-rotate (paper
sec. 4.1). Flips come from Detectron2; the other three are written here as ``Transform`` /
``Augmentation`` pairs so that boxes follow the image exactly.
"""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

__all__ = [
    "AffineTransform", "RandomShiftScaleRotate", "GaussianBlurTransform", "RandomGaussianBlur",
    "ChannelShuffleTransform", "RandomChannelShuffle", "build_sissi_augmentations",
]


class AffineTransform(Transform):
    """A 2x3 affine warp of the image; points (box corners) are mapped with the same matrix."""

    def __init__(self, matrix: np.ndarray, height: int, width: int, border_value: int = 0):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.warpAffine(
            img, self.matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    def apply_coords(self, coords):
        coords = np.asarray(coords, dtype=np.float64)
        return (coords @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.float32)

    def apply_segmentation(self, segmentation):
        return cv2.warpAffine(segmentation, self.matrix, (self.width, self.height), flags=cv2.INTER_NEAREST)


class RandomShiftScaleRotate(T.Augmentation):
    """Shift (fraction of size), scale (1 +/- scale) and rotate (+/- degrees) about the centre.

    Boxes are the extent of their rotated corners, so large rotations enlarge boxes a little;
    the default +/-45 degrees of the paper's augmentation library is kept.
    """

    def __init__(self, prob=0.5, shift=0.0625, scale=0.1, rotate=45.0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        angle = float(self._rand_range(-self.rotate, self.rotate))
        scale = float(self._rand_range(1.0 - self.scale, 1.0 + self.scale))
        dx = float(self._rand_range(-self.shift, self.shift)) * w
        dy = float(self._rand_range(-self.shift, self.shift)) * h
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        matrix[0, 2] += dx
        matrix[1, 2] += dy
        return AffineTransform(matrix, h, w)


class GaussianBlurTransform(Transform):
    def __init__(self, ksize: int, sigma: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.GaussianBlur(img, (self.ksize, self.ksize), self.sigma)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class RandomGaussianBlur(T.Augmentation):
    def __init__(self, prob=0.2, max_ksize=7):
        super().__init__()
        if max_ksize < 3 or max_ksize % 2 == 0:
            raise ValueError(f"SISSI.AUG.BLUR_MAX_KSIZE must be odd and >= 3, got {max_ksize}")
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return NoOpTransform()
        ksize = int(np.random.choice(np.arange(3, self.max_ksize + 1, 2)))
        return GaussianBlurTransform(ksize, 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8)


class ChannelShuffleTransform(Transform):
    def __init__(self, order):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        if img.ndim != 3 or img.shape[2] != len(self.order):
            return img
        return np.ascontiguousarray(img[:, :, list(self.order)])

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class RandomChannelShuffle(T.Augmentation):
    def __init__(self, prob=0.2):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if image.ndim != 3 or self._rand_range() >= self.prob:
            return NoOpTransform()
        return ChannelShuffleTransform(tuple(np.random.permutation(image.shape[2]).tolist()))


def build_sissi_augmentations(cfg, is_train: bool) -> list:
    """Resize (Detectron2's INPUT settings), in training an optional crop (INPUT.CROP), then the
    paper's augmentations."""
    if is_train:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                     cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    else:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    if cfg.INPUT.CROP.ENABLED:
        # Crop AFTER the resize (Detectron2's own mapper crops before it): the model trains at
        # the test resolution on a part of the image, so a CPU iteration costs the crop's
        # pixels, not the whole image's, while cells keep the size they have at test time.
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    aug = cfg.SISSI.AUG
    if aug.HFLIP_PROB > 0:
        augs.append(T.RandomFlip(prob=aug.HFLIP_PROB, horizontal=True, vertical=False))
    if aug.VFLIP_PROB > 0:
        augs.append(T.RandomFlip(prob=aug.VFLIP_PROB, horizontal=False, vertical=True))
    if aug.SSR_PROB > 0:
        augs.append(RandomShiftScaleRotate(aug.SSR_PROB, aug.SSR_SHIFT, aug.SSR_SCALE, aug.SSR_ROTATE))
    if aug.BLUR_PROB > 0:
        augs.append(RandomGaussianBlur(aug.BLUR_PROB, aug.BLUR_MAX_KSIZE))
    if aug.CHANNEL_SHUFFLE_PROB > 0:
        augs.append(RandomChannelShuffle(aug.CHANNEL_SHUFFLE_PROB))
    return augs

