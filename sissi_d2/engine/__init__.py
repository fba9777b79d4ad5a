from .hooks import EpochHook, LabelCorrectionHook, MemorisationHook, SourceValLossHook
from .inference import RecordPredictor
from .launch import launch
from .start_rules import SISSI_START_RULE_REGISTRY, build_start_rule
from .trainer import SISSITrainer, create_ddp_model

__all__ = [
    "EpochHook", "MemorisationHook", "SourceValLossHook", "RecordPredictor", "launch",
    "SISSI_START_RULE_REGISTRY", "build_start_rule", "LabelCorrectionHook", "SISSITrainer", "create_ddp_model",
]
