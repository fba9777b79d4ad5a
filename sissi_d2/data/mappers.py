"""Dataset mappers for the two domains, selected by name through ``SISSI_MAPPER_REGISTRY``.

The target mapper rebuilds the synthetic-like image from the labels the record carries NOW
(weak labels or the latest pseudo-labels) each time a sample is drawn, before any geometric
augmentation, so the cloned cells and their boxes stay aligned.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from fvcore.common.registry import Registry

from ..algorithms.cloning import make_synthetic_like
from ..config import BLUR_PRESETS
from .image_io import read_bgr8
from .transforms import build_sissi_augmentations

__all__ = ["SISSI_MAPPER_REGISTRY", "SISSISourceMapper", "SISSITargetMapper", "build_mapper", "cloning_blur"]

SISSI_MAPPER_REGISTRY = Registry("SISSI_MAPPER")
SISSI_MAPPER_REGISTRY.__doc__ = """
Dataset mappers of sissi_d2. A registered class is called as ``cls(cfg, is_train, **kwargs)``
and maps one dataset dict to the model's input dict.
"""

logger = logging.getLogger(__name__)


def cloning_blur(cfg) -> tuple[int, float]:
    """(kernel size, sigma) of the background blur chosen by SISSI.CLONING.BLUR."""
    preset = cfg.SISSI.CLONING.BLUR
    if preset == "custom":
        return int(cfg.SISSI.CLONING.KERNEL_SIZE), float(cfg.SISSI.CLONING.SIGMA)
    if preset not in BLUR_PRESETS:
        raise ValueError(
            f"SISSI.CLONING.BLUR={preset!r}: expected one of {sorted(BLUR_PRESETS) + ['custom']}"
        )
    return BLUR_PRESETS[preset]


@SISSI_MAPPER_REGISTRY.register()
class SISSISourceMapper:
    """Read any bit depth, resize, apply the paper's augmentations, build ``Instances``."""

    domain = "source"

    def __init__(self, cfg, is_train: bool = True, augmentations=None):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(
            augmentations if augmentations is not None else build_sissi_augmentations(cfg, is_train)
        )
        self.image_format = cfg.INPUT.FORMAT
        if self.image_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT={self.image_format!r}: sissi_d2 mappers support BGR and RGB")

    def read(self, record) -> np.ndarray:
        image = read_bgr8(record["file_name"])
        if (image.shape[0], image.shape[1]) != (record.get("height", image.shape[0]), record.get("width", image.shape[1])):
            raise ValueError(
                f"{record['file_name']}: image is {image.shape[1]}x{image.shape[0]} but its labels say "
                f"{record['width']}x{record['height']}; regenerate the labels for this file."
            )
        return image

    def prepare_image(self, record, image: np.ndarray) -> np.ndarray:
        """Hook for subclasses: change the image before augmentation."""
        return image

    def __call__(self, record):
        record = copy.deepcopy(record)
        image = self.prepare_image(record, self.read(record))
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        if self.image_format == "RGB":
            image = image[:, :, ::-1]
        h, w = image.shape[:2]
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        record["domain"] = self.domain
        if not self.is_train:
            record.pop("annotations", None)
            return record
        annos = [
            utils.transform_instance_annotations(obj, transforms, (h, w))
            for obj in record.pop("annotations", [])
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, (h, w))
        # Augmentations can push boxes out of the frame; clip, then drop the empty ones.
        instances.gt_boxes.clip((h, w))
        record["instances"] = utils.filter_empty_instances(instances)
        return record


@SISSI_MAPPER_REGISTRY.register()
class SISSITargetMapper(SISSISourceMapper):
    """Source mapper + optional synthetic-like image from the record's current boxes."""

    domain = "target"

    def __init__(self, cfg, is_train: bool = True, augmentations=None, cloning: bool = False):
        super().__init__(cfg, is_train, augmentations)
        self.cloning = bool(cloning)
        self.blur_ksize, self.blur_sigma = cloning_blur(cfg)

    def prepare_image(self, record, image):
        if not self.cloning:
            return image
        boxes = np.asarray([a["bbox"] for a in record.get("annotations", [])], dtype=np.float32).reshape(-1, 4)
        return make_synthetic_like(image, boxes, self.blur_ksize, self.blur_sigma)


def build_mapper(cfg, domain: str, is_train: bool = True, **kwargs):
    """The mapper registered under SISSI.MAPPER.SOURCE / SISSI.MAPPER.TARGET."""
    name = {"source": cfg.SISSI.MAPPER.SOURCE, "target": cfg.SISSI.MAPPER.TARGET}[domain]
    return SISSI_MAPPER_REGISTRY.get(name)(cfg, is_train, **kwargs)
