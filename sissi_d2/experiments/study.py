"""The CPU recipe study (docs/experiments.md): every setting tried, as a named, re-runnable entry.

An entry is one of
* ``train``: a row trained from its config and overrides (``tools/train_net.py`` would train
  the same weights);
* ``branch``: a row that starts from a ``train`` entry's checkpoint at the end of epoch
  ``start_epoch - 1`` with other correction settings (the same settings before that epoch, so
  it equals training it alone; see experiments.rows);
* ``fusion``: no training: the TTA views of a ``train`` entry's model at the end of epoch
  ``at_epoch - 1`` on the target training images, fused with a grid of pseudo-label settings;
* ``retrain``: a ``train`` entry's settings on a branch's last pseudo-labels;
* ``repaired``: a ``train`` entry's settings on the weak labels with one kind of error repaired
  from the training truth (``data.label_repair``): analysis only, what that error costs.

Selection signals are the ones a user could have or the issue allows as analysis-only: the
target training images' oracle masks (quality of the model's predictions and of every
pseudo-label snapshot on the images it trains on). The test set is scored only for entries
marked ``final`` (once, with ``tools/experiments.py test NAME``), never to choose settings.
Results land in ``<output>/<entry>/study.json``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import namedtuple
from dataclasses import dataclass, field

__all__ = ["Entry", "ENTRIES", "entry", "run_entry", "test_entry", "seed_setting", "TRAIN_TRUTH", "RECIPE_V1", "RECIPE_V2", "RECIPE_V3", "RECIPE_V3_HALF", "LIGHT_MODEL", "P2_MODEL", "RECIPE_PSEUDO"]

logger = logging.getLogger(__name__)

TRAIN_TRUTH = "usiigaci_train_oracle"  # analysis only: never read by training
TEST_SET = "usiigaci_test"

# Every train entry is the lean CPU model of this file plus a row and a recipe, all explicit, so
# that an entry keeps its meaning when the CPU rows' configs (configs/cpu/Base-Recipe.yaml) move.
LEAN = "configs/cpu/Base-SISSI-CPU.yaml"
WEAK_ONLY_ROW = ["SISSI.START_RULE", "never", "SISSI.CLONING.MODE", "never", "SISSI.CLONING.BLUR", "strong"]
ORACLE_ROW = ["SISSI.TARGET_DATASETS", "('usiigaci_train_oracle',)", "SISSI.START_RULE", "never",
              "SISSI.CLONING.MODE", "never"]
# Recipe v1: the lean CPU model at 512 px, trained on 320x320 crops of the 512 px image (the cost
# of a 320 px iteration at the resolution of 512 px), 4 draws of every target image per epoch,
# cosine LR after a 100-iteration warmup, the memorisation curve recorded on every row.
RECIPE_V1 = [
    "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[320, 320]",
    "SISSI.TARGET_REPEATS", "4", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.WARMUP_ITERS", "100",
    "DATALOADER.NUM_WORKERS", "0", "SISSI.ADELE.TRACK", "True", "SISSI.ADELE.HORIZON", "0",
    "SISSI.ADELE.MIN_POINTS", "4", "DATASETS.TEST", "()", "SISSI.SOURCE_VAL.MAX_IMAGES", "12",
    "SISSI.EPOCHS", "20",
]
# Recipe v2 = v1 without the +/-45 degree rotation (entry r2_weak_only: +9.3 AP50 on the test set).
RECIPE_V2 = RECIPE_V1 + ["SISSI.AUG.SSR_ROTATE", "0.0"]
# Recipe v3 = v2 with target-heavy batches: 1 source + 3 target images per iteration (the same 4
# images, so the same cost per iteration) and 6 draws of each target image per epoch, so an epoch
# is still 50 iterations (25 x 6 / 3) and 20 epochs 1000 iterations. Every checkpoint is kept so
# that branches can start at any epoch.
RECIPE_V3 = RECIPE_V2 + ["SISSI.IMS_PER_BATCH_SOURCE", "1", "SISSI.IMS_PER_BATCH_TARGET", "3",
                         "SISSI.TARGET_REPEATS", "6", "SISSI.DISK.KEEP_LAST", "0"]
# Recipe v3 at half length (10 epochs = 500 iterations): what Table 1 costs on a host 2.6x slower
# than the one the recipe was measured on (docs/performance.md "Host speed"), where the 20-epoch
# table takes about 4 hours. Measured to put a number on what halving the budget loses.
RECIPE_V3_HALF = RECIPE_V3 + ["SISSI.EPOCHS", "10"]
# Recipe v3 on a lighter model: the same schedule and data, a 64-channel FPN without its stride-4
# level P2 (boxes come from P3-P6, two anchor sizes per level covering the recipe's 16-256 px).
# Why: a forward pass of the recipe's model spends 21 % of its multiply-adds in the 128-channel
# FPN and 19 % in the RPN head, three quarters of both on P2 (80x80 positions per 320 px crop,
# 19,200 anchors); a training step of this model took 2.21 s against 4.01 s for the recipe's
# (1.82x; `tools/benchmark.py --model-cost` with these overrides, one thread; docs/performance.md). Measured to see
# whether a table that fits 2 hours on the slow host keeps the recipe's premise; it did, and this
# model is the recipe's since (configs/cpu/Base-Recipe.yaml; tests/experiments/test_study.py
# checks that the two agree).
LIGHT_MODEL = [
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32], [48, 64], [96, 128], [192, 256]]",
    "MODEL.RPN.IN_FEATURES", "['p3', 'p4', 'p5', 'p6']", "MODEL.ROI_HEADS.IN_FEATURES", "['p3', 'p4', 'p5']",
]
# The recipe's model before it became LIGHT_MODEL (2026-12-02): the lean 128-channel FPN with P2
# (entries r3_*). The label-budget and points studies pin it, so that their committed reports
# (docs/label_budget.md, docs/points.md) stay what a rerun gives.
P2_MODEL = [
    "MODEL.FPN.OUT_CHANNELS", "128", "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
    "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']", "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
]
# Pseudo-labels for the study's branches: flips only at scale 1.0 (multi-scale views inflate the
# boxes of this from-scratch detector 10-15 % per round, shared/docs/probes.md) and the low
# thresholds whose first round came nearest to the weak labels in the probes.
FLIP_VIEWS = [
    "SISSI.PSEUDO.SCALES", "(1.0,)", "SISSI.PSEUDO.FLIPS", "('none', 'h', 'v', 'hv')",
    "SISSI.PSEUDO.WBF_SKIP_BOX_THR", "0.05", "SISSI.PSEUDO.SCORE_THRESH", "0.05", "SISSI.PSEUDO.NMS_THRESH", "0.5",
]
# The recipe's pseudo-labels (configs/cpu/Base-Recipe.yaml): these views kept at fused score
# >= 0.35, the best label-set F1 of the paper's fusion in r2_fusion_e20.
RECIPE_PSEUDO = FLIP_VIEWS + ["SISSI.PSEUDO.SCORE_THRESH", "0.35"]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "train" | "branch" | "fusion" | "retrain" | "repaired" (see the module docstring)
    why: str
    config: str = ""  # train: config file relative to the repository root
    opts: tuple = ()  # KEY VALUE overrides (branch: on top of the parent's)
    parent: str = ""  # branch / fusion: the train entry it starts from; retrain: the entry whose labels it trains on
    start_epoch: int = 0  # branch: first epoch with other settings; fusion: model after epoch - 1; retrain: labels of epoch - 1
    final: bool = False  # scored once on the test set
    grid: dict = field(default_factory=dict)  # fusion: setting -> values
    repairs: tuple = ()  # repaired: the weak-label errors repaired (data.label_repair.REPAIRS)
    ignore_missed: bool = False  # repaired: the missed cells become crowd regions (neither cell nor background)


def _e(*a, **k):
    a = tuple(tuple(x) if isinstance(x, list) else x for x in a)
    if "opts" in k:
        k["opts"] = tuple(k["opts"])
    return Entry(*a, **k)


_BRANCH = ["SISSI.START_RULE", "epoch:{e}"] + FLIP_VIEWS
ENTRIES = [
    _e("r1_weak_only", "train", "recipe v1 trunk on the weak labels", LEAN, WEAK_ONLY_ROW + RECIPE_V1, final=True),
    _e("r1_oracle", "train", "recipe v1 on the true labels (upper bound)", LEAN, ORACLE_ROW + RECIPE_V1, final=True),
    _e("r2_weak_only", "train", "recipe v1 without the +/-45 degree rotation of shift-scale-rotate: the extent of a "
       "rotated box is up to 41 % larger than the cell, and the r1 trunk predicts boxes 5-13 % larger than its labels",
       LEAN, WEAK_ONLY_ROW + RECIPE_V2, final=True),
    _e("r3_weak_only", "train", "recipe v2 with 1 source + 3 target images per batch: the trunk's quality follows the "
       "target pixels it sees, and the source half transfers nothing measurable", LEAN, WEAK_ONLY_ROW + RECIPE_V3, final=True),
    _e("r3_oracle", "train", "recipe v3 on the true labels (upper bound)", LEAN, ORACLE_ROW + RECIPE_V3, final=True),
    _e("r4_weak_only_e10", "train", "recipe v3 at half length (10 epochs): the trunk a 2-hour table could afford on a "
       "host 2.6x slower", LEAN, WEAK_ONLY_ROW + RECIPE_V3_HALF, final=True),
    _e("r4_oracle_e10", "train", "recipe v3 at half length on the true labels", LEAN, ORACLE_ROW + RECIPE_V3_HALF,
       final=True),
    _e("r5_weak_only_light", "train", "recipe v3 on a 64-channel FPN without P2 (1.82x faster steps): the trunk of "
       "a table that would fit 2 hours on the slow host", LEAN, WEAK_ONLY_ROW + RECIPE_V3 + LIGHT_MODEL, final=True),
    _e("r5_oracle_light", "train", "recipe v3 on the light model, true labels", LEAN,
       ORACLE_ROW + RECIPE_V3 + LIGHT_MODEL, final=True),
    _e("r2_fusion_e20", "fusion", "first-round pseudo-labels of the rotation-free trunk's final model",
       parent="r2_weak_only", start_epoch=20,
       grid={"SISSI.PSEUDO.WEAK_LABEL_WEIGHT": [0.0, 1.0, 2.0, 4.0], "SISSI.PSEUDO.SCORE_THRESH": [0.05, 0.15, 0.25, 0.35, 0.45]}),
    # Branches of the recipe's trunk where its ADELE rule fired (by deceleration, epoch 12): the
    # recipe's pseudo-labels (configs/cpu/Base-Recipe.yaml) with the brakes measured here. The
    # paper's own loops on this trunk are the Table 1 rows (tools/table1.py, configs/cpu).
    _e("r3_b12_clone_ema_vote", "branch", "A+SISSI(S) on the recipe with both brakes: an EMA teacher (momentum "
       "0.99 per iteration) labels, and the weak labels vote in the fusion (W 1, the best F1 of r2_fusion_e20)",
       parent="r3_weak_only", start_epoch=12,
       opts=["SISSI.START_RULE", "epoch:{e}"] + RECIPE_PSEUDO + ["SISSI.CLONING.MODE", "on_correction",
             "SISSI.PSEUDO.TEACHER", "ema", "SISSI.PSEUDO.WEAK_LABEL_WEIGHT", "1.0"], final=True),
    _e("r3_b12_plain_ema_vote", "branch", "the same without cloning (Plain A with both brakes): separates the "
       "labels from the synthetic-like images' domain gap", parent="r3_weak_only", start_epoch=12,
       opts=["SISSI.START_RULE", "epoch:{e}"] + RECIPE_PSEUDO + ["SISSI.CLONING.MODE", "never",
             "SISSI.PSEUDO.TEACHER", "ema", "SISSI.PSEUDO.WEAK_LABEL_WEIGHT", "1.0"], final=True),
    # A branch corrects at the end of the cosine schedule, with little learning rate left: do the
    # brakes' labels (F1 67.6 against the weak labels' 58.5) train a better detector when it has
    # the whole schedule to learn them? The trunk's settings, trained on the parent's last labels.
    _e("r3_retrain_plain_ema_vote", "retrain", "the trunk's settings from scratch on the last pseudo-labels of "
       "r3_b12_plain_ema_vote (a second stage: label correction, then training on the corrected labels)",
       LEAN, WEAK_ONLY_ROW + RECIPE_V3, parent="r3_b12_plain_ema_vote", start_epoch=20, final=True),
    # The pseudo-labels are 28 % of a correction epoch on the slow host (56 of 196 s, 4 flip views
    # of 25 images): do 2 views label as well? The light trunk's first rounds, where Table 1's
    # rows start correcting: the weights of epoch 9 (source-validation rows) and epoch 15 (ADELE).
    _e("r5_fusion_e9_flips", "fusion", "first-round pseudo-labels of the light trunk's epoch-9 weights: 4 flip "
       "views against 2 (half the labelling time)", parent="r5_weak_only_light", start_epoch=9,
       grid={"SISSI.PSEUDO.FLIPS": [("none", "h", "v", "hv"), ("none", "hv"), ("none", "h")],
             "SISSI.PSEUDO.SCORE_THRESH": [0.35]}),
    _e("r5_fusion_e15_flips", "fusion", "the same on the epoch-15 weights (where ADELE fired)",
       parent="r5_weak_only_light", start_epoch=15,
       grid={"SISSI.PSEUDO.FLIPS": [("none", "h", "v", "hv"), ("none", "hv"), ("none", "h")],
             "SISSI.PSEUDO.SCORE_THRESH": [0.35]}),
    # What does each kind of weak-label error cost the recipe's detector? The trunk's settings
    # (= configs/cpu/weak_only.yaml) on the weak labels with one error repaired from the training
    # truth. SISSI's correction removes false positives and little else (r3_retrain_plain_ema_vote),
    # so the first entry bounds what any such precision filter can gain.
    *(_e(f"r6_repair_{r}", "repaired", f"the recipe's trunk on the weak labels with their {r.replace('_', ' ')} "
         "repaired from the training truth (analysis only: what that error costs the detector)",
         LEAN, WEAK_ONLY_ROW + RECIPE_V3 + LIGHT_MODEL, final=True, repairs=(r,))
      for r in ("false_positives", "missed_cells", "loose_boxes")),
    # Missed cells cost +5.8 / +3.1 AP50 when added as labels (r6_repair_missed_cells). Is that the
    # cost of teaching them as background (what SISSI's cloning removes: unboxed cells vanish), or of
    # the positives they lack? The same trunk with the missed cells as crowd regions that are
    # neither cells nor background (MissingLabelRPN / MissingLabelROIHeads with IGNORE_CROWD, the
    # confidence rule off): analysis only, the ideal of "not punished", without cloning's images.
    _e("r8_ignore_missed_cells", "repaired", "the recipe's trunk on the weak labels with the cells they miss as "
       "regions that are neither cells nor background (analysis only: what teaching them as background costs)",
       LEAN, WEAK_ONLY_ROW + RECIPE_V3 + LIGHT_MODEL + [
           "MODEL.PROPOSAL_GENERATOR.NAME", "MissingLabelRPN", "MODEL.ROI_HEADS.NAME", "MissingLabelROIHeads",
           "MODEL.MISSING_LABELS.SKIP_CONFIDENT", "False", "MODEL.MISSING_LABELS.IGNORE_CROWD", "True"],
       final=True, ignore_missed=True),
    _e("r8_fusion_e20", "fusion", "first-round pseudo-labels of the final model of r8_ignore_missed_cells (the "
       "recipe's fusion): does a trunk never taught the missed cells as background find them?",
       parent="r8_ignore_missed_cells", start_epoch=20, grid={"SISSI.PSEUDO.SCORE_THRESH": [0.35]}),
    # The premise that fails is the trunk's knowledge beyond its labels: it learns every missed cell
    # as background and finds 0.7-1.0 % of the cells beyond the weak labels (r6 above). Heads that
    # do not punish confident detections away from every label (modeling/missing_label_heads.py)
    # leave room for it to find them; two thresholds of "confident". Judged on the training truth
    # (the fusion entries' labels: cells beyond the weak labels, F1), scored once on the test set.
    *(_e(f"r7_missing_label_heads_{tag}", "train", "the recipe's trunk with MissingLabelRPN and MissingLabelROIHeads: "
         f"negatives scored >= {score} as a cell and away from every weak label (IoU < 0.1) are left out of the loss",
         LEAN, WEAK_ONLY_ROW + RECIPE_V3 + LIGHT_MODEL + [
             "MODEL.PROPOSAL_GENERATOR.NAME", "MissingLabelRPN", "MODEL.ROI_HEADS.NAME", "MissingLabelROIHeads",
             "MODEL.MISSING_LABELS.MIN_SCORE", score, "MODEL.MISSING_LABELS.MAX_IOU", "0.1"], final=True)
      for tag, score in (("s07", "0.7"), ("s05", "0.5"))),
    *(_e(f"r7_fusion_e20_{parent}", "fusion", "first-round pseudo-labels of the final model of "
         f"{parent} (the recipe's fusion): how many cells beyond the weak labels it finds",
         parent=parent, start_epoch=20, grid={"SISSI.PSEUDO.SCORE_THRESH": [0.35]})
      for parent in ("r5_weak_only_light", "r7_missing_label_heads_s07", "r7_missing_label_heads_s05")),
    # Declared after the trunks, before any branch ran: the paper's A+SISSI(S) on the s05 trunk (its
    # first-round labels: 16 cells beyond the weak labels against the scratch trunk's 14, F1 65.7
    # against 65.2), from the epoch after its ADELE rule fired by deceleration (epoch 13).
    _e("r7_b14_adele_sissi_s", "branch", "A+SISSI(S) (the recipe's pseudo-labels, cloning with strong blur) on "
       "r7_missing_label_heads_s05 from where its ADELE rule fired", parent="r7_missing_label_heads_s05",
       start_epoch=14, opts=["SISSI.START_RULE", "epoch:{e}"] + RECIPE_PSEUDO + ["SISSI.CLONING.MODE", "on_correction"],
       final=True),
    # The same for seed 1 (tools/experiments.py run ... --seed 1), whose ADELE rule fired at epoch 12.
    _e("r7_b13_adele_sissi_s", "branch", "A+SISSI(S) on r7_missing_label_heads_s05 from epoch 13: where its ADELE "
       "rule fired in seed 1", parent="r7_missing_label_heads_s05",
       start_epoch=13, opts=["SISSI.START_RULE", "epoch:{e}"] + RECIPE_PSEUDO + ["SISSI.CLONING.MODE", "on_correction"],
       final=True),
    _e("r1_fusion_e10", "fusion", "first-round pseudo-labels of the trunk at epoch 10: weak-label vote x threshold",
       parent="r1_weak_only", start_epoch=10,
       grid={"SISSI.PSEUDO.WEAK_LABEL_WEIGHT": [0.0, 1.0, 2.0, 4.0], "SISSI.PSEUDO.SCORE_THRESH": [0.05, 0.15, 0.25, 0.35, 0.45]}),
    _e("r1_fusion_e20", "fusion", "the same on the trunk's final model", parent="r1_weak_only", start_epoch=20,
       grid={"SISSI.PSEUDO.WEAK_LABEL_WEIGHT": [0.0, 1.0, 2.0, 4.0], "SISSI.PSEUDO.SCORE_THRESH": [0.05, 0.15, 0.25, 0.35, 0.45]}),
    _e("r1_b10_plain", "branch", "plain self-training from epoch 10 (Plain A-like), flips only",
       parent="r1_weak_only", start_epoch=10, opts=_BRANCH + ["SISSI.CLONING.MODE", "never"]),
    _e("r1_b10_clone", "branch", "the paper's correction from epoch 10 (A+SISSI(S)-like), flips only",
       parent="r1_weak_only", start_epoch=10, opts=_BRANCH + ["SISSI.CLONING.MODE", "on_correction"], final=True),
    _e("r1_b10_clone_vote", "branch", "A+SISSI(S)-like + the weak labels vote in the fusion (weight 2 of 6, threshold 0.35)",
       parent="r1_weak_only", start_epoch=10,
       opts=_BRANCH + ["SISSI.CLONING.MODE", "on_correction", "SISSI.PSEUDO.WEAK_LABEL_WEIGHT", "2.0",
                       "SISSI.PSEUDO.SCORE_THRESH", "0.35"], final=True),
]


def entry(name: str) -> Entry:
    for e in ENTRIES:
        if e.name == name:
            return e
    raise KeyError(f"unknown study entry {name!r}; entries: {[e.name for e in ENTRIES]}")


def _root() -> str:
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def entry_config(e: Entry, output: str, extra=()):
    from ..config_builder import build_config

    if e.kind in ("train", "retrain", "repaired"):
        labels = []
        if e.kind in ("retrain", "repaired"):  # its label file, registered as this entry's target data set
            dataset = f"{e.parent}_e{e.start_epoch - 1}" if e.kind == "retrain" else e.name
            labels = ["SISSI.REGISTER", f"('{dataset}=coco:{entry_labels(e, output)}',)",
                      "SISSI.TARGET_DATASETS", f"('{dataset}',)"]
        return build_config(os.path.join(_root(), e.config),
                            list(e.opts) + labels + list(extra) + ["OUTPUT_DIR", os.path.join(output, e.name)])
    parent = entry(e.parent)
    opts = [o.format(e=e.start_epoch) for o in e.opts]
    return build_config(os.path.join(_root(), parent.config),
                        list(parent.opts) + opts + list(extra) + ["OUTPUT_DIR", os.path.join(output, e.name)])


def seed_setting(output: str, seed: int | None) -> tuple:
    """(output folder, KEY VALUE overrides) of a run of the entries with another ``SEED``: its own
    folder ``<output>/seed<N>``, so that no seed resumes another's checkpoints or labels."""
    if seed is None:
        return os.path.abspath(output), []
    return os.path.abspath(os.path.join(output, f"seed{int(seed)}")), ["SEED", str(int(seed))]


