"""Pure algorithms of SISSI (numpy / scipy / OpenCV; no Detectron2 model needed).

* ``adele``: when to start correcting labels (memorisation detection on the AP50 curve).
* ``tta``: the 20 test-time views and the exact mapping of their boxes back.
* ``wbf``: weighted boxes fusion of the views' boxes into pseudo-labels.
* ``cloning``: synthetic-like images by seamless cloning of the boxed cells.
* ``ema``: a slowly moving teacher for the pseudo-labels (option, not in the paper).
"""
from .adele import (
    MemorisationDetector,
    estimate_update_epoch,
    fit_learning_curve,
    learning_curve,
    learning_curve_slope,
)
from .ema import EMATeacher, ema_update_
from .cloning import blur_background, boxes_to_mask, make_synthetic_like
from .tta import (
    FLIP_MODES,
    TTAView,
    apply_view,
    apply_view_to_boxes,
    make_views,
    undo_view,
    view_size,
)
from .wbf import clean_view_boxes, fuse_views

__all__ = [
    "MemorisationDetector",
    "estimate_update_epoch",
    "fit_learning_curve",
    "learning_curve",
    "learning_curve_slope",
    "blur_background",
    "boxes_to_mask",
    "make_synthetic_like",
    "EMATeacher",
    "ema_update_",
    "FLIP_MODES",
    "TTAView",
    "apply_view",
    "apply_view_to_boxes",
    "make_views",
    "undo_view",
    "view_size",
    "clean_view_boxes",
    "fuse_views",
]
