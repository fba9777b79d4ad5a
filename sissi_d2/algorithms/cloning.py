"""Synthetic-like images: keep the labelled cells, blur everything else away.

SISSI (docs/method.md, "Synthetic-like images") rebuilds each target training image from its
current boxes: the background is a strong Gaussian blur of the image (kernel 71, sigma 30 in the
authors' code), and the content of the boxes is pasted back with Poisson image editing,
``cv2.seamlessClone(src=image, dst=blurred, mask=union of boxes, center, cv2.MIXED_CLONE)``,
placed at the centre of the mask's bounding rect so that the cells keep their place and the
boxes stay valid labels. Unlabelled cells vanish into the blurred background, which stops the
detector from learning them as background. An image without boxes becomes the blurred image.

OpenCV behaviour this module works around (checked on opencv-python-headless 5.0.0):

* seamlessClone writes into the mask it is given (the caller's array changes, and a second
  call with the same array clones almost nothing), so it always gets a private copy.
* It zeroes the outermost 1-pixel ring of the mask, takes the bounding rect R of what is left
  and pastes R at (center.x - R.width // 2, center.y - R.height // 2). The content stays in place
  only if center = (R.x + R.width // 2, R.y + R.height // 2) with floor division *of the
  trimmed mask*; a rounded centre, or the rect of an untrimmed mask touching the right or
  bottom border, shifts the cells by one pixel.
* It raises (``!fixedSize()``) when that rect is less than 3 pixels wide or high.
* It erodes the mask by 3 pixels and fixes the pixels outside to ``dst``: the outer ~4 pixels
  of every box get the blurred background, and a box at the image border loses its ~4 border
  pixels. The image is therefore reflect-padded (image, background and mask) by ``_PAD`` pixels
  before cloning and cropped afterwards, which keeps the content at the image border. Inside
  the image the erosion is kept (it is what the authors' code did); ``mask_margin`` grows the
  cloned rectangles if the whole box content should survive (4 compensates the erosion).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["blur_background", "boxes_to_mask", "make_synthetic_like"]

# Reflect padding around the image while cloning: OpenCV zeroes one ring of the mask, erodes it
# by 3 pixels and fixes the next pixel to dst; 8 pixels keep the real image clear of all that
# (measured: 4 suffice, fewer blur the border columns).
_PAD = 8


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def blur_background(image: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """Gaussian blur with an odd square kernel ``ksize`` and standard deviation ``sigma``.

    sigma = 0 lets OpenCV derive it from the kernel size.
    """
    if int(ksize) != ksize or ksize <= 0 or ksize % 2 == 0:
        raise ValueError(f"ksize must be a positive odd integer, got {ksize}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    ksize = int(ksize)
    blurred = cv2.GaussianBlur(image, (ksize, ksize), float(sigma))
    if image.ndim == 3 and blurred.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        blurred = blurred[:, :, None]
    return blurred


def boxes_to_mask(height: int, width: int, boxes) -> np.ndarray:
    """Union of the filled XYXY boxes as an HxW uint8 mask (0 / 255).

    Box corners are rounded outward (a box covering part of a pixel covers that pixel) and
    clipped to the image; non-finite, inverted or empty boxes are ignored.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return mask
    boxes = boxes.reshape(-1, 4)
    for x1, y1, x2, y2 in boxes[np.all(np.isfinite(boxes), axis=1)]:
        if not (x2 > x1 and y2 > y1):
            continue
        c1 = max(0, int(math.floor(x1)))
        r1 = max(0, int(math.floor(y1)))
        c2 = min(width, int(math.ceil(x2)))
        r2 = min(height, int(math.ceil(y2)))
        if c2 > c1 and r2 > r1:
            mask[r1:r2, c1:c2] = 255
    return mask


def _clone_in_place(image3: np.ndarray, blurred3: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """seamlessClone of 3-channel ``image3`` into ``blurred3`` without moving the content."""
    pad = dict(top=_PAD, bottom=_PAD, left=_PAD, right=_PAD, borderType=cv2.BORDER_REFLECT)
    src = cv2.copyMakeBorder(image3, **pad)
    dst = cv2.copyMakeBorder(blurred3, **pad)
    padded_mask = cv2.copyMakeBorder(mask, **pad)
    # Trim the outer ring as OpenCV does, so that the rect below is the one it will use.
    padded_mask[0, :] = padded_mask[-1, :] = 0
    padded_mask[:, 0] = padded_mask[:, -1] = 0
    x, y, w, h = cv2.boundingRect(padded_mask)
    if w < 3 or h < 3:
        # OpenCV raises on a rect thinner than 3 px; its 3-px erosion would leave nothing of
        # such a mask anyway, so the result is the background.
        return blurred3
    center = (x + w // 2, y + h // 2)
    out = cv2.seamlessClone(src, dst, padded_mask.copy(), center, cv2.MIXED_CLONE)
    return out[_PAD:-_PAD, _PAD:-_PAD]


def make_synthetic_like(
    image: np.ndarray, boxes, ksize: int, sigma: float, *, mask_margin: int = 0
) -> np.ndarray:
    """Blur the image except inside ``boxes``, whose content is seamlessly cloned back.

    Accepts HxW, HxWx1 and HxWx3 uint8 images and returns the same shape and dtype. Boxes are
    Nx4 XYXY in pixels; without a valid box the result is exactly ``blur_background``.
    ``mask_margin`` (pixels, default 0 = the method as published) grows each box of the
    cloning mask, to make up for OpenCV's internal erosion of the mask; the boxes themselves,
    i.e. the labels, are not changed.
    """
    image = _check_image(image)
    if int(mask_margin) != mask_margin or mask_margin < 0:
        raise ValueError(f"mask_margin must be a non-negative integer, got {mask_margin}")
    blurred = blur_background(image, ksize, sigma)
    height, width = image.shape[:2]
    mask = boxes_to_mask(height, width, boxes)
    if mask_margin and mask.any():
        # Growing the union equals the union of the grown rectangles (square structuring
        # element), and boxes clipped at the border grow only inwards as they should.
        size = 2 * int(mask_margin) + 1
        mask = cv2.dilate(mask, np.ones((size, size), np.uint8))
    if not mask.any():
        return blurred

    # seamlessClone only takes 8-bit 3-channel images: replicate gray and take one channel
    # back (the three channels are solved identically, so nothing is lost).
    gray = image.ndim == 2 or image.shape[2] == 1
    if gray:
        image3 = np.repeat(image.reshape(height, width, 1), 3, axis=2)
        blurred3 = np.repeat(blurred.reshape(height, width, 1), 3, axis=2)
    else:
        image3, blurred3 = np.ascontiguousarray(image), np.ascontiguousarray(blurred)
    out = _clone_in_place(image3, blurred3, mask)
    if gray:
        return np.ascontiguousarray(out[:, :, 0]).reshape(image.shape)
    return np.ascontiguousarray(out)