def entry_labels(e: Entry, output: str) -> str:
    """The label file a ``retrain`` entry trains on (its parent's pseudo-label snapshot after epoch
    ``start_epoch - 1``) or a ``repaired`` entry (written by :func:`write_repaired_labels`)."""
    if e.kind == "repaired":
        return os.path.join(output, e.name, "repaired_labels.json")
    return os.path.join(output, e.parent, "sissi", "pseudo_labels", f"epoch_{e.start_epoch - 1:04d}.json")


def write_repaired_labels(e: Entry, output: str, weak_dataset: str = "usiigaci_train_weak") -> str:
    """Write a ``repaired`` entry's labels: the weak labels of ``weak_dataset`` with ``e.repairs``
    repaired from the training truth, and with ``e.ignore_missed`` the cells they miss as crowd
    regions. Rewritten on every run (deterministic, seconds)."""
    from detectron2.data import DatasetCatalog

    from ..data.label_files import records_with_boxes, save_records_as_coco
    from ..data.label_repair import missed_cells, repair_labels
    from ..evaluation.evaluator import records_ground_truth
    from .report import dataset_truth

    if weak_dataset not in DatasetCatalog.list():
        raise FileNotFoundError(
            f"{e.name} repairs the weak labels {weak_dataset!r}, which are not registered: make them first with "
            "`python tools/make_weak_labels.py ../shared/data/usiigaci_phase/train --output "
            "datasets/generated/usiigaci_train_weak.json` (or run tools/table1.py once)")
    records = DatasetCatalog.get(weak_dataset)
    weak, truth = records_ground_truth(records), dataset_truth(TRAIN_TRUTH)
    repaired = repair_labels(weak, truth, e.repairs) if e.repairs else weak
    crowd = missed_cells(weak, truth) if e.ignore_missed else None
    return save_records_as_coco(records_with_boxes(records, repaired, crowd), entry_labels(e, output))


