"""Dataset mappers for the two domains, selected by name through ``SISSI_MAPPER_REGISTRY``.

The target mapper rebuilds the synthetic-like image from the labels the record carries NOW
(weak labels or the latest pseudo-labels) before any geometric augmentation, so the cloned cells
and their boxes stay aligned; an image drawn again in the same epoch reuses its clone
(``SISSI.CLONING.CACHE_MB``).

With ``SISSI.SYNTH.ENABLED`` the target mapper is :class:`SISSICutPasteMapper` (built per epoch by
:func:`build_cut_paste_mapper`): a draw becomes, with probability 1 - ``SISSI.SYNTH.REAL_FRACTION``,
a cut-paste image (``algorithms.cut_paste``) of cells cut from the epoch's labels, with its boxes,
before the same augmentations.
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from fvcore.common.registry import Registry

from ..algorithms.cloning import make_synthetic_like
from ..algorithms.cut_paste import CANVASES, SynthParams, cut_patches, make_canvas, median_kernel, synthesize
from ..config import BLUR_PRESETS
from .image_io import read_bgr8
from .transforms import build_sissi_augmentations

__all__ = ["SISSI_MAPPER_REGISTRY", "SISSISourceMapper", "SISSITargetMapper", "SISSICutPasteMapper", "build_mapper",
           "cloning_blur", "synth_params", "build_patch_bank", "build_cut_paste_mapper"]

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


def _check_crowd_heads(cfg) -> None:
    # Detectron2's own heads would train a crowd region as a cell: refuse rather than do that.
    heads = (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.ROI_HEADS.NAME)
    if heads != ("MissingLabelRPN", "MissingLabelROIHeads"):
        raise ValueError(
            f"MODEL.MISSING_LABELS.IGNORE_CROWD needs the heads that read crowd regions, got "
            f"MODEL.PROPOSAL_GENERATOR.NAME={heads[0]!r} and MODEL.ROI_HEADS.NAME={heads[1]!r}: set them to "
            "'MissingLabelRPN' and 'MissingLabelROIHeads', or IGNORE_CROWD to False")


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
        self.ignore_crowd = bool(cfg.MODEL.MISSING_LABELS.IGNORE_CROWD)
        if self.ignore_crowd:
            _check_crowd_heads(cfg)

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
            if self.ignore_crowd or obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, (h, w))
        if self.ignore_crowd:  # read by modeling.missing_label_heads, which take these out of the labels
            instances.gt_ignore = torch.tensor([bool(a.get("iscrowd", 0)) for a in annos], dtype=torch.bool)
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
        cache_mb = float(cfg.SISSI.CLONING.CACHE_MB)
        if cache_mb < 0:
            raise ValueError(f"SISSI.CLONING.CACHE_MB={cache_mb}: expected MiB >= 0 (0 clones at every draw)")
        # A mapper lives for one epoch (the trainer builds one per epoch), so the cache never
        # outlives the labels it was cloned from; the key holds the boxes all the same.
        self.cloned = _ClonedImageCache(int(cache_mb * 2**20))

    def prepare_image(self, record, image):
        if not self.cloning:
            return image
        boxes = np.asarray([a["bbox"] for a in record.get("annotations", [])], dtype=np.float32).reshape(-1, 4)
        key = (record["file_name"], image.shape, boxes.tobytes())
        cloned = self.cloned.get(key)
        if cloned is None:
            cloned = make_synthetic_like(image, boxes, self.blur_ksize, self.blur_sigma)
            self.cloned.put(key, cloned)
        # A copy: the augmentations downstream may write into the array they are given.
        return cloned.copy()


class _ClonedImageCache:
    """Least-recently-used arrays within a byte budget (an array larger than it is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0  # draws served without cloning (read by the tests)
        self._arrays: "OrderedDict[tuple, np.ndarray]" = OrderedDict()

    def get(self, key):
        array = self._arrays.get(key)
        if array is None:
            return None
        self.hits += 1
        self._arrays.move_to_end(key)
        return array

    def put(self, key, array: np.ndarray) -> None:
        if array.nbytes > self.max_bytes:
            return
        while self.bytes + array.nbytes > self.max_bytes:
            _, evicted = self._arrays.popitem(last=False)
            self.bytes -= evicted.nbytes
        self._arrays[key] = array
        self.bytes += array.nbytes


def build_mapper(cfg, domain: str, is_train: bool = True, **kwargs):
    """The mapper registered under SISSI.MAPPER.SOURCE / SISSI.MAPPER.TARGET."""
    name = {"source": cfg.SISSI.MAPPER.SOURCE, "target": cfg.SISSI.MAPPER.TARGET}[domain]
    return SISSI_MAPPER_REGISTRY.get(name)(cfg, is_train, **kwargs)


# ---------------------------------------------------------------------------------------------
# cut-paste synthetic target images (SISSI.SYNTH)
# ---------------------------------------------------------------------------------------------
_PATCH_SOURCES = ("target", "source")


def synth_params(cfg) -> SynthParams:
    """The synthesizer's settings of ``SISSI.SYNTH``, checked (a bad value fails when the epoch's
    loader is built, in the main process, with the key named)."""
    syn = cfg.SISSI.SYNTH
    if not 0.0 <= float(syn.REAL_FRACTION) <= 1.0:
        raise ValueError(f"SISSI.SYNTH.REAL_FRACTION={syn.REAL_FRACTION}: expected a fraction in [0, 1]")
    bad = [s for s in syn.PATCHES_FROM if s not in _PATCH_SOURCES] or ([] if syn.PATCHES_FROM else ["(none)"])
    if bad:
        raise ValueError(f"SISSI.SYNTH.PATCHES_FROM={tuple(syn.PATCHES_FROM)!r}: expected one or both of {_PATCH_SOURCES}")
    if syn.CANVAS not in CANVASES:
        raise ValueError(f"SISSI.SYNTH.CANVAS={syn.CANVAS!r}: expected one of {CANVASES}")
    return SynthParams(count=tuple(syn.COUNT), negatives=tuple(syn.NEGATIVES), max_overlap=float(syn.MAX_OVERLAP),
                       size_jitter=float(syn.SIZE_JITTER), flip=bool(syn.FLIP), rotate90=bool(syn.ROTATE90),
                       blend=str(syn.BLEND), feather=int(syn.FEATHER))


def _xyxy(annotation) -> list:
    from detectron2.structures import BoxMode

    return BoxMode.convert([float(v) for v in annotation["bbox"]], annotation.get("bbox_mode", BoxMode.XYXY_ABS),
                           BoxMode.XYXY_ABS)


def build_patch_bank(records, margin: float, max_patches: int = 0, seed: int = 0, epoch: int = 0) -> list:
    """:class:`~sissi_d2.algorithms.cut_paste.Patch` es of the labelled cells of ``records`` (and,
    as negatives, their ``sissi_negatives`` boxes), each image read once. With ``max_patches`` > 0
    whole images are taken in an order seeded by (seed, epoch) until that many patches are cut."""
    order = np.random.default_rng([int(seed), int(epoch), 1]).permutation(len(records))
    patches: list = []
    for i in order.tolist():
        record = records[i]
        boxes = [_xyxy(a) for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        negatives = record.get("sissi_negatives") or []
        if not boxes and not negatives:
            continue
        image = read_bgr8(record["file_name"])
        patches += cut_patches(image, boxes, margin) + cut_patches(image, negatives, margin, negative=True)
        if 0 < max_patches <= len(patches):
            break
    return patches


@SISSI_MAPPER_REGISTRY.register()
class SISSICutPasteMapper(SISSITargetMapper):
    """Target mapper that turns a draw, with probability 1 - SISSI.SYNTH.REAL_FRACTION, into a
    cut-paste image of ``patches`` on a canvas made from the drawn image, with the pasted cells'
    boxes as its annotations; the other draws are mapped as real images (cloned when ``cloning``).

    Every random choice comes from numpy's global generator, which the two-source loader seeds
    per draw from (seed, epoch, position): an image is the same in a resumed run.
    """

    def __init__(self, cfg, is_train: bool = True, augmentations=None, cloning: bool = False, patches=()):
        super().__init__(cfg, is_train, augmentations, cloning)
        self.params = synth_params(cfg)
        self.real_fraction = float(cfg.SISSI.SYNTH.REAL_FRACTION)
        self.canvas = cfg.SISSI.SYNTH.CANVAS
        self.patches = list(patches)
        cells = [max(p.size) for p in self.patches if not p.negative]
        self.median_ksize = int(cfg.SISSI.SYNTH.MEDIAN_KSIZE) or median_kernel(np.median(cells) if cells else 15)
        if not cells:
            logger.warning("SISSI.SYNTH: no labelled cell to cut patches from; every target draw stays a real image.")

    def prepare_image(self, record, image):
        from detectron2.structures import BoxMode

        rng = np.random.default_rng(np.random.randint(0, 2**32, size=4))  # the draw's seed
        if not any(not p.negative for p in self.patches) or rng.random() < self.real_fraction:
            return super().prepare_image(record, image)
        canvas = make_canvas(image, self.canvas, (self.blur_ksize, self.blur_sigma), self.median_ksize)
        image, boxes, _ = synthesize(canvas, self.patches, rng, self.params)
        record["annotations"] = [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                                 for b in boxes]
        record["sissi_synthetic"] = True
        return image


def build_cut_paste_mapper(cfg, target_records, source_records, epoch: int, cloning: bool = False):
    """The target mapper of one epoch with SISSI.SYNTH: patches cut from ``target_records`` (the
    epoch's labels: weak labels, boxes from clicks or pseudo-labels) and / or ``source_records``."""
    if cfg.SISSI.MAPPER.TARGET not in ("SISSITargetMapper", SISSICutPasteMapper.__name__):
        raise ValueError(f"SISSI.SYNTH.ENABLED replaces the target mapper, but SISSI.MAPPER.TARGET is "
                         f"{cfg.SISSI.MAPPER.TARGET!r}: subclass SISSICutPasteMapper instead, or turn SISSI.SYNTH off.")
    params = synth_params(cfg)
    sources = {"target": target_records, "source": source_records}
    seed = int(cfg.SEED) if cfg.SEED >= 0 else 0
    patches = []
    for name in cfg.SISSI.SYNTH.PATCHES_FROM:
        # the jitter may grow a crop by size_jitter / 2 on each side: cut that margin now
        patches += build_patch_bank(sources[name], params.size_jitter / 2 + 0.02, int(cfg.SISSI.SYNTH.MAX_PATCHES),
                                    seed, epoch)
    logger.info("SISSI.SYNTH epoch %d: %d patches from the %s labels, %.0f %% real target images", epoch,
                len(patches), " and ".join(cfg.SISSI.SYNTH.PATCHES_FROM), 100 * float(cfg.SISSI.SYNTH.REAL_FRACTION))
    return SISSICutPasteMapper(cfg, True, cloning=cloning, patches=patches)
