"""RPN and RoI heads that do not punish confident detections away from every label.

Registered as ``MissingLabelRPN`` (``PROPOSAL_GENERATOR_REGISTRY``) and ``MissingLabelROIHeads``
(``ROI_HEADS_REGISTRY``); select them with ``MODEL.PROPOSAL_GENERATOR.NAME`` and
``MODEL.ROI_HEADS.NAME``. Both are Detectron2's own heads, built and initialised exactly as
``RPN`` and ``StandardROIHeads`` (the same weights for the same seed); only their training
losses differ: a sampled negative that the model already scores as a cell at >=
``MODEL.MISSING_LABELS.MIN_SCORE`` and that overlaps no label (IoU < ``MAX_IOU`` with the label
it was matched to) is left out of the objectness / classification loss
(``algorithms.missing_labels``; ``MODEL.MISSING_LABELS.SKIP_CONFIDENT`` False turns this off).

With ``MODEL.MISSING_LABELS.IGNORE_CROWD`` the mappers also hand over the labels marked
``iscrowd`` (field ``gt_ignore``): the heads take them out of the labels, and a sampled negative
that overlaps one as much as a positive would overlap its label is left out of the loss too, so a
crowd region is neither a cell nor background (COCO's meaning of a crowd region; the study uses
it for the cells that the weak labels miss). Not in the paper: options for weak labels that miss
objects. Inference is unchanged.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage

from ..algorithms.missing_labels import unlabelled_confident_negatives

__all__ = ["MissingLabelRPN", "MissingLabelROIHeads"]

# Detectron2's cross_entropy ignores this target (torch's default ignore_index).
_IGNORED_CLASS = -100


def _settings(cfg) -> dict:
    return {"missing_label_min_score": float(cfg.MODEL.MISSING_LABELS.MIN_SCORE),
            "missing_label_max_iou": float(cfg.MODEL.MISSING_LABELS.MAX_IOU),
            "skip_confident": bool(cfg.MODEL.MISSING_LABELS.SKIP_CONFIDENT)}


def _split_crowd(targets: List[Instances]):
    """(labels, crowd regions) of each image: the instances without and with ``gt_ignore``."""
    if not targets or not targets[0].has("gt_ignore"):
        return targets, [None] * len(targets or [])
    return [t[~t.gt_ignore.bool()] for t in targets], [t[t.gt_ignore.bool()] for t in targets]


def _near_crowd(samples: Boxes, crowd, min_iou: float) -> torch.Tensor:
    """Bool per sample: IoU >= ``min_iou`` with some crowd region of its image."""
    if crowd is None or len(crowd) == 0:
        return torch.zeros(len(samples), dtype=torch.bool, device=samples.tensor.device)
    return pairwise_iou(crowd.gt_boxes, samples).max(dim=0).values >= min_iou


def _put_ignored_share(name: str, ignored: int, negatives: int) -> None:
    # Logged so that a run shows how many background samples the option lets go.
    get_event_storage().put_scalar(name, ignored / max(negatives, 1))


class _MissingLabelSettings:
    """``MODEL.MISSING_LABELS`` read on top of the Detectron2 head's own settings (mixed in first)."""

    @configurable
    def __init__(self, *, missing_label_min_score: float, missing_label_max_iou: float, skip_confident: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.missing_label_min_score = missing_label_min_score
        self.missing_label_max_iou = missing_label_max_iou
        self.skip_confident = skip_confident

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), **_settings(cfg)}


