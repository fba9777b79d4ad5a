"""Epoch-boundary hooks of SISSI, usable in any Detectron2 trainer.

An "epoch" is ``iters_per_epoch`` iterations; epoch ``e`` starts at iteration ``e * ipe`` and its
work runs in ``before_step`` of that iteration, i.e. on the model as it was after ``e`` epochs.
A run resumed at an epoch start repeats exactly that work; hook state is JSON-native so that
fvcore's ``weights_only`` checkpoint loading accepts it (the one exception, an EMA teacher's
weights, is plain tensors, which it accepts too).
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from detectron2.structures import BoxMode

from ..algorithms.adele import MemorisationDetector
from ..algorithms.ema import EMATeacher
from ..data.label_files import image_key, load_coco_boxes, save_records_as_coco
from ..evaluation.box_metrics import coco_box_metrics
from ..evaluation.evaluator import records_ground_truth
from ..utils.atomic import atomic_open, atomic_write_json
from .inference import RecordPredictor
from .label_cache import labeller_key, read_cached_labels, write_cached_labels
from .start_rules import MEMORISATION, SOURCE_VAL, StartSignals

__all__ = ["EpochHook", "MemorisationHook", "SourceValLossHook", "LabelCorrectionHook"]

logger = logging.getLogger(__name__)


class EpochHook(HookBase):
    """Calls ``on_epoch_start(epoch)`` at the first iteration of every epoch."""

    def __init__(self, iters_per_epoch: int):
        self.iters_per_epoch = int(iters_per_epoch)

    def before_step(self):
        if self.trainer.iter % self.iters_per_epoch == 0:
            self.on_epoch_start(self.trainer.iter // self.iters_per_epoch)

    def on_epoch_start(self, epoch: int):
        raise NotImplementedError


class MemorisationHook(EpochHook):
    """ADELE-style detection of the end of early learning (paper sec. 3.3).

    Every epoch until it fires: AP50 of plain inference on the target training images against
    their INITIAL weak labels; the learning curve fit and deceleration rule live in
    ``algorithms.adele``. Logged as ``sissi/weak_ap50`` and to ``memorisation.json``.
    """

    def __init__(self, cfg, weak_records, iters_per_epoch: int, horizon: int, output_dir=None):
        super().__init__(iters_per_epoch)
        self.weak_boxes = records_ground_truth(weak_records)
        self.records = list(weak_records)
        self.predictor = RecordPredictor(cfg)
        self.max_dets = cfg.SISSI.EVAL.MAX_DETS
        a = cfg.SISSI.ADELE
        self.detector = MemorisationDetector(horizon=horizon, threshold=a.THRESHOLD, min_points=a.MIN_POINTS,
                                             curve=a.CURVE)
        self.output_dir = output_dir

    @property
    def fired_epoch(self):
        return self.detector.fired_epoch

    def weak_ap50(self) -> float:
        preds = self.predictor.plain_predictions(self.trainer.model, self.records, desc="AP50 vs weak labels")
        return float(coco_box_metrics(self.weak_boxes, preds, max_dets=self.max_dets)["AP50"]) / 100.0

    def on_epoch_start(self, epoch: int):
        if self.detector.fired_epoch is not None or len(self.detector.ap50) > epoch:
            return  # latched, or this epoch was already observed (resumed run)
        ap50 = self.weak_ap50()
        fired = self.detector.observe(epoch, ap50)
        update = self.detector.update_epochs[-1]
        self.trainer.storage.put_scalar("sissi/weak_ap50", ap50, smoothing_hint=False)
        logger.info(
            "Memorisation check, epoch %d: AP50 vs weak labels %.4f, estimated update epoch %s (horizon %d)%s",
            epoch, ap50, update, self.detector.horizon, {
                None: "", "deceleration": " -> memorisation detected (the curve decelerated)",
                "horizon": " -> correction forced: the horizon was reached without a detected deceleration",
            }[self.detector.fired_by if fired else None],
        )
        if self.output_dir and comm.is_main_process():
            atomic_write_json(os.path.join(self.output_dir, "memorisation.json"), self.report())

    def report(self) -> dict:
        d = self.detector.state_dict()
        d["epochs"] = list(range(len(self.detector.ap50)))
        return d

    def state_dict(self):
        return {"detector": self.detector.state_dict()}

    def load_state_dict(self, state):
        self.detector.load_state_dict(state["detector"])


class SourceValLossHook(EpochHook):
    """Loss of the model on the labelled source validation set, every epoch (paper's Baseline
    model selection). Keeps the weights with the lowest loss in ``best_source_val.pth``.

    ``stop_when`` (a callable; the trainer passes "the run's correction has started"): from the
    epoch after it turns true the loss is no longer measured. Start rules latch, so no rule reads
    the loss once correction runs; a corrected epoch of the CPU recipe saves ~7 s of its ~190 s."""

    def __init__(self, val_records, mapper, iters_per_epoch: int, output_dir=None, batch_size: int = 2,
                 stop_when=None):
        super().__init__(iters_per_epoch)
        self.stop_when = stop_when
        self.records = list(val_records)
        self.mapper = mapper
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.history: list = []  # [epoch, loss]
        self.best_epoch = None
        self.best_loss = math.inf

    @property
    def best_weights_path(self):
        return os.path.join(self.output_dir or ".", "best_source_val.pth")

    def validation_loss(self) -> float:
        model = self.trainer.model
        net = model.module if hasattr(model, "module") else model
        rank, world = comm.get_rank(), comm.get_world_size()
        mine = self.records[rank::world]
        total, count = 0.0, 0
        was_training = net.training
        net.train()  # Detectron2 computes losses only in training mode ...
        frozen = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in frozen:
            m.eval()  # ... but BatchNorm statistics must not learn from the validation set
        # The losses sample anchors and RoIs at random: a fixed seed per (epoch, rank), on a forked
        # RNG, makes the value a function of the weights alone, so a resumed or branched run
        # measures what the uninterrupted one did (the training RNG is reseeded every step anyway).
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(1_000_003 * (self.trainer.iter // self.iters_per_epoch) + rank)
                for i in range(0, len(mine), self.batch_size):
                    batch = [self.mapper(r) for r in mine[i : i + self.batch_size]]
                    losses = net(batch)
                    total += float(sum(losses.values())) * len(batch)
                    count += len(batch)
        finally:
            net.train(was_training)
        sums = comm.all_gather((total, count)) if world > 1 else [(total, count)]
        n = sum(c for _, c in sums)
        return sum(t for t, _ in sums) / max(n, 1)

    def on_epoch_start(self, epoch: int):
        if any(e == epoch for e, _ in self.history) or (self.stop_when is not None and self.stop_when()):
            return
        loss = self.validation_loss()
        self.history.append([epoch, loss])
        self.trainer.storage.put_scalar("sissi/source_val_loss", loss, smoothing_hint=False)
        improved = loss < self.best_loss
        logger.info("Source validation loss, epoch %d: %.4f%s", epoch, loss, " (best)" if improved else "")
        if improved:
            self.best_loss, self.best_epoch = loss, epoch
            if self.output_dir and comm.is_main_process():
                net = self.trainer.model.module if hasattr(self.trainer.model, "module") else self.trainer.model
                with atomic_open(self.best_weights_path, "wb") as f:
                    torch.save({"model": net.state_dict(), "epoch": epoch}, f)
            comm.synchronize()

    def state_dict(self):
        return {"history": self.history, "best_epoch": self.best_epoch,
                "best_loss": None if math.isinf(self.best_loss) else self.best_loss}

    def load_state_dict(self, state):
        self.history = [list(x) for x in state["history"]]
        self.best_epoch = state["best_epoch"]
        self.best_loss = math.inf if state["best_loss"] is None else state["best_loss"]


def _with_boxes(record, boxes, scores):
    out = dict(record)
    out["annotations"] = [
        {"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "score": float(s)}
        for b, s in zip(boxes, scores)
    ]
    return out


class LabelCorrectionHook(EpochHook):
    """Epoch start: start rule -> (restore) -> pseudo-labels -> cloning -> new two-source loader.

    The hook owns the target labels in use (``records``: the weak labels until correction starts,
    then the pseudo-labels of ``labels_epoch``). It asks the start rule with the signals of the
    ``memorisation`` and ``source_val`` hooks (those the run has), and acts on the trainer through
    three calls only: ``set_epoch_loader(epoch, start_batch, records, cloning)``,
    ``close_loader()`` and, when the rule asks for earlier weights, ``restore_epoch_weights(epoch)``.
    """

    def __init__(self, cfg, target_records, iters_per_epoch: int, start_rule, output_dir: str,
                 memorisation=None, source_val=None):
        super().__init__(iters_per_epoch)
        self.rule = start_rule
        self.initial_records = list(target_records)
        self.records = list(target_records)
        self.cloning_mode = cfg.SISSI.CLONING.MODE
        self.weak_label_weight = float(cfg.SISSI.PSEUDO.get("WEAK_LABEL_WEIGHT", 0.0))
        teacher = cfg.SISSI.PSEUDO.TEACHER
        if teacher not in ("student", "ema"):
            raise ValueError(f"SISSI.PSEUDO.TEACHER={teacher!r}: expected 'student' (the paper) or 'ema'")
        # With "ema" the pseudo-labels come from a moving average of the student (a brake on
        # the self-training runaway, docs/experiments.md); it starts at the first correction.
        self.teacher = EMATeacher(cfg.SISSI.PSEUDO.EMA_MOMENTUM) if teacher == "ema" else None
        self.max_rounds = int(cfg.SISSI.PSEUDO.ROUNDS)
        if self.max_rounds < 0:
            raise ValueError(f"SISSI.PSEUDO.ROUNDS={self.max_rounds}: expected 0 (relabel every epoch, the paper) "
                             "or the number of correction epochs that relabel")
        self.predictor = RecordPredictor(cfg)
        self.cfg = cfg  # what the first labels' cache key reads (SISSI.PSEUDO.CACHE_DIR)
        self.cache_dir = cfg.SISSI.PSEUDO.CACHE_DIR
        self.output_dir = output_dir
        self.memorisation, self.source_val = memorisation, source_val
        self.labels_epoch = None  # epoch whose pseudo-labels are the current target labels
        self.history: list = []
        self._loader_key = None

    def signals(self) -> StartSignals:
        recorded = {name for name, hook in ((MEMORISATION, self.memorisation), (SOURCE_VAL, self.source_val)) if hook}
        return StartSignals(
            recorded=frozenset(recorded),
            memorisation_fired_epoch=self.memorisation.fired_epoch if self.memorisation else None,
            source_val_history=tuple((int(e), float(v)) for e, v in self.source_val.history) if self.source_val else (),
        )

    def correcting(self, epoch: int) -> bool:
        return self.rule.correcting(epoch, self.signals())

    @property
    def started(self) -> bool:
        """True once pseudo-labels have replaced the weak labels (at this epoch's start or earlier)."""
        return self.labels_epoch is not None

    # -- state -------------------------------------------------------------------------------
    def snapshot_path(self, epoch: int) -> str:
        return os.path.join(self.output_dir, "pseudo_labels", f"epoch_{epoch:04d}.json")

    def state_dict(self):
        state = {"labels_epoch": self.labels_epoch, "rule": self.rule.state_dict(), "history": self.history}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state):
        if self.teacher is not None:
            self.teacher.load_state_dict(state.get("teacher", {}), self.trainer.model)
        self.labels_epoch = state["labels_epoch"]
        self.rule.load_state_dict(state["rule"])
        self.history = list(state["history"])
        self.records = list(self.initial_records)
        if self.labels_epoch is not None:
            path = self.snapshot_path(self.labels_epoch)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"The checkpoint says the target labels are the pseudo-labels of epoch {self.labels_epoch}, "
                    f"but {path} is missing; restore it or train again without --resume."
                )
            by_key = {image_key(r): r for r in load_coco_boxes(path)}
            self.records = [{**r, "annotations": by_key[image_key(r)]["annotations"]} if image_key(r) in by_key else r
                            for r in self.initial_records]
        self._loader_key = None

    # -- per epoch ---------------------------------------------------------------------------
    def cloning(self, epoch: int) -> bool:
        mode = self.cloning_mode
        return mode == "always" or (mode == "on_correction" and self.correcting(epoch))

    def relabels(self, epoch: int) -> bool:
        """True when this correction epoch makes new pseudo-labels (every one in the paper; the
        first SISSI.PSEUDO.ROUNDS of them otherwise, then the last labels stay)."""
        if not self.correcting(epoch) or self.labels_epoch == epoch:
            return False
        return self.max_rounds == 0 or len(self.history) < self.max_rounds

    def on_epoch_start(self, epoch: int):
        if self.relabels(epoch):
            restore = self.rule.restore_epoch()
            if self.labels_epoch is None and restore is not None and restore != epoch:
                self.trainer.restore_epoch_weights(restore)  # correction starts from earlier weights
            self.correct_labels(epoch)
        self.trainer.storage.put_scalar("sissi/epoch", epoch, smoothing_hint=False)

    def correct_labels(self, epoch: int):
        # the initial weak labels vote in the fusion only with SISSI.PSEUDO.WEAK_LABEL_WEIGHT > 0
        weak = {"weak_boxes": records_ground_truth(self.initial_records)} if self.weak_label_weight > 0 else {}
        labeller = self.trainer.model
        if self.teacher is not None:
            if not self.teacher.started:
                self.teacher.start(self.trainer.model)
            labeller = self.teacher.model
        fused = self.predict_labels(labeller, epoch, weak)
        new_records, kept, total = [], 0, 0
        for record in self.records:
            boxes, scores = fused[image_key(record)]
            if len(boxes) == 0:
                kept += 1  # nothing confident found: keep this image's previous labels
                new_records.append(record)
            else:
                new_records.append(_with_boxes(record, boxes, scores))
            total += len(new_records[-1]["annotations"])
        self.records = new_records
        self.labels_epoch = epoch
        path = self.snapshot_path(epoch)
        if comm.is_main_process():
            save_records_as_coco(new_records, path)
        comm.synchronize()
        self.history.append({"epoch": epoch, "boxes": total, "images_kept_previous": kept})
        self.trainer.storage.put_scalar("sissi/pseudo_boxes", total, smoothing_hint=False)
        logger.info(
            "Epoch %d: %d pseudo-labels on %d target images (%d kept their previous labels); snapshot %s",
            epoch, total, len(new_records), kept, path,
        )

    def predict_labels(self, labeller, epoch: int, weak: dict) -> dict:
        """TTA + WBF labels of the target images; a row's first labels come from the cache
        (SISSI.PSEUDO.CACHE_DIR) when a row with the same weights and settings made them."""
        desc = f"pseudo-labels epoch {epoch}"
        if not self.cache_dir or self.labels_epoch is not None:
            return self.predictor.pseudo_labels(labeller, self.records, desc=desc, **weak)
        key = labeller_key(labeller, self.cfg, self.records, weak.get("weak_boxes"))
        cached = read_cached_labels(self.cache_dir, key)
        # every rank predicts its shard and gathers, so all of them read the cache or none
        if all(comm.all_gather(cached is not None)):
            logger.info("Epoch %d: the first pseudo-labels are those a row with the same weights and settings "
                        "made (%s)", epoch, self.cache_dir)
            return cached
        fused = self.predictor.pseudo_labels(labeller, self.records, desc=desc, **weak)
        if comm.is_main_process():
            write_cached_labels(self.cache_dir, key, fused)
        return fused

    def before_step(self):
        super().before_step()
        ipe = self.iters_per_epoch
        epoch, start_batch = divmod(self.trainer.iter, ipe)
        if self._loader_key != (epoch, start_batch):
            self.trainer.set_epoch_loader(epoch, start_batch, self.records, cloning=self.cloning(epoch))
        # The loader in place serves the next batch of this epoch; an epoch's loader ends with
        # the epoch, and the next one is built after that epoch's label correction.
        self._loader_key = (epoch, start_batch + 1) if start_batch + 1 < ipe else None

    def after_step(self):
        if self.teacher is not None and self.teacher.started:
            self.teacher.update(self.trainer.model)

    def after_train(self):
        self.trainer.close_loader()
