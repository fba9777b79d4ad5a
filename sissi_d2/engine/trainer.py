"""``SISSITrainer``: Detectron2's ``DefaultTrainer`` with SISSI's epochs.

Detectron2 trains by iterations; SISSI works by epochs over the target set. The trainer turns
``SISSI.EPOCHS`` into ``SOLVER.MAX_ITER`` and adds one ``LabelCorrectionHook``
(``engine/hooks.py``) that, at every epoch start, asks the start rule whether correction is on,
replaces the target labels with TTA + WBF pseudo-labels, switches seamless cloning on and asks
the trainer for the two-source loader of the epoch. Restoring earlier weights when correction
starts (the Baseline) is an explicit trainer step, :meth:`SISSITrainer.restore_epoch_weights`.
"""
from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.data import build_detection_test_loader
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .. import modeling  # noqa: F401  (registers the model parts for build_model)
from ..data.mappers import SISSISourceMapper, build_cut_paste_mapper, build_mapper, cloning_blur
from ..data.two_source import TwoSourceLoader, iters_per_epoch, per_rank_batch
from ..evaluation.evaluator import CellBoxEvaluator
from ..utils.disk import DiskBudgetError, check_run_fits, stop_cleanly_on_full_disk
from .checkpoint import AtomicCheckpointer
from .hooks import LabelCorrectionHook, MemorisationHook, SourceValLossHook
from .start_rules import MEMORISATION, build_start_rule, recorded_signals

# LabelCorrectionHook lives in hooks.py; it stays importable from here.
__all__ = ["SISSITrainer", "LabelCorrectionHook", "create_ddp_model", "require_registered"]

logger = logging.getLogger(__name__)


