"""``SISSITrainer``: Detectron2's ``DefaultTrainer`` with SISSI's epochs.

Detectron2 trains by iterations; SISSI works by epochs over the target set. The trainer turns
``SISSI.EPOCHS`` into ``SOLVER.MAX_ITER`` and adds one ``LabelCorrectionHook`` that, at every
epoch start, asks the start rule whether correction is on, replaces the target labels with
TTA + WBF pseudo-labels, switches seamless cloning on and rebuilds the two-source loader.
"""
from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.data import build_detection_test_loader
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import load_coco_boxes, save_records_as_coco
from ..data.mappers import SISSISourceMapper, build_mapper, cloning_blur
from ..data.two_source import TwoSourceLoader, iters_per_epoch, per_rank_batch
from ..evaluation.evaluator import CellBoxEvaluator
from .checkpoint import AtomicCheckpointer
from .hooks import EpochHook, MemorisationHook, SourceValLossHook
from .inference import RecordPredictor, image_key
from .start_rules import build_start_rule

__all__ = ["SISSITrainer", "LabelCorrectionHook", "create_ddp_model"]

logger = logging.getLogger(__name__)


def create_ddp_model(model, **kwargs):
    """DDP that also wraps CPU models (Detectron2 0.6 always passes a CUDA device id)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    kwargs.setdefault("broadcast_buffers", False)
    return DistributedDataParallel(model, **kwargs)


def _with_boxes(record, boxes, scores):
    out = dict(record)
    out["annotations"] = [
        {"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "score": float(s)}
        for b, s in zip(boxes, scores)
    ]
    return out


class LabelCorrectionHook(EpochHook):
    """Epoch start: start rule -> pseudo-labels -> cloning -> new two-source loader."""

    def __init__(self, trainer, start_rule):
        super().__init__(trainer.iters_per_epoch)
        self.t = weakref.proxy(trainer)
        self.rule = start_rule
        self.predictor = RecordPredictor(trainer.cfg)
        self.labels_epoch = None  # epoch whose pseudo-labels are the current target labels
        self.history: list = []
        self._loader_key = None

    # -- state -------------------------------------------------------------------------------
    def snapshot_path(self, epoch: int) -> str:
        return os.path.join(self.t.sissi_dir, "pseudo_labels", f"epoch_{epoch:04d}.json")

    def state_dict(self):
        return {"labels_epoch": self.labels_epoch, "rule": self.rule.state_dict(), "history": self.history}

    def load_state_dict(self, state):
        self.labels_epoch = state["labels_epoch"]
        self.rule.load_state_dict(state["rule"])
        self.history = list(state["history"])
        if self.labels_epoch is not None:
            path = self.snapshot_path(self.labels_epoch)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"The checkpoint says the target labels are the pseudo-labels of epoch {self.labels_epoch}, "
                    f"but {path} is missing; restore it or train again without --resume."
                )
            by_key = {image_key(r): r for r in load_coco_boxes(path)}
            self.t.target_records = [
                {**r, "annotations": by_key[image_key(r)]["annotations"]} if image_key(r) in by_key else r
                for r in self.t.initial_target_records
            ]
        self._loader_key = None

    # -- per epoch ---------------------------------------------------------------------------
    def cloning(self, epoch: int) -> bool:
        mode = self.t.cfg.SISSI.CLONING.MODE
        return mode == "always" or (mode == "on_correction" and self.rule.correcting(epoch))

    def on_epoch_start(self, epoch: int):
        if self.rule.correcting(epoch) and self.labels_epoch != epoch:
            self.correct_labels(epoch)
        self.t.storage.put_scalar("sissi/epoch", epoch, smoothing_hint=False)

    def correct_labels(self, epoch: int):
        fused = self.predictor.pseudo_labels(self.t.model, self.t.target_records, desc=f"pseudo-labels epoch {epoch}")
        new_records, kept, total = [], 0, 0
        for record in self.t.target_records:
            boxes, scores = fused[image_key(record)]
            if len(boxes) == 0:
                kept += 1  # nothing confident found: keep this image's previous labels
                new_records.append(record)
            else:
                new_records.append(_with_boxes(record, boxes, scores))
            total += len(new_records[-1]["annotations"])
        self.t.target_records = new_records
        self.labels_epoch = epoch
        path = self.snapshot_path(epoch)
        if comm.is_main_process():
            save_records_as_coco(new_records, path)
        comm.synchronize()
        self.history.append({"epoch": epoch, "boxes": total, "images_kept_previous": kept})
        self.t.storage.put_scalar("sissi/pseudo_boxes", total, smoothing_hint=False)
        logger.info(
            "Epoch %d: %d pseudo-labels on %d target images (%d kept their previous labels); snapshot %s",
            epoch, total, len(new_records), kept, path,
        )

    def before_step(self):
        super().before_step()
        ipe = self.iters_per_epoch
        epoch, start_batch = divmod(self.t.iter, ipe)
        if self._loader_key != (epoch, start_batch):
            self.t.set_epoch_loader(epoch, start_batch, cloning=self.cloning(epoch))
        # The loader in place serves the next batch of this epoch; an epoch's loader ends with
        # the epoch, and the next one is built after that epoch's label correction.
        self._loader_key = (epoch, start_batch + 1) if start_batch + 1 < ipe else None

    def after_train(self):
        self.t.close_loader()


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
        self.target_records = list(self.initial_target_records)
        self.iters_per_epoch = iters_per_epoch(len(self.target_records), cfg.SISSI.IMS_PER_BATCH_TARGET)

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
            len(self.target_records), self.iters_per_epoch, cfg.SISSI.EPOCHS, cfg.SOLVER.MAX_ITER,
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
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER

        self.source_val_hook = None
        if cfg.SISSI.SOURCE_VAL_DATASETS:
            val_records = get_detection_dataset_dicts(list(cfg.SISSI.SOURCE_VAL_DATASETS), filter_empty=False)
            if cfg.SISSI.SOURCE_VAL.MAX_IMAGES > 0:
                val_records = val_records[: cfg.SISSI.SOURCE_VAL.MAX_IMAGES]
            val_mapper = SISSISourceMapper(cfg, is_train=True, augmentations=_test_resize(cfg))
            self.source_val_hook = SourceValLossHook(val_records, val_mapper, self.iters_per_epoch, self.sissi_dir)
        # The memorisation check runs for the ADELE rule, and for any rule with ADELE.TRACK (its
        # curve is informative on every row, and rows that share their past share it too).
        self.memorisation_hook = None
        if str(cfg.SISSI.START_RULE).startswith("adele") or cfg.SISSI.ADELE.TRACK:
            horizon = cfg.SISSI.ADELE.HORIZON or cfg.SISSI.EPOCHS
            self.memorisation_hook = MemorisationHook(
                cfg, self.initial_target_records, self.iters_per_epoch, horizon, self.sissi_dir
            )
        self.start_rule = build_start_rule(cfg, self)
        self.correction_hook = LabelCorrectionHook(self, self.start_rule)
        self.register_hooks(self.build_hooks())

    # -- data --------------------------------------------------------------------------------
    def set_epoch_loader(self, epoch: int, start_batch: int, cloning: bool):
        self.close_loader()
        cfg = self.cfg
        self._loader = TwoSourceLoader.for_epoch(
            self.source_records, self.target_records,
            build_mapper(cfg, "source", True), build_mapper(cfg, "target", True, cloning=cloning),
            source_batch_total=cfg.SISSI.IMS_PER_BATCH_SOURCE, target_batch_total=cfg.SISSI.IMS_PER_BATCH_TARGET,
            seed=_seed(cfg), epoch=epoch, start_batch=start_batch, num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
        self._trainer.data_loader = self._loader
        self._trainer._data_loader_iter = iter(self._loader)

    def close_loader(self):
        # Dropping the iterator shuts its worker processes down before new ones start.
        self._trainer._data_loader_iter = iter(())
        self._loader = None

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
        try:
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