def _weights_after(cfg_dir: str, epoch_end: int, ipe: int) -> str:
    return os.path.join(cfg_dir, f"model_{(epoch_end + 1) * ipe - 1:07d}.pth")


def _iters_per_epoch(cfg) -> int:
    from detectron2.data import DatasetCatalog

    from ..data.two_source import iters_per_epoch

    n = sum(len(DatasetCatalog.get(d)) for d in cfg.SISSI.TARGET_DATASETS)
    return iters_per_epoch(n * int(cfg.SISSI.TARGET_REPEATS), cfg.SISSI.IMS_PER_BATCH_TARGET)


def _model_quality(cfg, model, truth) -> dict:
    """Plain predictions of ``model`` on the target training images against their truth."""
    from detectron2.data import DatasetCatalog

    from ..engine.inference import RecordPredictor
    from ..evaluation.box_metrics import coco_box_metrics

    records = DatasetCatalog.get(cfg.SISSI.TARGET_DATASETS[0])
    preds = RecordPredictor(cfg).plain_predictions(model, records, desc="model vs training truth")
    return coco_box_metrics(truth, preds, max_dets=cfg.SISSI.EVAL.MAX_DETS)  # ranked detections: AP


def median_box_scale(reference: dict, predictions: dict, min_score: float = 0.5, min_iou: float = 0.3):
    """(width, height): medians of predicted / reference box sides over one-to-one matches
    (Hungarian on IoU, pairs with IoU >= ``min_iou``) of predictions scoring >= ``min_score``.
    1.0 = the model draws boxes of its reference's size; > 1 = larger."""
    import numpy as np

    from ..evaluation.box_metrics import label_failure_modes

    confident = {}
    for key, (boxes, scores) in predictions.items():
        confident[key] = np.asarray(boxes, np.float64).reshape(-1, 4)[np.asarray(scores) >= min_score]
    return label_failure_modes(reference, confident, found_iou=min_iou)["size_ratio"]