def create_ddp_model(model, **kwargs):
    """DDP that also wraps CPU models (Detectron2 0.6 always passes a CUDA device id)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    kwargs.setdefault("broadcast_buffers", False)
    return DistributedDataParallel(model, **kwargs)


class SISSITrainer(DefaultTrainer):
    """DefaultTrainer for mixed source/target batches with SISSI label correction."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if not cfg.SISSI.TARGET_DATASETS or not cfg.SISSI.SOURCE_DATASETS:
            raise ValueError(
                "SISSI needs SISSI.SOURCE_DATASETS (labelled source) and SISSI.TARGET_DATASETS (weakly "
                "labelled target); see configs/Base-SISSI.yaml."
            )
        if cfg.SISSI.CLONING.MODE not in ("never", "always", "on_correction"):
            raise ValueError(f"SISSI.CLONING.MODE={cfg.SISSI.CLONING.MODE!r}: expected never, always or on_correction")
        cloning_blur(cfg)  # an unknown blur preset fails now, not in a loader worker later
        for names in (cfg.SISSI.SOURCE_DATASETS, cfg.SISSI.TARGET_DATASETS, cfg.SISSI.SOURCE_VAL_DATASETS, cfg.DATASETS.TEST):
            require_registered(names)
        world = comm.get_world_size()
        self.n_source = per_rank_batch(cfg.SISSI.IMS_PER_BATCH_SOURCE, world, "SISSI.IMS_PER_BATCH_SOURCE")
        self.n_target = per_rank_batch(cfg.SISSI.IMS_PER_BATCH_TARGET, world, "SISSI.IMS_PER_BATCH_TARGET")
        self.source_records = get_detection_dataset_dicts(list(cfg.SISSI.SOURCE_DATASETS), filter_empty=False)
        self.initial_target_records = get_detection_dataset_dicts(list(cfg.SISSI.TARGET_DATASETS), filter_empty=False)
        self.target_repeats = int(cfg.SISSI.TARGET_REPEATS)
        if self.target_repeats < 1:
            raise ValueError(f"SISSI.TARGET_REPEATS={self.target_repeats}: must be >= 1")
        self.iters_per_epoch = iters_per_epoch(len(self.initial_target_records) * self.target_repeats,
                                               cfg.SISSI.IMS_PER_BATCH_TARGET)

        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = int(cfg.SISSI.EPOCHS) * self.iters_per_epoch
        cfg.SOLVER.CHECKPOINT_PERIOD = max(1, int(cfg.SISSI.CHECKPOINT_EVERY_EPOCHS)) * self.iters_per_epoch
        cfg.SOLVER.IMS_PER_BATCH = cfg.SISSI.IMS_PER_BATCH_SOURCE + cfg.SISSI.IMS_PER_BATCH_TARGET
        cfg.freeze()
        self.cfg = cfg
        self.sissi_dir = os.path.join(cfg.OUTPUT_DIR, "sissi")
        logger.info(
            "SISSI: %d source + %d target images per iteration, %d target images -> %d iterations per "
            "epoch, %d epochs = %d iterations", cfg.SISSI.IMS_PER_BATCH_SOURCE, cfg.SISSI.IMS_PER_BATCH_TARGET,
            len(self.initial_target_records), self.iters_per_epoch, cfg.SISSI.EPOCHS, cfg.SOLVER.MAX_ITER,
        )

        if cfg.SEED >= 0:
            torch.manual_seed(cfg.SEED)  # same initial weights for every row with this seed
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = create_ddp_model(model)
        # The loader is set per epoch by LabelCorrectionHook before the first step.
        self._trainer = SimpleTrainer(model, [], optimizer)
        self._loader = None
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, keep_last=int(cfg.SISSI.DISK.KEEP_LAST),
                                               trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER

        self.start_rule = build_start_rule(cfg)
        recorded = recorded_signals(cfg)
        self.start_rule.check_signals(recorded)
        self.source_val_hook = None
        if cfg.SISSI.SOURCE_VAL_DATASETS:
            val_records = get_detection_dataset_dicts(list(cfg.SISSI.SOURCE_VAL_DATASETS), filter_empty=False)
            if cfg.SISSI.SOURCE_VAL.MAX_IMAGES > 0:
                val_records = val_records[: cfg.SISSI.SOURCE_VAL.MAX_IMAGES]
            val_mapper = SISSISourceMapper(cfg, is_train=True, augmentations=_test_resize(cfg))
            self.source_val_hook = SourceValLossHook(val_records, val_mapper, self.iters_per_epoch, self.sissi_dir)
        # The memorisation check runs for a rule that needs it, and for any rule with ADELE.TRACK
        # (its curve is informative on every row, and rows that share their past share it too).
        self.memorisation_hook = None
        if MEMORISATION in recorded:
            horizon = cfg.SISSI.ADELE.HORIZON or cfg.SISSI.EPOCHS
            self.memorisation_hook = MemorisationHook(
                cfg, self.initial_target_records, self.iters_per_epoch, horizon, self.sissi_dir
            )
        self.correction_hook = LabelCorrectionHook(
            cfg, self.initial_target_records, self.iters_per_epoch, self.start_rule, self.sissi_dir,
            memorisation=self.memorisation_hook, source_val=self.source_val_hook,
        )
        if self.source_val_hook is not None:
            # Measured until correction starts (this hook runs before the correction hook, so the
            # start epoch's loss is there for the rule); after that no rule reads it.
            self.source_val_hook.stop_when = lambda correction=self.correction_hook: correction.started
        self.register_hooks(self.build_hooks())

    # -- data --------------------------------------------------------------------------------
    @property
    def target_records(self) -> list:
        """The target labels in use (weak labels, then the latest pseudo-labels)."""
        return self.correction_hook.records

    def set_epoch_loader(self, epoch: int, start_batch: int, target_records, cloning: bool):
        self.close_loader()
        cfg = self.cfg
        self._loader = TwoSourceLoader.for_epoch(
            self.source_records, list(target_records) * self.target_repeats,
            build_mapper(cfg, "source", True), self.build_target_mapper(epoch, target_records, cloning),
            source_batch_total=cfg.SISSI.IMS_PER_BATCH_SOURCE, target_batch_total=cfg.SISSI.IMS_PER_BATCH_TARGET,
            seed=_seed(cfg), epoch=epoch, start_batch=start_batch, num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
        self._trainer.data_loader = self._loader
        self._trainer._data_loader_iter = iter(self._loader)

    def build_target_mapper(self, epoch: int, target_records, cloning: bool):
        """The target mapper of an epoch; with SISSI.SYNTH.ENABLED the cut-paste mapper, whose
        patches are cut from the epoch's target labels (the current pseudo-labels once
        correction runs) and / or the source labels."""
        if self.cfg.SISSI.SYNTH.ENABLED:
            return build_cut_paste_mapper(self.cfg, target_records, self.source_records, epoch, cloning=cloning)
        return build_mapper(self.cfg, "target", True, cloning=cloning)

    def close_loader(self):
        # Dropping the iterator shuts its worker processes down before new ones start.
        self._trainer._data_loader_iter = iter(())
        self._loader = None

    # -- the restore step of a rule that starts from earlier weights ------------------------
    def restore_epoch_weights(self, epoch: int) -> None:
        """Load the weights the model had at the start of ``epoch``, as kept by the source
        validation hook (the weights with the lowest loss). Only the weights: the optimizer's
        momentum and the LR schedule stay where the run is (why: configs/baseline.yaml and
        docs/rows.md)."""
        val = self.source_val_hook
        path = val.best_weights_path if val is not None else None
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"the weights of epoch {epoch} to restore are not in {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if int(state.get("epoch", -1)) != int(epoch):
            raise ValueError(f"{path} holds the weights of epoch {state.get('epoch')}, not of epoch {epoch}")
        net = self.model.module if hasattr(self.model, "module") else self.model
        net.load_state_dict(state["model"])
        logger.info("Correction starts at epoch %d from the weights of epoch %d (source validation loss %.4f)",
                    self.iter // self.iters_per_epoch, epoch, val.best_loss)

    # -- hooks, checkpoints ------------------------------------------------------------------
    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if self.source_val_hook is not None:
            ret.append(self.source_val_hook)
        if self.memorisation_hook is not None:
            ret.append(self.memorisation_hook)
        ret.append(self.correction_hook)
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        if cfg.DATASETS.TEST:
            ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def run_step(self):
        # Torch's RNG (RPN / RoI sampling) is reseeded each step from (SEED, iteration), so a
        # resumed run draws exactly what an uninterrupted one would.
        if self.cfg.SEED >= 0:
            torch.manual_seed(self.cfg.SEED * 1_000_003 + self.iter * (comm.get_world_size()) + comm.get_rank())
        super().run_step()

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def train(self):
        # Refuse to start what cannot fit on the disk (rank 0 measures, every rank stops together).
        problem = None
        if comm.is_main_process():
            try:
                check_run_fits(self.cfg, self.model, len(self.initial_target_records))
            except DiskBudgetError as e:
                problem = str(e)
        problem = comm.all_gather(problem)[0] if comm.get_world_size() > 1 else problem
        if problem:
            raise DiskBudgetError(problem)
        try:
            with stop_cleanly_on_full_disk(self.cfg.OUTPUT_DIR):
                return super().train()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            raise FloatingPointError(
                f"{e}\nTraining diverged. The last good checkpoint is {last or '(none yet)'}; lower "
                "SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, then continue with --resume."
            ) from e

    # -- evaluation --------------------------------------------------------------------------
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return CellBoxEvaluator(dataset_name, cfg.SISSI.EVAL.READERS, cfg.SISSI.EVAL.MAX_DETS, output_folder)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=SISSISourceMapper(cfg, is_train=False))


def require_registered(names) -> None:
    """A clear error, with the way to get the data, for a data set name nobody registered."""
    from detectron2.data import DatasetCatalog

    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise KeyError(
            f"Data set(s) {missing} are not registered. Real data sets are registered when "
            "../shared/data (or $SISSI_SHARED_DATA) exists, usiigaci_train_weak once "
            "tools/make_weak_labels.py has written its json, synth_* once tools/demo.py (or "
            "python -m sissi_d2.data.synthetic) has generated them; your own with "
            "SISSI.REGISTER (\"name=kind:path\",). See datasets/README.md."
        )


def _test_resize(cfg):
    from detectron2.data import transforms as T

    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


def _seed(cfg) -> int:
    return int(cfg.SEED) if cfg.SEED >= 0 else 0

