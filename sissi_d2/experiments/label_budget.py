"""How much labelling can a lab skip? Label-budget curves (``tools/label_budget.py`` drives this).

From a completely labelled target training set (the oracle masks of the Usiigaci training images,
or the synthetic set), degraded label sets are made with a fixed seed
(``data.label_degradation``): missing cells, fewer images, noisy boxes. Each is written as COCO
json, registered as a Detectron2 data set and trained on by three methods:

* **Plain** (``weak_only.yaml``: the Weak-only setting, trained on the degraded labels as they are);
* **Cloning only** (``weak_only.yaml`` + ``SISSI.CLONING.MODE always``, ``START_RULE never``):
  synthetic-like images from the kept boxes from the first epoch, no correction, so unlabelled
  cells fade into the blurred background instead of being taught as background;
* **A+SISSI(S)** (``adele_sissi_s.yaml``): the full method, ADELE start + pseudo-labels + cloning.

The rows of one label set are trained with ``experiments.rows.run_rows``: Plain is the trunk and
A+SISSI(S) branches from it where ADELE fires; Cloning only differs from the first epoch and is
trained on its own. Plain on the complete set is the **Oracle** (the horizontal line of the
plots). Every row is scored on the test set with maxDets 400.

Resumable: a label set whose ``result.json`` matches its labels and settings is skipped; in a
set that was interrupted, finished rows are reused and a killed row resumes at its last
checkpoint (``run_rows``). Each set's folder keeps only ``model_final.pth`` per row once the set
is done. The plan, its time estimate and the disk it writes are printed before anything trains.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass

from ..data.label_degradation import (AXES, Degradation, check_complete_labels, choose_images, images_without_boxes,
                                      labels_of_records)
from ..utils.atomic import atomic_write_json
from .specs import RowSpec
from .study import P2_MODEL

__all__ = ["METHODS", "Cost", "Plan", "PLANS", "plan_points", "plan_sets", "label_sets", "set_configs", "estimate",
           "run_set", "run_budget", "write_label_set", "budget_table", "budget_figures", "describe_plan"]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRUNK = "weak_only"
METHODS = (
    RowSpec("weak_only", "Plain", "weak_only.yaml", trunk=None),
    RowSpec("cloning_only", "Cloning only", "weak_only.yaml", trunk=None),
    RowSpec("adele_sissi_s", "A+SISSI(S)", "adele_sissi_s.yaml"),
)
METHOD_NAMES = {m.key: m.name for m in METHODS}
# Cloning only: synthetic-like images from the first epoch, never corrected. Its memorisation
# curve is not needed (no rule reads it, and the row never branches), so it is not measured.
METHOD_OPTS = {"cloning_only": ("SISSI.CLONING.MODE", "always", "SISSI.START_RULE", "never", "SISSI.ADELE.TRACK", "False")}
COMPLETE = "complete"  # the label set that degrades nothing: the Oracle's
DATASET_PREFIX = "label_budget_"  # catalog names owned by this module


@dataclass(frozen=True)
class Cost:
    """Seconds the time estimate assumes: one training iteration without cloning, the cloning of
    one target image (it runs in the loader, once per draw), and the inference of one image (the
    memorisation check, TTA views, the test set); ``per_row``: building a trainer and its data."""

    iteration: float
    clone: float
    inference: float
    per_row: float
    source: str  # where the numbers were measured


@dataclass(frozen=True)
class Plan:
    """A study: the data, the configs and their overrides, the budget points and their cost."""

    name: str
    truth: str  # registered, completely labelled target training set
    test_set: str
    weak: str | None  # registered weak labels of every training image (others="weak"); None: made on demand
    config_dir: str
    opts: tuple  # KEY VALUE overrides on top of every config (recipe, sizing)
    points: tuple  # Degradation, the complete set excluded (it is always trained: the Oracle)
    draws_per_epoch: int  # target images drawn per epoch, whatever the size of the set
    cost: Cost
    why: str = ""
    extra_opts: tuple = ()  # the command line's overrides, applied last


# The real study within 2 hours on 2 CPU cores (upper estimate 1.8 h; the arithmetic is in
# docs/label_budget.md and printed by --dry-run): 7 label sets x 3 methods of 7 epochs x 17
# iterations (each target image drawn about twice per epoch: 50 draws, 3 per iteration). The
# warmup shrinks with the run (20 of 119 iterations instead of 100 of 1000). Correction needs
# epochs after ADELE fires: horizon 5 of 7 epochs (about the ratio of configs/cpu before the
# recipe, 16 of 20) leaves at least one correction epoch.
REAL_EPOCHS = 7
REAL_SIZING = ["SISSI.EPOCHS", str(REAL_EPOCHS), "SISSI.ADELE.HORIZON", "5", "SISSI.ADELE.MIN_POINTS", "4",
               "SOLVER.WARMUP_ITERS", "20"]
# The model of configs/cpu before the light one, pinned: docs/label_budget.md was measured with it.
REAL_COMMON = ["SISSI.EVAL.MAX_DETS", "400", "SISSI.SOURCE_VAL_DATASETS", "()"] + P2_MODEL
# docs/experiments.md (r2_weak_only on the idle machine): 1.4-1.6 s per iteration of 4 crops of
# 320 px with 2 threads (recipe v3 trains the same 4 crops, 1 source + 3 target); cloning: 0.5-0.7 s
# CPU per 1024x1022 Usiigaci image with the strong blur (measured for this study), 3 per
# iteration; inference: 0.23 s per 512 px image (configs/cpu/Base-SISSI-CPU.yaml).
REAL_COST = Cost(iteration=1.5, clone=0.7, inference=0.23, per_row=15.0,
                 source="1.5 s per iteration of 4 crops (docs/experiments.md, r2), + 0.7 s per cloned Usiigaci "
                        "image, 0.23 s per inferred image; the idle 2-core machine")

# --quick: the tiny model of the tests on 128 px synthetic images, 4 epochs of 2 iterations,
# ADELE forced by its horizon at epoch 2 at the latest so that A+SISSI(S) corrects one epoch.
QUICK_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "SOLVER.WARMUP_ITERS", "2", "DATALOADER.NUM_WORKERS", "0",
    "SISSI.EPOCHS", "4", "SISSI.ADELE.TRACK", "True", "SISSI.ADELE.HORIZON", "2", "SISSI.ADELE.MIN_POINTS", "2",
    "SISSI.PSEUDO.SCALES", "(1.0,)", "SISSI.PSEUDO.FLIPS", "('none', 'hv')",
    "SISSI.SOURCE_VAL_DATASETS", "()", "SISSI.EVAL.MAX_DETS", "400",
]

PLANS = {
    "real": Plan(
        name="real", truth="usiigaci_train_oracle", test_set="usiigaci_test", weak="usiigaci_train_weak",
        config_dir=os.path.join(REPO, "configs", "cpu"), opts=tuple(REAL_SIZING + REAL_COMMON),
        points=(Degradation("cells", 50), Degradation("cells", 10), Degradation("images", 2), Degradation("images", 8),
                Degradation("noise", 15, fp_rate=0.15), Degradation("noise", 30, fp_rate=0.3)),
        draws_per_epoch=50, cost=REAL_COST,
        why="Usiigaci, 6 budget points + the complete set, 3 methods, 119 iterations per row: <= 2 h on 2 cores"),
    "full": Plan(
        name="full", truth="usiigaci_train_oracle", test_set="usiigaci_test", weak="usiigaci_train_weak",
        # the recipe's own length: 20 epochs of 50 iterations
        config_dir=os.path.join(REPO, "configs", "cpu"), opts=tuple(REAL_COMMON),
        points=tuple([Degradation("cells", p) for p in (75, 50, 25, 10)]
                     + [Degradation("images", k) for k in (1, 2, 4, 8, 16)]
                     + [Degradation("noise", s, fp_rate=s / 100) for s in (10, 20, 30)]),
        draws_per_epoch=150, cost=REAL_COST,
        why="every point of the issue at the recipe's full length (20 epochs x 50 iterations): about a day"),
    "quick": Plan(
        name="quick", truth="synth_target_train_oracle", test_set="synth_target_test", weak=None,
        config_dir=os.path.join(REPO, "configs", "demo"), opts=tuple(QUICK_OPTS),
        points=(Degradation("cells", 50), Degradation("images", 1), Degradation("noise", 20, fp_rate=0.2)),
        draws_per_epoch=4, cost=Cost(iteration=0.3, clone=0.01, inference=0.04, per_row=1.8,
                                     source="--quick measured on the 2 cores shared with 3 training processes"),
        why="synthetic, tiny: tests the machinery end to end (CI), not a result"),
}



# ---------------------------------------------------------------------------------------------
# label sets
# ---------------------------------------------------------------------------------------------
def plan_points(plan: Plan, n_images: int) -> list:
    """(axis, point, set name) of every point of every axis: the complete end of each axis (100 %
    of the cells, all images, no noise) is the complete set; a point equal to it is not trained
    twice."""
    out = []
    for axis in AXES:
        pts = [p for p in plan.points if p.axis == axis]
        if not pts:
            continue
        complete_value = {"cells": 100, "images": n_images, "noise": 0}[axis]
        seen = set()
        for p in pts + [Degradation(axis, complete_value)]:
            same = p.complete or (axis == "images" and int(p.value) == n_images)
            name = COMPLETE if same else p.name
            key = (p.value, name)
            if key not in seen:
                seen.add(key)
                out.append((axis, p, name))
    return out


def plan_sets(plan: Plan, n_images: int) -> list:
    """The label sets to train, the complete one first (the Oracle, and every axis's end point)."""
    names = [COMPLETE]
    for _, _, name in plan_points(plan, n_images):
        if name not in names:
            names.append(name)
    return names


def _point_of(plan: Plan, name: str) -> Degradation | None:
    return next((p for p in plan.points if p.name == name), None)


def write_label_set(name: str, records: list, labels: dict, folder: str) -> tuple:
    """Write one label set as COCO json (``folder/labels.json``, absolute image paths) and register
    it as ``label_budget_<name>``; returns (data set name, json path, content hash)."""
    from ..data.datasets import register_sissi_dataset, unregister_sissi_dataset
    from ..data.label_files import records_to_coco, records_with_boxes, write_coco_json

    coco = records_to_coco(records_with_boxes(records, labels))
    digest = hashlib.sha1(json.dumps(coco, sort_keys=True).encode()).hexdigest()[:16]
    path = write_coco_json(os.path.join(folder, "labels.json"), coco)
    dataset = DATASET_PREFIX + name
    unregister_sissi_dataset(dataset)  # the name may point at another output folder of this process
    register_sissi_dataset(dataset, "coco", path)
    return dataset, path, digest


def _weak_labels(plan: Plan, output: str) -> dict:
    """Weak labels of every training image, for the points that give them to the unlabelled images."""
    from detectron2.data import DatasetCatalog

    if plan.weak:
        if plan.weak not in DatasetCatalog.list():
            raise FileNotFoundError(
                f"the weak labels {plan.weak!r} are not registered: make them first with "
                "`python tools/make_weak_labels.py ../shared/data/usiigaci_phase/train --output "
                "datasets/generated/usiigaci_train_weak.json` (or run tools/table1.py once), or drop --others weak")
        return labels_of_records(DatasetCatalog.get(plan.weak))[0]
    from . import demo  # the synthetic target's weak-label pipeline

    images = os.path.dirname(DatasetCatalog.get(plan.truth)[0]["file_name"])
    out = os.path.join(output, "weak_labels", "target_train_weak.json")
    made = demo.make_weak_json(images, out, demo.weak_label_settings(), "weak labels, target train")
    return {k: boxes for k, (boxes, _) in made.items()}


def label_sets(plan: Plan, output: str, seed: int) -> dict:
    """Make, write and register every label set of the plan; name -> {"dataset", "json", "hash",
    "point", "images", "boxes", "images_without_boxes", "labelled_boxes", "quality"}."""
    from detectron2.data import DatasetCatalog

    from ..evaluation.box_metrics import label_set_f1

    if plan.truth not in DatasetCatalog.list():
        raise KeyError(f"the complete label set {plan.truth!r} is not registered: the real data lives in "
                       "../shared/data (or SISSI_SHARED_DATA, see datasets/README.md); --quick writes its synthetic "
                       "set first")
    records = DatasetCatalog.get(plan.truth)
    check_complete_labels(records, plan.truth)
    truth, sizes = labels_of_records(records)
    n_images = len(truth)
    weak = _weak_labels(plan, output) if any(p.axis == "images" and p.others == "weak" for p in plan.points) else None
    out = {}
    for name in plan_sets(plan, n_images):
        point = _point_of(plan, name)
        labels = truth if point is None else point.apply(truth, sizes, seed, weak=weak)
        if not any(len(b) for b in labels.values()):
            raise ValueError(f"the label set {name} holds no box at all: nothing to train on. Use a larger percentage "
                             "or number of images.")
        dataset, path, digest = write_label_set(name, records, labels, os.path.join(output, "sets", name))
        empty = images_without_boxes(labels)
        if empty:
            logger.info("Label set %s: %d of its %d images keep no box; they stay in the set with no box "
                        "(plain training sees their cells as background)", name, len(empty), len(labels))
        kept_true = _drawn_boxes(point, truth, labels, seed)
        out[name] = {"dataset": dataset, "json": path, "hash": digest, "point": _point_dict(point),
                     "images": len(labels), "boxes": int(sum(len(b) for b in labels.values())),
                     "images_without_boxes": len(empty), "labelled_boxes": kept_true,
                     "labelled_fraction": round(100.0 * kept_true / max(1, sum(len(b) for b in truth.values())), 2),
                     "quality": label_set_f1(truth, labels)}
    return out


def _drawn_boxes(point, truth: dict, labels: dict, seed: int) -> int:
    """Boxes a person drew for this set: the kept true boxes (jittered ones count, they were drawn;
    weak labels do not, a pipeline made them)."""
    if point is None or point.axis == "noise":
        return int(sum(len(b) for b in truth.values()))
    if point.axis == "cells":
        return int(sum(len(b) for b in labels.values()))
    return int(sum(len(truth[k]) for k in choose_images(truth, int(point.value), seed)))


def _point_dict(point) -> dict:
    if point is None:
        return {"axis": None, "value": None, "label": "complete labels"}
    return {"axis": point.axis, "value": point.value, "fp_rate": point.fp_rate, "others": point.others,
            "label": point.label}


# ---------------------------------------------------------------------------------------------
# rows of a label set
# ---------------------------------------------------------------------------------------------
def repeats_for(plan: Plan, n_images: int) -> int:
    """SISSI.TARGET_REPEATS of a set of ``n_images``: every set draws about ``draws_per_epoch``
    target images per epoch, so a set with fewer images trains as many iterations (on the same
    images more often), and the budget axis measures labels, not training length."""
    return max(1, round(plan.draws_per_epoch / max(1, n_images)))


def set_configs(plan: Plan, output: str, name: str, dataset: str, n_images: int) -> dict:
    """method key -> frozen config of the rows of one label set (``output/sets/<name>/<method>``).

    Overrides, in order: the plan's (the CPU recipe and the sizing), its test set (after the
    recipe, which sets none), the set's labels and repeats, the method's, the command line's."""
    from .specs import row_configs

    common = list(plan.opts) + ["DATASETS.TEST", f"('{plan.test_set}',)", "SISSI.TARGET_DATASETS", f"('{dataset}',)",
                                "SISSI.TARGET_REPEATS", str(repeats_for(plan, n_images))]
    cfgs = {}
    for m in METHODS:
        cfgs.update(row_configs([m], plan.config_dir, os.path.join(output, "sets", name),
                                common + list(METHOD_OPTS.get(m.key, ())) + list(plan.extra_opts)))
    return cfgs


def _iterations(cfg, n_images: int) -> tuple:
    from ..data.two_source import iters_per_epoch

    ipe = iters_per_epoch(n_images * int(cfg.SISSI.TARGET_REPEATS), int(cfg.SISSI.IMS_PER_BATCH_TARGET))
    return ipe, int(cfg.SISSI.EPOCHS)


def _views(cfg) -> int:
    return len(cfg.SISSI.PSEUDO.SCALES) * len(cfg.SISSI.PSEUDO.FLIPS)


def row_seconds(cfg, n_images: int, n_test: int, cost: Cost, correction_epochs: int = 0) -> float:
    """Estimated seconds of one row: its iterations (with cloning where it clones), its per-epoch
    memorisation check, its TTA pseudo-labels in ``correction_epochs``, the test set."""
    ipe, epochs = _iterations(cfg, n_images)
    clones = cfg.SISSI.CLONING.MODE == "always"
    per_iter = cost.iteration + (int(cfg.SISSI.IMS_PER_BATCH_TARGET) * cost.clone if clones else 0.0)
    trained = correction_epochs if correction_epochs else epochs
    seconds = trained * ipe * per_iter + cost.per_row + n_test * cost.inference
    if correction_epochs:  # a branch: cloning from its start, TTA at every correction epoch
        seconds += correction_epochs * ipe * int(cfg.SISSI.IMS_PER_BATCH_TARGET) * cost.clone
        seconds += correction_epochs * n_images * _views(cfg) * cost.inference
    elif cfg.SISSI.ADELE.TRACK:
        seconds += epochs * n_images * cost.inference
    return seconds


def estimate(plan: Plan, sets: dict, n_test: int, output: str = "/tmp/label_budget") -> dict:
    """Time of every set (seconds; A+SISSI(S) as a range: ADELE fires at its horizon at the latest
    and after MIN_POINTS epochs at the earliest) and iterations per row. ``sets``: name -> number
    of images."""
    out, low, high = {}, 0.0, 0.0
    for name, n in sets.items():
        cfgs = set_configs(plan, output, name, DATASET_PREFIX + name, n)
        a = cfgs["adele_sissi_s"]
        epochs, min_points = int(a.SISSI.EPOCHS), int(a.SISSI.ADELE.MIN_POINTS)
        horizon = int(a.SISSI.ADELE.HORIZON or epochs)  # 0: over all epochs
        fewest, most = max(0, epochs - horizon - 1), max(0, epochs - min_points)
        base = (row_seconds(cfgs["weak_only"], n, n_test, plan.cost)
                + row_seconds(cfgs["cloning_only"], n, n_test, plan.cost))
        s_low = base + (row_seconds(a, n, n_test, plan.cost, fewest) if fewest else 0.0)
        s_high = base + row_seconds(a, n, n_test, plan.cost, most)
        ipe, _ = _iterations(cfgs["weak_only"], n)
        out[name] = {"images": n, "iterations_per_epoch": ipe, "epochs": epochs, "iterations": ipe * epochs,
                     "correction_epochs": [fewest, most], "seconds": [round(s_low), round(s_high)]}
        low, high = low + s_low, high + s_high
    return {"sets": out, "seconds": [round(low), round(high)], "cost": plan.cost.__dict__}


def disk_estimate(plan: Plan, cfgs: dict, n_images: int, n_sets: int) -> dict:
    """Bytes the study writes: the peak of one set (``utils.disk.estimate_rows``: checkpoints the
    trunk keeps for its branch, snapshots, logs) and what stays per set (model_final.pth of each
    row, label files and logs), so at the end: (n_sets - 1) x kept + the last set's peak."""
    from ..utils.disk import BYTES_OF_LOGS_PER_RUN, estimate_rows, model_checkpoint_sizes

    ckpt, weights = model_checkpoint_sizes(cfgs[TRUNK])
    peak = sum(e.needed for e in estimate_rows(cfgs, TRUNK, ckpt, weights, n_images).values())
    kept = len(METHODS) * (ckpt + BYTES_OF_LOGS_PER_RUN)
    return {"checkpoint": ckpt, "peak_per_set": peak, "kept_per_set": kept,
            "total": (n_sets - 1) * kept + max(peak, kept)}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" + (f" ({seconds / 3600:.2f} h)" if seconds >= 3600 else "")


def describe_plan(plan: Plan, seed: int, n_images: int, n_test: int, times: dict, disk: dict | None) -> str:
    """The plan as printed before anything trains: points, sets, methods, time, disk."""
    from ..utils.disk import format_bytes

    lines = [f"Label-budget study, plan {plan.name!r}: {plan.why}",
             f"  truth {plan.truth} ({n_images} images), test set {plan.test_set} ({n_test} images), "
             f"degradation seed {seed}, configs {os.path.relpath(plan.config_dir, REPO)}"]
    for axis in AXES:
        pts = [(p, name) for ax, p, name in plan_points(plan, n_images) if ax == axis]
        if pts:
            lines.append(f"  {axis} ({AXES[axis]}): " + ", ".join(
                f"{p.value:g}" + (f" (+{p.fp_rate:g} false/cell)" if p.fp_rate else "")
                + (" (+ weak labels)" if p.others == "weak" and name != COMPLETE else "") + ("*" if name == COMPLETE else "")
                for p, name in pts))
    lines.append("  (* = the complete set, trained once: Plain on it is the Oracle)")
    lines.append(f"  methods: {', '.join(m.name for m in METHODS)}; {len(times['sets'])} label sets -> "
                 f"{len(times['sets']) * len(METHODS)} rows (A+SISSI(S) branches from Plain where ADELE fires)")
    for name, t in times["sets"].items():
        lines.append(f"    {name:22s} {t['images']:3d} images, {t['epochs']} epochs x {t['iterations_per_epoch']} "
                     f"iterations, A+SISSI(S) corrects {t['correction_epochs'][0]}-{t['correction_epochs'][1]} epochs: "
                     f"{_duration(t['seconds'][0])} - {_duration(t['seconds'][1])}")
    lo, hi = times["seconds"]
    lines.append(f"  time: {_duration(lo)} - {_duration(hi)} estimated ({plan.cost.source})")
    if disk:
        lines.append(f"  disk: at most {format_bytes(disk['total'])} (checkpoint {format_bytes(disk['checkpoint'])}; "
                     f"peak of one set {format_bytes(disk['peak_per_set'])}, kept per finished set "
                     f"{format_bytes(disk['kept_per_set'])}: model_final.pth of each row)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
class _Clock:
    """Elapsed time of the study, and the time left: the plan's estimate of the sets not finished,
    scaled by how the sets trained in this run compared with their estimate."""

    def __init__(self, times: dict):
        self.t0, self.times = time.time(), times
        self.measured_s = self.planned_s = 0.0  # sets trained in this run: wall time / mid estimate

    def stamp(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def set_done(self, name: str, wall_s: float, trained: bool) -> None:
        if trained:
            self.measured_s += wall_s
            self.planned_s += sum(self.times["sets"][name]["seconds"]) / 2

    def left(self, remaining: list) -> str:
        lo = sum(self.times["sets"][n]["seconds"][0] for n in remaining)
        hi = sum(self.times["sets"][n]["seconds"][1] for n in remaining)
        text = f"{len(remaining)} sets left, estimated {_duration(lo)} - {_duration(hi)}"
        if self.planned_s and remaining:
            ratio = self.measured_s / self.planned_s
            text += f" (x {ratio:.2f} as measured so far: about {_duration(ratio * (lo + hi) / 2)})"
        return text


def _progress_hook(clock: _Clock, set_name: str):
    """A hook class printing one line per trained epoch: set, row, epoch, seconds per iteration."""
    from detectron2.engine import HookBase

    class BudgetProgress(HookBase):
        def __init__(self, row: str, ipe: int):
            self.row, self.ipe = row, ipe

        def before_train(self):
            self.t_epoch, self.first = time.time(), self.trainer.iter

        def after_step(self):
            it = self.trainer.iter + 1
            if it % self.ipe:
                return
            now = time.time()
            steps = it - max(self.first, it - self.ipe)
            logger.info("[%s] %s, %s: epoch %d/%d trained, %.2f s per iteration (with the epoch's checks)",
                        clock.stamp(), set_name, METHOD_NAMES[self.row], it // self.ipe - 1,
                        self.trainer.max_iter // self.ipe - 1, (now - self.t_epoch) / max(1, steps))
            self.t_epoch, self.first = now, it

    return lambda row, trainer: [BudgetProgress(row, trainer.iters_per_epoch)]


def _set_fingerprint(plan: Plan, seed: int, info: dict, cfgs: dict) -> str:
    from .rows import row_settings

    settings = {k: row_settings(c) for k, c in cfgs.items()}
    return hashlib.sha1(json.dumps([plan.name, seed, info["hash"], settings], sort_keys=True, default=str)
                        .encode()).hexdigest()[:16]


def run_set(plan: Plan, output: str, name: str, info: dict, seed: int, hooks=None) -> dict:
    """Train (or reuse) the three rows of one label set; returns and writes its ``result.json``."""
    from .demo import _read_json, prune_checkpoints  # a missing or half-written json reads as None
    from .report import four
    from .rows import run_rows

    folder = os.path.join(output, "sets", name)
    cfgs = set_configs(plan, output, name, info["dataset"], info["images"])
    fingerprint = _set_fingerprint(plan, seed, info, cfgs)
    done = _read_json(os.path.join(folder, "result.json"))
    if done and done.get("fingerprint") == fingerprint:
        return done
    stamp = _read_json(os.path.join(folder, "set.json"))
    if stamp and stamp.get("hash") != info["hash"]:
        raise ValueError(f"{folder} holds rows trained on other labels (another seed or truth): use another "
                         "--output, or delete that folder to train again")
    atomic_write_json(os.path.join(folder, "set.json"), {"hash": info["hash"], "seed": seed, "point": info["point"]})
    t0 = time.time()
    summary = run_rows(cfgs, trunk=TRUNK, hooks=hooks)
    rows = {}
    for key, entry in summary.items():
        metrics = entry.get("metrics") or {}
        rows[key] = {**four(metrics.get(plan.test_set, {})), "same_as": entry.get("same_as"),
                     "branched_from_epoch": entry.get("branched_from_epoch")}
    prune_checkpoints({"dirs": {k: c.OUTPUT_DIR for k, c in cfgs.items()}})  # keep model_final.pth per row
    result = {"set": name, "fingerprint": fingerprint, "rows": rows, "minutes": round((time.time() - t0) / 60, 2),
              "trained_at": time.time(),
              **{k: info[k] for k in ("point", "images", "boxes", "images_without_boxes", "labelled_boxes",
                                      "labelled_fraction", "quality")}}
    atomic_write_json(os.path.join(folder, "result.json"), result)
    return result


def run_budget(plan: Plan, output: str, seed: int = 0, dry_run: bool = False, figure_dir: str | None = None,
               say=print) -> dict:
    """The whole study: label sets, plan (printed), rows set by set, ``budget.json``,
    ``budget.md`` and the figures. ``dry_run``: make the label sets and print the plan only."""
    from detectron2.data import DatasetCatalog

    output = os.path.abspath(output)
    t0 = time.time()
    sets = label_sets(plan, output, seed)
    n_images = sets[COMPLETE]["images"]
    n_test = len(DatasetCatalog.get(plan.test_set)) if plan.test_set in DatasetCatalog.list() else 0
    if not n_test:
        raise KeyError(f"the test set {plan.test_set!r} is not registered or empty")
    times = estimate(plan, {k: v["images"] for k, v in sets.items()}, n_test, output)
    cfgs = set_configs(plan, output, COMPLETE, sets[COMPLETE]["dataset"], n_images)
    disk = disk_estimate(plan, cfgs, n_images, len(sets))
    say(describe_plan(plan, seed, n_images, n_test, times, disk))
    budget = {"plan": plan.name, "why": plan.why, "seed": seed, "truth": plan.truth, "test_set": plan.test_set,
              "methods": {m.key: m.name for m in METHODS}, "opts": list(plan.opts) + list(plan.extra_opts),
              "points": [{"axis": a, "value": p.value, "set": n, **_point_dict(p)}
                         for a, p, n in plan_points(plan, n_images)],
              "estimate": times, "disk": disk, "sets": {}}
    if dry_run:
        return budget

    clock = _Clock(times)
    names = list(sets)
    for i, name in enumerate(names, 1):
        info = sets[name]
        say(f"[{clock.stamp()}] label set {i}/{len(names)}: {name} ({info['point']['label']}; {info['images']} images, "
            f"{info['boxes']} boxes)")
        t_set = time.time()
        result = run_set(plan, output, name, info, seed, hooks=_progress_hook(clock, name))
        trained = result.get("trained_at") is not None and result["trained_at"] >= t_set
        clock.set_done(name, time.time() - t_set, trained)
        budget["sets"][name] = result
        say(f"[{clock.stamp()}]   {name}: " + ", ".join(
            f"{METHOD_NAMES[k]} AP50 {_fmt(r.get('AP50'))} AR {_fmt(r.get('AR'))}" for k, r in result["rows"].items())
            + ("" if trained else " (finished earlier, reused)") + f"; {clock.left(names[i:])}")
        _write_outputs(budget, output, figure_dir, time.time() - t0)
    return budget


def _fmt(value) -> str:
    from .report import fmt

    return fmt(value)


def _write_outputs(budget: dict, output: str, figure_dir: str | None, wall_s: float) -> None:
    budget["wall_time_s"] = round(wall_s, 1)
    budget["figures"] = budget_figures(budget, figure_dir or os.path.join(output, "figures"))
    atomic_write_json(os.path.join(output, "budget.json"), budget)
    with open(os.path.join(output, "budget.md"), "w", encoding="utf-8") as f:
        f.write(budget_table(budget) + "\n")


# ---------------------------------------------------------------------------------------------
# table and figures
# ---------------------------------------------------------------------------------------------
def _curves(budget: dict) -> dict:
    """axis -> [(point dict, set name, result or None)] sorted by value (unfinished sets: None)."""
    out: dict = {}
    for p in budget["points"]:
        out.setdefault(p["axis"], []).append((p, p["set"], budget["sets"].get(p["set"])))
    return {a: sorted(v, key=lambda x: x[0]["value"]) for a, v in out.items()}


def _oracle(budget: dict) -> dict:
    return (budget["sets"].get(COMPLETE) or {}).get("rows", {}).get(TRUNK, {})


def budget_table(budget: dict) -> str:
    """Markdown: one row per budget point, the labels' effort and quality, AP50 / AR per method."""
    from .report import markdown_table

    methods = list(budget["methods"])
    headers = ["axis", "budget", "set", "images", "boxes (true drawn %)", "labels P / R (IoU 0.5)"]
    headers += [f"{budget['methods'][m]} AP50 / AR" for m in methods]
    body = []
    for axis, points in _curves(budget).items():
        for point, name, res in points:
            label = point["label"]
            if res is None:
                body.append([axis, label, name, "", "", ""] + ["not run yet"] * len(methods))
                continue
            q = res["quality"]
            cells = []
            for m in methods:
                r = res["rows"].get(m, {})
                same = f" (= {budget['methods'][r['same_as']]})" if r.get("same_as") else ""
                cells.append(f"{_fmt(r.get('AP50'))} / {_fmt(r.get('AR'))}{same}")
            body.append([axis, label + (" (complete)" if name == COMPLETE else ""), name, str(res["images"]),
                         f"{res['boxes']} ({res['labelled_fraction']:.0f} %)",
                         f"{_fmt(q['precision50'])} / {_fmt(q['recall50'])}"] + cells)
    oracle = _oracle(budget)
    text = markdown_table(body, headers)
    note = (f"\n\nTest set {budget['test_set']} (COCO AP50 / AR in percent, maxDets 400). Oracle (Plain on the complete "
            f"labels): AP50 {_fmt(oracle.get('AP50'))}, AR {_fmt(oracle.get('AR'))}. \"boxes\": boxes of the set; in "
            "brackets the share of the true boxes a person drew for it. Labels P / R: the set against the complete "
            "labels, one-to-one at IoU 0.5.")
    return f"Label budget, plan {budget['plan']} (seed {budget['seed']})\n\n" + text + note


_AXIS_TITLES = {"cells": "cells labelled in every image (%)", "images": "labelled images (the others left out)",
                "noise": "box jitter sigma (% of the box size); r: false boxes per cell"}


def _tick(axis: str, point: dict) -> str:
    if axis == "noise":
        return f"{point['value']:g}\nr {point['fp_rate']:g}"
    if axis == "images" and point.get("others") == "weak":
        return f"{point['value']:g}\n+weak"
    return f"{point['value']:g}"


def budget_figures(budget: dict, figure_dir: str) -> dict:
    """One PNG per axis (``label_budget_<axis>.png``, ``label_budget_<plan>_<axis>.png`` for plans
    other than "real"): AP50 and AR against the budget, one line per method, the Oracle as a
    horizontal line. The quick plan's figures say in their title that they are no result."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display: files only
    import matplotlib.pyplot as plt

    oracle = _oracle(budget)
    out = {}
    for axis, points in _curves(budget).items():
        done = [(p, res) for p, _, res in points if res is not None]
        if not done:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
        for ax, metric in zip(axes, ("AP50", "AR")):
            for m, mname in budget["methods"].items():
                pts = [(p["value"], res["rows"][m][metric]) for p, res in done
                       if res["rows"].get(m, {}).get(metric) is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=4, label=mname)
            if oracle.get(metric) is not None:
                ax.axhline(oracle[metric], color="black", ls="--", lw=1, label=f"Oracle ({oracle[metric]:.1f})")
            if axis == "images":
                ax.set_xscale("log", base=2)
            ax.set_xticks([p["value"] for p, _ in done], [_tick(axis, p) for p, _ in done], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel(_AXIS_TITLES[axis], fontsize=8)
            ax.set_ylabel(f"{metric} on {budget['test_set']} (%)", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        what = {"cells": "missing cells", "images": "fewer images", "noise": "noisy boxes"}[axis]
        quick = " - SYNTHETIC QUICK MODE: tests the machinery, not a result" if budget["plan"] == "quick" else ""
        fig.suptitle(f"Label budget: {what} (plan {budget['plan']}, seed {budget['seed']}){quick}", fontsize=9)
        fig.tight_layout()
        os.makedirs(figure_dir, exist_ok=True)
        # the real plan's figures are label_budget_<axis>.png; others carry the plan in the name
        path = os.path.join(figure_dir, f"label_budget_{'' if budget['plan'] == 'real' else budget['plan'] + '_'}{axis}.png")
        fig.savefig(path)
        plt.close(fig)
        out[axis] = path
    return out
