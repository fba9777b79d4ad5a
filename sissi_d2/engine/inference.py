"""Batched inference on dataset records: plain predictions and TTA + WBF pseudo-labels.

The model sees each target image in every test-time view (real multi-scale: the view's scale
multiplies the test resize, unlike the authors' code which resized every view back to one
size), its boxes are mapped back to the original frame exactly (``algorithms.tta``) and fused
(``algorithms.wbf``). With several processes each rank handles a shard of the images and the
results are gathered, so every rank ends with the same predictions.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable, Iterator

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..algorithms.tta import TTAView, apply_view, make_views, view_size, undo_view
from ..algorithms.wbf import fuse_views
from ..data.image_io import read_bgr8
from ..data.label_files import image_key
from ..utils.progress import progress

__all__ = ["RecordPredictor", "fusion_kwargs", "image_key"]

logger = logging.getLogger(__name__)
IDENTITY_VIEW = TTAView(1.0, False, False)



def fusion_kwargs(cfg) -> dict:
    p = cfg.SISSI.PSEUDO
    return dict(
        iou_thr=p.WBF_IOU_THR, skip_box_thr=p.WBF_SKIP_BOX_THR, conf_type=p.WBF_CONF_TYPE,
        min_view_score=p.MIN_VIEW_SCORE, score_thresh=p.SCORE_THRESH, nms_thresh=p.NMS_THRESH,
        topk=p.TOPK, anchor_weight=p.WEAK_LABEL_WEIGHT,
    )


@contextlib.contextmanager
def inference_mode(model):
    """Eval mode and no autograd for the duration; the previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model.module if isinstance(model, DistributedDataParallel) else model
    finally:
        model.train(was_training)


class RecordPredictor:
    """Runs a detector over dataset records, in TTA views, in batches of ``batch_size`` inputs."""

    def __init__(self, cfg, views=None, batch_size=None):
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
        self.input_format = cfg.INPUT.FORMAT
        self.views = list(views) if views is not None else make_views(cfg.SISSI.PSEUDO.SCALES, cfg.SISSI.PSEUDO.FLIPS)
        self.batch_size = int(batch_size or cfg.SISSI.PSEUDO.BATCH_SIZE)
        self.fusion = fusion_kwargs(cfg)

    def _view_inputs(self, image: np.ndarray, views):
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        for view in views:
            img = apply_view(resized, view)
            if self.input_format == "RGB":
                img = img[:, :, ::-1]
            out_h, out_w = view_size(view, height, width)
            yield {"image": torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))),
                   "height": out_h, "width": out_w}

    def _run_batched(self, model, items):
        """items: (tag, input dict) pairs -> list of (tag, boxes, scores) in input order.

        Only inputs of the same size share a forward pass: padding a smaller input to the batch
        size would change its GroupNorm statistics, and so its boxes."""
        items = list(items)
        by_size: dict = {}
        for pos, (_, inp) in enumerate(items):
            by_size.setdefault(tuple(inp["image"].shape[-2:]), []).append(pos)
        results = [None] * len(items)
        for positions in by_size.values():
            for i in range(0, len(positions), self.batch_size):
                chunk = positions[i : i + self.batch_size]
                outputs = model([items[p][1] for p in chunk])
                for p, out in zip(chunk, outputs):
                    inst = out["instances"].to("cpu")
                    results[p] = (items[p][0], inst.pred_boxes.tensor.numpy().astype(np.float32),
                                  inst.scores.numpy().astype(np.float32))
        return results

    def predict_images(self, model, tagged_images: Iterable, views=None) -> Iterator:
        """(tag, image) pairs -> (tag, height, width, [(boxes in the original frame, scores) per
        view]) in input order.

        Images are taken ``batch_size`` at a time and all their views are run together, so the
        same view of several equally sized images (every Usiigaci image, every synthetic image)
        shares a forward pass: full batches for any number of views. Inputs of different sizes
        never share one (see ``_run_batched``), so the boxes do not depend on the batch size."""
        views = self.views if views is None else list(views)
        group: list = []

        def flush():
            items = [((i, view), inp) for i, (_, image) in enumerate(group)
                     for view, inp in zip(views, self._view_inputs(image, views))]
            per_image = [[] for _ in group]
            for (i, view), boxes, scores in self._run_batched(model, items):
                height, width = group[i][1].shape[:2]
                per_image[i].append((undo_view(boxes, view, height, width), scores))
            done = [(tag, image.shape[0], image.shape[1], outs) for (tag, image), outs in zip(group, per_image)]
            group.clear()
            return done

        for tag, image in tagged_images:
            group.append((tag, image))
            if len(group) >= self.batch_size:
                yield from flush()
        if group:
            yield from flush()

    def fuse(self, per_view, height: int, width: int, anchor_boxes=None):
        """WBF of one image's per-view (boxes, scores) with the pseudo-label settings; the
        image's weak labels vote too when SISSI.PSEUDO.WEAK_LABEL_WEIGHT > 0."""
        return fuse_views([b for b, _ in per_view], [s for _, s in per_view], height, width,
                          anchor_boxes=anchor_boxes, **self.fusion)

    def predict_views(self, model, image: np.ndarray, views=None):
        """Per view: (boxes in the original frame, scores)."""
        return next(self.predict_images(model, [(None, image)], views))[3]

    def fused_boxes(self, model, image: np.ndarray):
        height, width = image.shape[:2]
        return self.fuse(self.predict_views(model, image), height, width)

    def _sharded(self, model, records, views, combine, desc):
        """combine(key, per-view outputs, height, width) -> (boxes, scores) for each record, computed
        on this rank's shard of the records and gathered on every rank."""
        rank, world = comm.get_rank(), comm.get_world_size()
        mine = records[rank::world]
        local = {}
        with inference_mode(model) as net:
            tagged = ((image_key(r), read_bgr8(r["file_name"]))
                      for r in progress(mine, desc=desc, disable=not comm.is_main_process()))
            for key, height, width, per_view in self.predict_images(net, tagged, views):
                boxes, scores = combine(key, per_view, height, width)
                local[key] = (np.asarray(boxes, np.float32).reshape(-1, 4).tolist(),
                              np.asarray(scores, np.float32).reshape(-1).tolist())
        merged = {}
        for part in (comm.all_gather(local) if world > 1 else [local]):
            merged.update(part)
        return {k: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32)) for k, (b, s) in merged.items()}

    def plain_predictions(self, model, records, desc="inference"):
        """file basename -> (boxes, scores) of plain single-view inference, on every rank."""
        return self._sharded(model, records, [IDENTITY_VIEW], lambda key, per_view, h, w: per_view[0], desc)

    def pseudo_labels(self, model, records, desc="pseudo-labels", weak_boxes=None):
        """file basename -> fused (boxes, scores) of all TTA views, on every rank.
        ``weak_boxes`` (file basename -> Nx4) are the initial weak labels that vote in the
        fusion when SISSI.PSEUDO.WEAK_LABEL_WEIGHT > 0."""
        weak_boxes = weak_boxes or {}
        return self._sharded(
            model, records, self.views,
            lambda key, per_view, h, w: self.fuse(per_view, h, w, anchor_boxes=weak_boxes.get(key)), desc)

