"""Model parts of sissi_d2, registered in Detectron2's registries on import.

* ``MaskedImagePretext`` (``META_ARCH_REGISTRY``): a self-supervised pretraining stage that
  teaches the detector's backbone to paint hidden patches of unlabelled images back.
* ``MissingLabelRPN`` (``PROPOSAL_GENERATOR_REGISTRY``) and ``MissingLabelROIHeads``
  (``ROI_HEADS_REGISTRY``): Detectron2's heads whose losses do not punish confident detections
  away from every label (weak labels that miss cells).
"""
from .masked_pretext import MaskedImagePretext, reconstruction_panels
from .missing_label_heads import MissingLabelROIHeads, MissingLabelRPN

__all__ = ["MaskedImagePretext", "reconstruction_panels", "MissingLabelRPN", "MissingLabelROIHeads"]
