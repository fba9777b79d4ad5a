"""Initial weak box labels by classical image processing (SISSI appendix A) and their quality."""
from .pipelines import (
    WEAK_LABEL_PIPELINE_REGISTRY,
    alive_boxes,
    available_pipelines,
    dead_boxes,
    drop_small_boxes,
    inhibited_boxes,
    make_weak_labels,
    nms,
    phase_boxes,
    size_scale,
)
from .quality import score_against_masks

__all__ = [
    "WEAK_LABEL_PIPELINE_REGISTRY",
    "alive_boxes",
    "inhibited_boxes",
    "dead_boxes",
    "drop_small_boxes",
    "phase_boxes",
    "make_weak_labels",
    "available_pipelines",
    "nms",
    "size_scale",
    "score_against_masks",
]