def measure_weights(name: str, output: str, weights: str, extra=()) -> dict:
    """The model of ``weights`` (a checkpoint of entry ``name``) on the target training images:
    AP vs the truth, and its box sizes against the weak labels and the truth."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog

    from ..evaluation.evaluator import records_ground_truth
    from ..engine.inference import RecordPredictor
    from ..engine.trainer import SISSITrainer
    from ..evaluation.box_metrics import coco_box_metrics
    from .report import dataset_truth

    cfg = entry_config(entry(name), output, extra)
    _register_labels(cfg)
    model = SISSITrainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    records = DatasetCatalog.get(cfg.SISSI.TARGET_DATASETS[0])
    truth = dataset_truth(TRAIN_TRUTH)
    preds = RecordPredictor(cfg).plain_predictions(model, records, desc="model vs training truth")
    m = coco_box_metrics(truth, preds, max_dets=cfg.SISSI.EVAL.MAX_DETS)
    return {"weights": weights, **{k: m[k] for k in ("AP50", "AP75", "AP", "AR")},
            "box_scale_vs_weak_labels": median_box_scale(records_ground_truth(records), preds),
            "box_scale_vs_truth": median_box_scale(truth, preds)}


def _register_labels(cfg) -> None:
    """Register the label files of a config's SISSI.REGISTER (a retrain / repaired entry's target),
    as tools/train_net.py does."""
    from ..config_builder import register_from_spec

    for spec in cfg.SISSI.REGISTER:
        register_from_spec(spec)


def _memorisation(out_dir: str) -> dict:
    path = os.path.join(out_dir, "sissi", "memorisation.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    return {k: m.get(k) for k in ("ap50", "update_epochs", "fired_epoch", "fired_by", "horizon")}


def run_entry(name: str, output: str, extra=()) -> dict:
    """Run (or resume) one entry; returns and writes its ``study.json``. ``extra``: KEY VALUE
    overrides on top of the entry's and its parent's (``tools/experiments.py --seed``: SEED)."""
    from ..engine.trainer import SISSITrainer
    from ..data.label_files import read_label_json
    from ..evaluation.label_quality import label_set_quality
    from .report import dataset_truth, training_label_quality
    from .rows import _branch, check_row_settings

    e = entry(name)
    if e.kind == "retrain" and not os.path.isfile(entry_labels(e, output)):
        raise FileNotFoundError(
            f"{e.name} trains on {entry_labels(e, output)}, which does not exist: run its parent first "
            f"(tools/experiments.py run {e.parent} --output {output})")
    if e.kind == "repaired":
        write_repaired_labels(e, output)
    t0 = time.time()
    truth = dataset_truth(TRAIN_TRUTH)
    if e.kind == "fusion":
        result = _fusion_sweep(e, output, truth, extra)
    else:
        cfg = entry_config(e, output, extra)
        _register_labels(cfg)
        check_row_settings(cfg)
        if e.kind == "branch" and not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
            parent_cfg = entry_config(entry(e.parent), output, extra)
            ipe = _iters_per_epoch(parent_cfg)
            plan = namedtuple("Plan", "start_epoch restore_epoch")(e.start_epoch, None)
            _branch(parent_cfg.OUTPUT_DIR, cfg.OUTPUT_DIR, plan, ipe)
        trainer = SISSITrainer(cfg)
        trainer.resume_or_load(resume=True)
        if trainer.start_iter < trainer.max_iter:
            trainer.train()
        weak_json = _weak_json(cfg)
        quality = training_label_quality(truth, weak_json, {e.name: cfg.OUTPUT_DIR})
        result = {"model_vs_training_truth": _model_quality(cfg, trainer.model, truth),
                  "weak_labels_vs_training_truth": quality["weak_labels"],
                  "pseudo_labels_vs_training_truth": quality["pseudo_labels"][e.name],
                  "memorisation": _memorisation(cfg.OUTPUT_DIR)}
        if e.kind in ("retrain", "repaired"):
            result["trained_labels_vs_training_truth"] = label_set_quality(truth, read_label_json(entry_labels(e, output)))
    result.update(entry=e.name, kind=e.kind, why=e.why, minutes=round((time.time() - t0) / 60, 1))
    _write(output, e.name, "study.json", result)
    return result


def _weak_json(cfg) -> str | None:
    from ..data.paths import cache_dir

    path = os.path.join(cache_dir(), "usiigaci_train_weak.json")
    return path if os.path.isfile(path) else None


def _write(output, name, fname, data):
    from ..utils.atomic import atomic_write_json

    os.makedirs(os.path.join(output, name), exist_ok=True)
    atomic_write_json(os.path.join(output, name, fname), data)


def _fusion_sweep(e: Entry, output: str, truth: dict, extra=()) -> dict:
    """First-round pseudo-labels of the parent's model after epoch ``start_epoch - 1`` for every
    combination of ``e.grid`` (views computed once, fused per setting). A ``SISSI.PSEUDO.FLIPS``
    value fuses that subset of the four flip views: each view is predicted on its own (no batch
    changes a view's boxes, tests/engine/test_inference.py), so the subset is what a run with
    those flips labels."""
    import itertools

    import numpy as np

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog

    from ..data.image_io import read_bgr8
    from ..data.label_files import image_key
    from ..engine.inference import RecordPredictor, fusion_kwargs, inference_mode
    from ..engine.trainer import SISSITrainer
    from ..evaluation.box_metrics import (boxes_beyond, cell_scores_by_labelling, coco_box_metrics, label_set_f1,
                                          reference_boxes_kept)
    from ..evaluation.label_quality import label_set_quality
    from ..algorithms.tta import make_views
    from ..algorithms.wbf import fuse_views
    from ..evaluation.evaluator import records_ground_truth

    parent_cfg = entry_config(entry(e.parent), output, FLIP_VIEWS + list(extra))
    _register_labels(parent_cfg)  # a repaired parent trains on a label file of its own
    model = SISSITrainer.build_model(parent_cfg)
    ipe = _iters_per_epoch(parent_cfg)
    weights = _weights_after(parent_cfg.OUTPUT_DIR, e.start_epoch - 1, ipe)
    DetectionCheckpointer(model).load(weights)
    records = DatasetCatalog.get(parent_cfg.SISSI.TARGET_DATASETS[0])
    weak = records_ground_truth(records)
    predictor = RecordPredictor(parent_cfg)
    started = time.perf_counter()
    with inference_mode(model) as net:
        views = list(predictor.predict_images(net, ((image_key(r), read_bgr8(r["file_name"])) for r in records)))
    view_seconds = time.perf_counter() - started
    keys = list(e.grid)
    rows = []
    for values in itertools.product(*(e.grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        kw = fusion_kwargs(parent_cfg)
        kw["anchor_weight"] = setting.get("SISSI.PSEUDO.WEAK_LABEL_WEIGHT", kw["anchor_weight"])
        kw["score_thresh"] = setting.get("SISSI.PSEUDO.SCORE_THRESH", kw["score_thresh"])
        flips = setting.get("SISSI.PSEUDO.FLIPS", parent_cfg.SISSI.PSEUDO.FLIPS)
        chosen = [predictor.views.index(v) for v in make_views(parent_cfg.SISSI.PSEUDO.SCALES, flips)]
        started = time.perf_counter()
        fused = {key: fuse_views([pv[i][0] for i in chosen], [pv[i][1] for i in chosen], h, w,
                                 anchor_boxes=weak[key], **kw)
                 for key, h, w, pv in views}
        seconds = {"fusion_s": round(time.perf_counter() - started, 2),
                   "views_s": round(view_seconds * len(chosen) / len(predictor.views), 1)}  # inference, pro rata
        m = coco_box_metrics(truth, fused, max_dets=parent_cfg.SISSI.EVAL.MAX_DETS)
        rows.append({**setting, **seconds, **{k: m[k] for k in ("AP50", "AP75", "AP", "AR")},
                     **label_set_f1(truth, fused),
                     "beyond_weak_labels": boxes_beyond(truth, weak, fused),
                     "weak_labels_kept": reference_boxes_kept(truth, weak, fused)})
        logger.info("fusion %s: %s", setting, rows[-1])
    plain = {key: pv[0] for key, h, w, pv in views}  # the identity view comes first
    weak_scored = {k: (b, np.ones(len(b))) for k, b in weak.items()}
    return {"weights": weights, "grid": rows,
            "model_vs_training_truth": coco_box_metrics(truth, plain, max_dets=parent_cfg.SISSI.EVAL.MAX_DETS),
            "cell_scores_by_weak_labelling": cell_scores_by_labelling(truth, weak, plain),
            "weak_labels_vs_training_truth": label_set_quality(truth, weak_scored)}


def test_entry(name: str, output: str, extra=()) -> dict:
    """Score a ``final`` entry's last model on the test set (once; the result is kept)."""
    from detectron2.checkpoint import DetectionCheckpointer

    from ..engine.trainer import SISSITrainer

    e = entry(name)
    if not e.final:
        raise ValueError(f"{name} is not a final setting: the test set is not used to choose settings")
    cfg = entry_config(e, output, list(extra) + ["DATASETS.TEST", f"('{TEST_SET}',)"])
    model = SISSITrainer.build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    res = SISSITrainer.test(cfg, model)
    res = res.get("bbox", res.get(TEST_SET, {}).get("bbox"))
    _write(output, name, "test.json", res)
    return res


def repair_figure(output: str, out_png: str) -> str | None:
    """Test AP50 / AP75 / AP / AR of the trunk, of each ``repaired`` entry and of the Oracle (those
    of them scored on the test set in ``output``); None when no repaired entry has been scored."""
    from ..utils.visualize import plot_metric_bars

    names = ["r5_weak_only_light"] + [e.name for e in ENTRIES if e.kind == "repaired"] + ["r5_oracle_light"]
    groups = {}
    for name in names:
        path = os.path.join(output, name, "test.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                label = "missed cells ignored" if name == "r8_ignore_missed_cells" else name
                groups[label.replace("r6_repair_", "repaired: ").replace("r5_", "")] = json.load(f)
    if not any(k.startswith("repaired") for k in groups):
        return None
    return plot_metric_bars(groups, ("AP50", "AP75", "AP", "AR"), out_png,
                            "The recipe's trunk on the weak labels with one kind of error repaired (or ignored)")


def unlabelled_cells_figure(output: str, out_png: str) -> str | None:
    """For each fusion entry that recorded ``cell_scores_by_weak_labelling``: the share of the cells
    its model scores at >= each level, apart for the cells the weak labels box and those they
    miss. None when no such entry has run in ``output``."""
    from ..utils.visualize import plot_metric_bars

    groups = {}
    for e in ENTRIES:
        path = os.path.join(output, e.name, "study.json")
        if e.kind != "fusion" or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            scores = json.load(f).get("cell_scores_by_weak_labelling")
        if not scores:
            continue
        trunk = (e.parent.replace("r7_missing_label_heads_", "missing-label heads ").replace("r5_", "")
                 .replace("r8_ignore_missed_cells", "missed cells ignored"))
        for group in ("labelled", "unlabelled"):
            g = scores[group]
            groups[f"{trunk}: {group}"] = {f">= {level}": 100.0 * n / max(g["cells"], 1)
                                           for level, n in g["scored_at_least"].items()}
    if not groups:
        return None
    levels = list(next(iter(groups.values())))
    return plot_metric_bars(groups, levels, out_png, "Cells the final model finds (IoU >= 0.5), by whether the "
                            "weak labels box them", ylabel="cells found at score (%)")


def study_report(output: str, figure_dir: str | None = None) -> str:
    """Markdown tables of every entry that has run (``study.json`` / ``test.json`` in ``output``)
    and a figure of the pseudo-label F1 per correction round of the branches."""
    from ..utils.visualize import plot_label_quality
    from .report import fmt, markdown_table

    def load(name, fname):
        path = os.path.join(output, name, fname)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    lines, body, weak_f1 = [], [], None
    for e in ENTRIES:
        res, test = load(e.name, "study.json"), load(e.name, "test.json") or {}
        if res is None:
            continue
        weak_f1 = res.get("weak_labels_vs_training_truth", {}).get("F1_50", weak_f1)
        model = res.get("model_vs_training_truth", {})
        # a retrain / repaired entry has no rounds of its own: show the labels it trained on
        rounds = res.get("pseudo_labels_vs_training_truth") or [r for r in [res.get("trained_labels_vs_training_truth")] if r]
        last = rounds[-1] if rounds else {}
        mem = res.get("memorisation") or {}
        body.append([e.name, e.kind, fmt(model.get("AP50")), fmt(model.get("AP75")),
                     " / ".join(fmt(r.get("F1_50")) for r in rounds) or "-", fmt(last.get("precision50")),
                     fmt(last.get("recall50")), f"{mem.get('fired_epoch')} ({mem.get('fired_by') or 'n/a'})" if mem else "-",
                     " / ".join(fmt(test.get(k)) for k in ("AP50", "AP75", "AP", "AR")) if test else "-",
                     fmt(res.get("minutes"))])
    lines.append(markdown_table(body, ["entry", "kind", "model AP50 (train truth)", "model AP75", "label F1@0.5 per round",
                                       "last P", "last R", "ADELE fired", "test AP50/AP75/AP/AR", "min"]))
    for e in ENTRIES:
        res = load(e.name, "study.json")
        if e.kind == "fusion" and res:
            timed = all("views_s" in r for r in res["grid"])  # entries run before 2026-12-02 have no times
            beyond = all("beyond_weak_labels" in r for r in res["grid"])  # recorded since 2026-12-07
            grid = [[*(str(r[k]) for k in e.grid), fmt(r["AP50"]), fmt(r["AP75"]), fmt(r["precision50"]),
                     fmt(r["recall50"]), fmt(r["F1_50"]), str(r["labels"]),
                     *([str(r["views_s"]), str(r["fusion_s"])] if timed else []),
                     *([str(r["beyond_weak_labels"]["cells"])] if beyond else [])] for r in res["grid"]]
            lines.append(f"\n{e.name}: {e.why}\n")
            lines.append(markdown_table(grid, [*(k.split(".")[-1] for k in e.grid), "AP50", "AP75", "P", "R", "F1", "labels",
                                               *(["inference s", "fusion s"] if timed else []),
                                               *(["cells beyond the weak labels"] if beyond else [])]))
    if figure_dir:
        png = repair_figure(output, os.path.join(figure_dir, "study_repaired_weak_labels.png"))
        if png:
            lines.append(f"\n![weak labels with one error repaired]({os.path.relpath(png, os.path.join(_root(), 'docs'))})\n")
        png = unlabelled_cells_figure(output, os.path.join(figure_dir, "study_unlabelled_cell_scores.png"))
        if png:
            lines.append(f"\n![cells found, boxed or missed by the weak labels]({os.path.relpath(png, os.path.join(_root(), 'docs'))})\n")
        series = {}
        for e in ENTRIES:
            res = load(e.name, "study.json")
            if e.kind == "branch" and res:
                series[e.name] = [(r["epoch"], r["F1_50"]) for r in res.get("pseudo_labels_vs_training_truth", [])]
        if series:
            png = plot_label_quality(series, os.path.join(figure_dir, "study_pseudo_label_f1.png"), reference=weak_f1,
                                     metric="F1@0.5", title="Pseudo-labels per round against the training truth")
            lines.append(f"\n![pseudo-label F1 per round]({os.path.relpath(png, os.path.join(_root(), 'docs'))})\n")
    return "\n".join(lines)
