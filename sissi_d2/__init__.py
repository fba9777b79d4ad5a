"""sissi_d2: SISSI label correction for Detectron2.

Importing the package first applies the compatibility patches Detectron2 0.6 needs on this
stack (see ``sissi_d2._compat``), then exposes the public API.
"""
from . import _compat

_compat.apply_all()

from .config import add_sissi_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_sissi_config", "__version__"]