@PROPOSAL_GENERATOR_REGISTRY.register()
class MissingLabelRPN(_MissingLabelSettings, RPN):
    """Detectron2's RPN whose objectness loss skips confident anchors away from every label."""

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors, gt_instances):
        labelled, crowd = _split_crowd(gt_instances)
        gt_labels, matched = super().label_and_sample_anchors(anchors, labelled)
        if all(c is None for c in crowd):
            return gt_labels, matched
        all_anchors = Boxes.cat(anchors)
        # An anchor at IoU >= the matcher's background threshold with a label is not background
        # (Detectron2: 0.3); an anchor as near a crowd region is not background either.
        min_iou = self.anchor_matcher.thresholds[1]
        relaxed, ignored, negatives = [], 0, 0
        for labels, c in zip(gt_labels, crowd):
            skip = (labels == 0) & _near_crowd(all_anchors, c, min_iou)
            ignored += int(skip.sum())
            negatives += int((labels == 0).sum())
            relaxed.append(torch.where(skip, torch.full_like(labels, -1), labels))  # -1: not sampled
        _put_ignored_share("rpn/crowd_ignored_negatives", ignored, negatives)
        return relaxed, matched

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if not self.skip_confident:
            return super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        all_anchors = Boxes.cat(anchors)  # one list per level, as the labels and logits are concatenated
        logits = torch.cat(pred_objectness_logits, dim=1)  # (N, all anchors)
        relaxed, ignored, negatives = [], 0, 0
        for i, (labels, matched) in enumerate(zip(gt_labels, gt_boxes)):
            label_iou = matched_pairwise_iou(all_anchors, Boxes(matched))
            skip = unlabelled_confident_negatives(labels == 0, torch.sigmoid(logits[i]), label_iou,
                                                  self.missing_label_min_score, self.missing_label_max_iou)
            ignored += int(skip.sum())
            negatives += int((labels == 0).sum())
            relaxed.append(torch.where(skip, torch.full_like(labels, -1), labels))  # -1: not sampled
        _put_ignored_share("rpn/ignored_negatives", ignored, negatives)
        return super().losses(anchors, pred_objectness_logits, relaxed, pred_anchor_deltas, gt_boxes)


@ROI_HEADS_REGISTRY.register()
class MissingLabelROIHeads(_MissingLabelSettings, StandardROIHeads):
    """Detectron2's StandardROIHeads whose box classifier skips confident proposals away from every
    label. Box regression is trained on the positives as before."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.train_on_pred_boxes:
            raise ValueError("MissingLabelROIHeads does not support MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES; "
                             "set it to False or use StandardROIHeads")

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        labelled, crowd = _split_crowd(targets)
        sampled = super().label_and_sample_proposals(proposals, labelled)
        if all(c is None for c in crowd):
            return sampled
        # A proposal at IoU >= the matcher's foreground threshold (0.5) with a crowd region would
        # be a positive if the region were a label: it is marked and left out of the loss below.
        min_iou = self.proposal_matcher.thresholds[1]
        for p, c in zip(sampled, crowd):
            p.near_crowd = (p.gt_classes == self.num_classes) & _near_crowd(p.proposal_boxes, c, min_iou)
        return sampled

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if not self.training:
            return super()._forward_box(features, proposals)
        # StandardROIHeads._forward_box's training path, with the targets relaxed between the
        # prediction and the loss (the loss needs this iteration's scores).
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [x.proposal_boxes for x in proposals]))
        predictions = self.box_predictor(box_features)
        return self.box_predictor.losses(predictions, self._relax_targets(predictions[0], proposals))

    def _relax_targets(self, scores: torch.Tensor, proposals: List[Instances]) -> List[Instances]:
        cell_prob = 1.0 - torch.softmax(scores.detach(), dim=1)[:, -1]  # the last class is background
        relaxed, start, ignored, crowd_ignored, negatives = [], 0, 0, 0, 0
        for p in proposals:
            n = len(p)
            classes = p.gt_classes
            is_negative = classes == self.num_classes
            skip = torch.zeros_like(is_negative)
            if self.skip_confident:
                if p.has("gt_boxes"):
                    label_iou = matched_pairwise_iou(p.proposal_boxes, p.gt_boxes)
                else:  # an image without labels: every proposal is away from every label
                    label_iou = torch.zeros(n, device=classes.device)
                skip = unlabelled_confident_negatives(is_negative, cell_prob[start:start + n], label_iou,
                                                      self.missing_label_min_score, self.missing_label_max_iou)
                ignored += int(skip.sum())
            if p.has("near_crowd"):
                crowd_ignored += int((p.near_crowd & ~skip).sum())
                skip = skip | p.near_crowd
            start += n
            negatives += int(is_negative.sum())
            q = Instances(p.image_size, **p.get_fields())  # the caller's proposals stay as they were
            q.gt_classes = torch.where(skip, torch.full_like(classes, _IGNORED_CLASS), classes)
            relaxed.append(q)
        if self.skip_confident:
            _put_ignored_share("roi_head/ignored_negatives", ignored, negatives)
        if any(p.has("near_crowd") for p in proposals):
            _put_ignored_share("roi_head/crowd_ignored_negatives", crowd_ignored, negatives)
        if ignored + crowd_ignored and ignored + crowd_ignored == sum(len(p) for p in proposals):
            return proposals  # nothing left to score: a mean over no sample would be NaN
        return relaxed
