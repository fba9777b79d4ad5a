"""Model parts of sissi_d2, registered in Detectron2's registries on import.

* ``MaskedImagePretext`` (``META_ARCH_REGISTRY``): a self-supervised pretraining stage that
  teaches the detector's backbone to paint hidden patches of unlabelled images back.
"""
from .masked_pretext import MaskedImagePretext, reconstruction_panels

__all__ = ["MaskedImagePretext", "reconstruction_panels"]
