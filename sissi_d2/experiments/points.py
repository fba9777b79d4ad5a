"""Training from centre clicks: the measured comparison of docs/points.md (``tools/points.py compare``).

Clicks are simulated from a completely labelled training set: the centroid of every cell of the
oracle masks (Usiigaci, ``usiigaci_train_oracle``; ``--quick``: the synthetic target), of which
a share is kept per image (``data.label_degradation.keep_boxes``: the same cells the label-budget
study keeps at that percentage, nested: the 25 % clicks are among the 50 %). They are written as
a point CSV and read back through ``data.points`` like a lab's export, each click becoming a box
of the cell size estimated per image from the weak-label pipeline's components. Four rows then
train on each click set:

* **Boxes from clicks**: the real images with the boxes of the clicks (the Weak-only setting);
* **Cut-paste only**: every target draw a cut-paste image (``SISSI.SYNTH``, real fraction 0);
* **Cut-paste + 10 % real**: the paper's mix (real fraction 0.1), the trunk of the next row;
* **+ SISSI correction**: the same, then TTA + WBF pseudo-labels and synthetic-like real images
  from ``correction_start`` on; the cut-paste patches are then cut from the current
  pseudo-labels.

The rows of a click set are trained with ``experiments.rows.run_rows`` (the last row branches
from the third) on the CPU recipe (configs/cpu/weak_only.yaml, on configs/cpu/Base-Recipe.yaml) with
the model its report was measured with (the 128-channel FPN with P2, ``study.P2_MODEL``) and
scored on the test set. The quality of the boxes made from the clicks is measured against the
truth too. Resumable: finished rows are reused and an interrupted one resumes (``run_rows``).

Three plans (``SETTINGS``): ``real``, the default, fits in an hour on the 2-core machine (25 and
100 % clicked, rows of 10 epochs x 25 iterations: a quarter of the recipe's length); ``full``, the
issue's plan (25 / 50 / 100 % at the recipe's 20 epochs x 50 iterations, about 5.5 h); ``quick``,
the machinery on tiny synthetic data. ``estimate_seconds`` is the one cost model of all three.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..utils.atomic import atomic_write_json
from .study import P2_MODEL

__all__ = ["FRACTIONS", "REAL_FRACTIONS", "REAL_OPTS", "ROWS", "TRUNK", "Setting", "SETTINGS", "setting_opts",
           "row_configs", "clicks_from_masks", "keep_clicks", "click_boxes", "estimate_seconds",
           "describe_plan", "synthesized_examples", "run_comparison", "report_markdown"]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRACTIONS = (25, 50, 100)  # the click sets (the full plan; --fractions 25 50 100 for the real one)
REAL_FRACTIONS = (25, 100)  # the default real plan: the two ends; 50 % by --fractions
CLICK_SEED = 0  # which cells are clicked at each percentage (nested across percentages)


@dataclass(frozen=True)
class PointRow:
    key: str
    name: str
    opts: tuple  # KEY VALUE overrides; "{start}" is the setting's correction_start


_SYNTH = ("SISSI.SYNTH.ENABLED", "True")
ROWS = (
    PointRow("boxes", "Boxes from clicks", ()),
    PointRow("cutpaste", "Cut-paste only", _SYNTH + ("SISSI.SYNTH.REAL_FRACTION", "0.0")),
    PointRow("cutpaste_real10", "Cut-paste + 10 % real", _SYNTH + ("SISSI.SYNTH.REAL_FRACTION", "0.1")),
    PointRow("cutpaste_real10_sissi", "Cut-paste + 10 % real + SISSI", _SYNTH + (
        "SISSI.SYNTH.REAL_FRACTION", "0.1", "SISSI.START_RULE", "epoch:{start}", "SISSI.CLONING.MODE", "on_correction")),
)
ROW_NAMES = {r.key: r.name for r in ROWS}
TRUNK = "cutpaste_real10"  # the SISSI row shares its past until correction starts


@dataclass(frozen=True)
class Setting:
    """Where the comparison runs: data, config, how clicks become boxes, its cost per unit."""

    name: str
    config: str  # relative to the repository root
    truth: str  # registered data set with the oracle masks (clicks come from them)
    test_set: str
    size_rule: tuple  # BoxSizeRule.make keyword arguments, as ((key, value), ...)
    correction_start: int  # first epoch of the SISSI row's correction
    fractions: tuple
    # seconds: one training iteration, one synthetic image, one image through the model, one
    # synthetic-like (cloned) real image
    cost: tuple
    why: str
    opts: tuple = ()  # KEY VALUE overrides of every row of this plan, on the config


# Costs on the idle 2-core machine: 1.5 s per recipe iteration of 4 crops of 320 px
# (docs/experiments.md, r2), 0.05 s per 1024x1022 cut-paste image (blur canvas + feathered
# pasting, measured, docs/points.md), 0.23 s per image of inference (configs/cpu/Base-SISSI-CPU.yaml;
# also used for a source validation image), 0.7 s per cloned Usiigaci image with the strong blur
# (the upper end of label_budget.REAL_COST's measurement).
REAL_COST = (1.5, 0.05, 0.23, 0.7)
# The default real plan, within an hour (arithmetic in docs/points.md): rows of 10 epochs x 25
# iterations (each target image drawn 3 times per epoch instead of 6), 250 iterations instead of
# the recipe's 1000, with the warmup shrunk in proportion (25 of 250, the recipe 100 of 1000); the
# correction starts halfway as in the full plan. The memorisation check (ADELE.TRACK) and the
# source validation loss only observe: no row's start rule reads them and the report shows
# neither, so they are off (they would cost 25 + 12 inferred images per epoch and row).
# Both real settings pin the model of configs/cpu before the light one (study.P2_MODEL):
# docs/points.md was measured with it.
REAL_OPTS = ("SISSI.EPOCHS", "10", "SISSI.TARGET_REPEATS", "3", "SOLVER.WARMUP_ITERS", "25",
             "SISSI.ADELE.TRACK", "False", "SISSI.SOURCE_VAL_DATASETS", "()") + tuple(P2_MODEL)
_USIIGACI = ("configs/cpu/weak_only.yaml", "usiigaci_train_oracle", "usiigaci_test", (("pipeline", "phase"),))

SETTINGS = {
    "real": Setting("real", *_USIIGACI, 5, REAL_FRACTIONS, REAL_COST,
                    "Usiigaci, 4 rows per click set, shorter than the CPU recipe (the default: within an hour)",
                    REAL_OPTS),
    # The plan: the CPU recipe unchanged (20 epochs x 50 iterations, the memorisation
    # curve and source validation loss recorded as on every recipe row), 3 click fractions; the
    # correction starts halfway, as the recipe study's branches (study.py r1_b10_*).
    "full": Setting("full", *_USIIGACI, 10, FRACTIONS, REAL_COST,
                    "Usiigaci, 4 rows per click set at the CPU recipe's length (the issue's plan)", tuple(P2_MODEL)),
    # The demo's synthetic data at 128 px, 3 epochs of 2 iterations, one fraction: the machinery
    # end to end in about a minute (a test runs it), not a result.
    "quick": Setting("quick", "configs/demo/weak_only.yaml", "synth_target_train_oracle", "synth_target_test",
                     (), 2, (50,), (0.4, 0.01, 0.05, 0.02), "synthetic, tiny: tests the machinery end to end"),
}


def _quick_opts() -> list:
    from .demo import QUICK_OPTS

    return list(QUICK_OPTS) + ["SISSI.EPOCHS", "3", "SISSI.ADELE.TRACK", "False", "SISSI.SOURCE_VAL_DATASETS", "()",
                               "SISSI.SYNTH.COUNT", "(4, 12)"]


def _quick_size_rule() -> dict:
    from .demo import WEAK_LABELS  # the weak-label pipeline settings of the synthetic target

    return {"pipeline": WEAK_LABELS["pipeline"], "pipeline_cell_size": WEAK_LABELS["cell_size"],
            "pipeline_kwargs": dict(WEAK_LABELS["kwargs"])}


def size_rule_of(setting: Setting) -> dict:
    return _quick_size_rule() if setting.name == "quick" else dict(setting.size_rule)


def setting_opts(setting: Setting) -> list:
    """Overrides of every row: the plan's (none for full: the CPU recipe as it is; the shorter
    rows of real; the demo's quick sizing), and the test set."""
    base = _quick_opts() if setting.name == "quick" else []
    return base + list(setting.opts) + ["DATASETS.TEST", f"('{setting.test_set}',)"]


def row_configs(setting: Setting, output: str, fraction: int, dataset: str, opts=()) -> dict:
    """row key -> frozen config of the rows of one click set (``output/f<fraction>/<row>``)."""
    from ..config_builder import build_config

    common = setting_opts(setting) + ["SISSI.TARGET_DATASETS", f"('{dataset}',)"] + list(opts)
    return {row.key: build_config(os.path.join(REPO, setting.config),
                                  common + [o.format(start=setting.correction_start) for o in row.opts]
                                  + ["OUTPUT_DIR", os.path.join(output, f"f{fraction}", row.key)])
            for row in ROWS}


# ---------------------------------------------------------------------------------------------
# clicks
# ---------------------------------------------------------------------------------------------
def clicks_from_masks(truth: str) -> dict:
    """image path -> (Nx2 click centres (x, y), Nx4 true boxes) of a registered Cellpose-style data
    set with masks: the centroid of each cell's label, in the order of its true boxes."""
    from detectron2.data import MetadataCatalog
    from scipy import ndimage as ndi

    from ..data.boxes import boxes_from_label_image
    from ..data.datasets.cellpose import _find_cellpose_pairs
    from ..data.image_io import read_label_image

    meta = MetadataCatalog.get(truth)
    folder, mask_dir = meta.sissi_path, (meta.sissi_options or {}).get("mask_dir") or meta.sissi_path
    out = {}
    for _, image_path, mask_path in _find_cellpose_pairs(folder, mask_dir):
        labels = read_label_image(mask_path)
        boxes, ids = boxes_from_label_image(labels, return_ids=True)
        rows_cols = ndi.center_of_mass(np.ones(labels.shape, np.float32), labels, ids.tolist()) if len(ids) else []
        # pixel (r, c) covers [c, c + 1) x [r, r + 1): its centre is at (c + 0.5, r + 0.5)
        xy = np.asarray([(c + 0.5, r + 0.5) for r, c in rows_cols], np.float64).reshape(-1, 2)
        out[image_path] = (xy, boxes)
    return out


def keep_clicks(clicks: dict, percent, seed: int = CLICK_SEED) -> dict:
    """image path -> the kept clicks (Mx2) at ``percent`` %: per image the cells
    ``label_degradation.keep_boxes`` keeps (its choice depends on (seed, image, count) only, so
    the clicked cells are nested across percentages and match the label-budget study's)."""
    from ..data.label_degradation import keep_boxes

    index = {k: np.repeat(np.arange(len(xy), dtype=np.float64)[:, None], 4, axis=1) for k, (xy, _) in clicks.items()}
    kept = keep_boxes({os.path.basename(k): v for k, v in index.items()}, percent, seed)
    return {k: clicks[k][0][kept[os.path.basename(k)][:, 0].astype(int)] for k in clicks}


def click_boxes(setting: Setting, clicks: dict, fraction, folder: str) -> dict:
    """Write the clicks of one fraction as a point CSV, read it back through ``data.points`` into
    boxes, write those as COCO json and register them; returns {"dataset", "csv", "json",
    "records", "info"}. Reused while the clicks and the size rule are unchanged."""
    from ..data.datasets import register_sissi_dataset, unregister_sissi_dataset
    from ..data.label_files import load_coco_boxes, save_records_as_coco
    from ..data.points import BoxSizeRule, point_boxes, write_points_csv

    csv_path = os.path.join(folder, f"clicks_{fraction}.csv")
    json_path = os.path.join(folder, f"boxes_{fraction}.json")
    stamp_path = json_path + ".stamp.json"
    rule = size_rule_of(setting)
    stamp = {"clicks": {os.path.basename(k): np.round(v, 2).tolist() for k, v in clicks.items()}, "rule": rule}
    previous = _read_json(stamp_path)
    if previous and previous.get("stamp") == json.loads(json.dumps(stamp)) and os.path.isfile(json_path):
        records, info = load_coco_boxes(json_path), previous["info"]
    else:
        image_root = os.path.dirname(next(iter(clicks)))
        write_points_csv(csv_path, {os.path.basename(k): v.tolist() for k, v in clicks.items()})
        records, info = point_boxes(csv_path, image_root, rule=BoxSizeRule.make(**rule))
        save_records_as_coco(records, json_path)
        atomic_write_json(stamp_path, {"stamp": stamp, "info": info})
    dataset = f"points_{setting.name}_clicks{fraction}"
    unregister_sissi_dataset(dataset)  # the name may point at another output folder of this process
    register_sissi_dataset(dataset, "coco", json_path)
    return {"dataset": dataset, "csv": csv_path, "json": json_path, "records": records, "info": info}


def click_box_quality(truth: dict, records: list, info: list, clicked: int, cells: int) -> dict:
    """The boxes made from the clicks against the true boxes: F1 / precision / recall at IoU 0.5,
    AP50..AR (all scores 1), the median size ratio of matched boxes, the cell sizes used."""
    from ..evaluation.box_metrics import coco_box_metrics, label_set_f1
    from ..evaluation.evaluator import records_ground_truth
    from .study import median_box_scale

    boxes = records_ground_truth(records)
    scored = {k: (b, np.ones(len(b))) for k, b in boxes.items()}
    sizes = [i["cell_size"] for i in info if i.get("cell_size")]
    # each image's cell size against its true median cell size (how the size rule did)
    ratios = []
    for i in info:
        t = np.asarray(truth.get(i["image"], np.zeros((0, 4))), np.float64).reshape(-1, 4)
        if i.get("cell_size") and len(t):
            ratios.append(np.asarray(i["cell_size"]) / (np.median(t[:, 2] - t[:, 0]), np.median(t[:, 3] - t[:, 1])))
    ratios = np.asarray(ratios).reshape(-1, 2)
    return {"clicks": clicked, "cells": cells, **label_set_f1(truth, boxes),
            "cell_size_vs_true_median": [round(float(v), 3) for v in np.median(ratios, axis=0)] if len(ratios) else None,
            "cell_size_error_percent": round(float(100 * np.median(np.abs(ratios - 1))), 1) if len(ratios) else None,
            **{k: coco_box_metrics(truth, scored)[k] for k in ("AP50", "AP75", "AP", "AR")},
            "box_scale_vs_truth": median_box_scale(truth, scored, min_score=0.0),
            "median_cell_size": [round(float(np.median([s[0] for s in sizes])), 1),
                                 round(float(np.median([s[1] for s in sizes])), 1)] if sizes else None,
            "size_from": sorted({i["size_from"] for i in info if i.get("clicks")})}


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def estimate_seconds(cfg, n_images: int, n_test: int, cost: tuple, trained_epochs: int | None = None,
                     correction_epochs: int = 0, n_source_val: int = 0) -> float:
    """Seconds of one row (the one cost model of every plan): its iterations, a cut-paste image per
    synthetic target draw, a cloned image per real target draw while cloning (SISSI.CLONING.MODE),
    the per-epoch memorisation check (ADELE.TRACK) and source validation loss (SOURCE_VAL_DATASETS,
    ``SOURCE_VAL.MAX_IMAGES`` of the ``n_source_val`` images), TTA pseudo-labels in each correction
    epoch, and the test set. ``cost``: seconds per iteration, cut-paste image, inferred image,
    cloned image. ``trained_epochs``: the epochs this row trains itself (a branch: its last ones)."""
    from ..data.two_source import iters_per_epoch

    per_iter, per_synth, per_image, per_clone = cost
    target = int(cfg.SISSI.IMS_PER_BATCH_TARGET)
    ipe = iters_per_epoch(n_images * int(cfg.SISSI.TARGET_REPEATS), target)
    epochs = int(cfg.SISSI.EPOCHS) if trained_epochs is None else trained_epochs
    real_share = float(cfg.SISSI.SYNTH.REAL_FRACTION) if cfg.SISSI.SYNTH.ENABLED else 1.0
    seconds = epochs * ipe * (per_iter + (1.0 - real_share) * target * per_synth) + n_test * per_image
    cloned_epochs = {"always": epochs, "on_correction": correction_epochs}.get(cfg.SISSI.CLONING.MODE, 0)
    seconds += cloned_epochs * ipe * real_share * target * per_clone
    if cfg.SISSI.ADELE.TRACK:
        seconds += epochs * n_images * per_image
    if cfg.SISSI.SOURCE_VAL_DATASETS:
        cap = int(cfg.SISSI.SOURCE_VAL.MAX_IMAGES)
        n_val = min(cap, n_source_val) if cap > 0 and n_source_val else cap if cap > 0 else n_source_val
        seconds += epochs * n_val * per_image
    views = len(cfg.SISSI.PSEUDO.SCALES) * len(cfg.SISSI.PSEUDO.FLIPS)
    return seconds + correction_epochs * n_images * views * per_image


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _length(cfg, n_images: int) -> tuple:
    """(epochs, iterations per epoch) of a row on ``n_images`` target images."""
    from ..data.two_source import iters_per_epoch

    return int(cfg.SISSI.EPOCHS), iters_per_epoch(n_images * int(cfg.SISSI.TARGET_REPEATS),
                                                  int(cfg.SISSI.IMS_PER_BATCH_TARGET))


def describe_plan(setting: Setting, fractions, cfgs: dict, n_images: int, n_test: int, n_cells: int,
                  n_source_val: int = 0) -> tuple:
    """(lines, total seconds) of the plan printed before anything trains: ``estimate_seconds`` of
    each row of one click set (the SISSI row trains only its correction epochs, branching from
    its trunk), times the number of click sets (no row is shared across click sets: every row
    trains on its own set's boxes or on patches cut from them)."""
    from ..config_builder import build_config

    trunk = cfgs[TRUNK]
    epochs, ipe = _length(trunk, n_images)
    start = setting.correction_start
    per_row = {}
    for row in ROWS:
        if row.key == "cutpaste_real10_sissi":  # a branch: only its correction epochs are trained
            per_row[row.key] = estimate_seconds(cfgs[row.key], n_images, n_test, setting.cost, epochs - start,
                                                epochs - start, n_source_val)
        else:
            per_row[row.key] = estimate_seconds(cfgs[row.key], n_images, n_test, setting.cost,
                                                n_source_val=n_source_val)
    per_set = sum(per_row.values())
    total = len(fractions) * per_set
    if setting.name == "quick":
        config = f"config {setting.config} + the quick sizing"
    else:
        r_epochs, r_ipe = _length(build_config(os.path.join(REPO, setting.config), []), n_images)
        config = (f"config {setting.config} (the CPU recipe: {r_epochs} x {r_ipe} = {r_epochs * r_ipe} iterations)"
                  + (" + " + " ".join(setting.opts) if setting.opts else ", unchanged"))
    lines = [f"Training from clicks, setting {setting.name!r}: {setting.why}",
             f"  clicks: the centroids of the {n_cells} cells of {setting.truth} ({n_images} images), kept per image at "
             + ", ".join(f"{f} %" for f in fractions) + f" (seed {CLICK_SEED}, nested)",
             "  boxes from clicks: " + ", ".join(f"{k}={v}" for k, v in size_rule_of(setting).items()) + " (data.points)",
             f"  {config}",
             f"  rows: {epochs} epochs x {ipe} iterations = {epochs * ipe} iterations ({trunk.SISSI.IMS_PER_BATCH_SOURCE} "
             f"source + {trunk.SISSI.IMS_PER_BATCH_TARGET} target images), test set {setting.test_set} ({n_test} images)",
             f"  rows per click set (~{_duration(per_set)}):"]
    for row in ROWS:
        how = (f"branches from {ROW_NAMES[TRUNK]} at epoch {start}, corrects {epochs - start} epochs"
               if row.key == "cutpaste_real10_sissi" else "trained from scratch")
        lines.append(f"    {row.name:34s} {how}: ~{_duration(per_row[row.key])}")
    per_iter, per_synth, per_image, per_clone = setting.cost
    lines.append(f"  estimated time: {_duration(total)} ({len(fractions)} click sets x {len(ROWS)} rows; "
                 f"{per_iter} s per iteration, {per_synth} s per cut-paste image, {per_image} s per inferred image, "
                 f"{per_clone} s per cloned image)")
    return lines, total


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def synthesized_examples(records: list, cfg, count: int = 4, seed: int = 0, epoch: int = 0) -> tuple:
    """``count`` cut-paste images as the trainer would make them for ``cfg`` (patches from
    ``records``, the canvas from the records' images in turn), before the geometric augmentation:
    [(image, boxes)] and the patch bank's size."""
    from ..algorithms.cut_paste import make_canvas, median_kernel, synth_rng, synthesize
    from ..data.image_io import read_bgr8
    from ..data.mappers import build_patch_bank, cloning_blur, synth_params

    params = synth_params(cfg)
    patches = build_patch_bank(records, params.size_jitter / 2 + 0.02, int(cfg.SISSI.SYNTH.MAX_PATCHES), seed, epoch)
    cells = [max(p.size) for p in patches if not p.negative]
    ksize = int(cfg.SISSI.SYNTH.MEDIAN_KSIZE) or median_kernel(np.median(cells) if cells else 15)
    out = []
    for i in range(count):
        canvas = make_canvas(read_bgr8(records[i % len(records)]["file_name"]), cfg.SISSI.SYNTH.CANVAS,
                             cloning_blur(cfg), ksize)
        image, boxes, _ = synthesize(canvas, patches, synth_rng(seed, epoch, i), params)
        out.append((image, boxes))
    return out, len(patches)


def _dots(image, xy, color="red", radius: int = 3):
    import cv2

    from ..utils.visualize import COLORS, to_bgr

    out = to_bgr(image)
    for x, y in np.asarray(xy).reshape(-1, 2):
        cv2.circle(out, (int(x), int(y)), radius, COLORS[color], -1, cv2.LINE_AA)
    return out


def figures(folder: str, truth: dict, clicks: dict, sets: dict, cfg, scale: float = 1.0) -> dict:
    """points_boxes_from_clicks.png (one training image: true boxes, then the clicks and their
    boxes of every fraction) and points_synthesized.png (cut-paste images with their boxes)."""
    import cv2

    from ..data.image_io import read_bgr8
    from ..data.label_files import image_key
    from ..evaluation.evaluator import records_ground_truth
    from ..utils.visualize import draw_boxes, save_png, side_by_side

    def big(image):
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale != 1 else image

    thick = max(1, int(round(1 / scale)))  # lines are drawn before the resize: about 1 px in the figure
    path = max(clicks, key=lambda p: (len(clicks[p][0]), p))
    image = read_bgr8(path)
    key = image_key(path)
    panels = [big(draw_boxes(image, truth.get(key, np.zeros((0, 4))), "green", thickness=thick))]
    titles = [f"truth ({len(truth.get(key, []))} cells)"]
    for fraction, s in sets.items():
        boxes = records_ground_truth(s["records"]).get(key, np.zeros((0, 4)))
        panels.append(big(_dots(draw_boxes(image, boxes, "yellow", thickness=thick), s["clicks"][path], radius=2 * thick)))
        titles.append(f"{fraction} % clicked: {len(boxes)} boxes")
    out = {"boxes_from_clicks": save_png(os.path.join(folder, "points_boxes_from_clicks.png"),
                                         side_by_side(panels, titles, ncols=min(4, len(panels))))}
    records = next(iter(sets.values()))["records"]
    examples, n_patches = synthesized_examples(records, cfg, 4)
    panels = [big(draw_boxes(img, boxes, "green", thickness=thick)) for img, boxes in examples]
    titles = [f"cut-paste {i}: {len(b)} cells" for i, (_, b) in enumerate(examples)]
    out["synthesized"] = save_png(os.path.join(folder, "points_synthesized.png"),
                                  side_by_side([big(image)] + panels, ["a real target image"] + titles, ncols=5))
    return out


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_comparison(setting: Setting, output: str, fractions=None, opts=(), plan_only: bool = False, say=None) -> dict:
    """Print the plan, make the click sets, train and score their rows, write ``results.json``,
    ``report.md`` and the figures into ``output``. The setting's data sets must be registered."""
    from detectron2.data import DatasetCatalog

    from .demo import Clock, DemoHooks, prune_checkpoints
    from .report import dataset_truth
    from .rows import run_rows

    clock = Clock()
    say = say or clock.say
    fractions = tuple(fractions or setting.fractions)
    for name in (setting.truth, setting.test_set):
        if name not in DatasetCatalog.list():
            raise KeyError(f"data set {name!r} is not registered: the real data lives in ../shared/data (or "
                           "SISSI_SHARED_DATA, see datasets/README.md); --quick writes its synthetic set first")
    truth = dataset_truth(setting.truth)
    all_clicks = clicks_from_masks(setting.truth)
    n_cells = int(sum(len(xy) for xy, _ in all_clicks.values()))
    n_test = len(DatasetCatalog.get(setting.test_set))
    cfgs0 = row_configs(setting, output, fractions[0], setting.truth, opts)
    n_val = 0  # the source validation set's size matters only when SOURCE_VAL.MAX_IMAGES does not cap it
    if cfgs0[TRUNK].SISSI.SOURCE_VAL_DATASETS and int(cfgs0[TRUNK].SISSI.SOURCE_VAL.MAX_IMAGES) <= 0:
        n_val = sum(len(DatasetCatalog.get(v)) for v in cfgs0[TRUNK].SISSI.SOURCE_VAL_DATASETS)
    lines, total = describe_plan(setting, fractions, cfgs0, len(all_clicks), n_test, n_cells, n_val)
    for line in lines:
        say(line)
    if plan_only:
        return {"plan": lines, "seconds": total}

    say("Step 1/3: clicks and their boxes")
    sets = {}
    for f in fractions:
        kept = keep_clicks(all_clicks, f)
        s = click_boxes(setting, kept, f, os.path.join(output, "clicks"))
        s["clicks"] = kept
        s["quality"] = click_box_quality(truth, s["records"], s["info"], int(sum(len(v) for v in kept.values())), n_cells)
        q = s["quality"]
        say(f"  {f} %: {q['clicks']} clicks -> {q['labels']} boxes ({s['json']}); against the truth: precision "
            f"{q['precision50']:.1f}, recall {q['recall50']:.1f}, F1 {q['F1_50']:.1f} at IoU 0.5; box size / true size "
            f"{q['box_scale_vs_truth']}; median cell size {q['median_cell_size']} px")
        sets[f] = s
    figs = figures(os.path.join(output, "figures"), truth, all_clicks, sets, cfgs0[TRUNK],
                   scale=2.0 if setting.name == "quick" else 0.5)
    say(f"  figures: {', '.join(figs.values())}")

    say("Step 2/3: training")
    results = {}
    for i, f in enumerate(fractions, 1):
        cfgs = row_configs(setting, output, f, sets[f]["dataset"], opts)
        say(f"  click set {i}/{len(fractions)}: {f} % of the cells clicked")
        summary = run_rows(cfgs, trunk=TRUNK, hooks=DemoHooks(clock.t0))
        prune_checkpoints({"dirs": {k: c.OUTPUT_DIR for k, c in cfgs.items()}})
        metrics = {}
        for key in ROW_NAMES:  # in the order of the table
            entry = summary[key]
            m = entry.get("metrics") or {}
            metrics[key] = dict(m.get(setting.test_set) or next(iter(m.values()), {}))
            metrics[key]["branched_from_epoch"] = entry.get("branched_from_epoch")
        results[f] = metrics
        say(f"  {f} %: " + "; ".join(f"{ROW_NAMES[k]} AP50 {metrics[k].get('AP50', float('nan')):.1f}" for k in metrics))

    say("Step 3/3: report")
    out = {"setting": setting.name, "fractions": list(fractions), "plan": lines, "minutes": round(clock.elapsed() / 60, 1),
           "click_boxes": {str(f): s["quality"] for f, s in sets.items()},
           "rows": {str(f): results[f] for f in fractions}, "row_names": ROW_NAMES,
           "figures": {k: os.path.relpath(v, output) for k, v in figs.items()}}
    atomic_write_json(os.path.join(output, "results.json"), out)
    path = os.path.join(output, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(report_markdown(out, setting))
    say(f"Done in {clock.elapsed() / 60:.1f} min: {path}")
    return out


def report_markdown(results: dict, setting: Setting) -> str:
    """The comparison's tables: the boxes from the clicks against the truth, the rows on the test set."""
    from .report import METRICS, fmt, markdown_table

    q = results["click_boxes"]
    lines = [f"# Training from clicks ({setting.name})\n", f"{setting.why}. Took {results['minutes']} min.\n",
             "```", *results["plan"], "```\n", "## Boxes from the clicks against the true boxes\n",
             markdown_table([[f"{f} %", str(v["clicks"]), fmt(v["precision50"]), fmt(v["recall50"]), fmt(v["F1_50"]),
                              fmt(v["AP50"]), str(v["box_scale_vs_truth"]), str(v["median_cell_size"]),
                              str(v["cell_size_vs_true_median"]), fmt(v["cell_size_error_percent"]),
                              ", ".join(v["size_from"])] for f, v in q.items()],
                            ["clicked", "clicks", "precision@0.5", "recall@0.5", "F1@0.5", "AP50", "box / true size (w, h)",
                             "median cell size (px)", "cell size / true median", "its error %", "size from"]),
             "\nRecall is bounded by the share of cells clicked; precision and the size ratios measure the box rule: "
             "\"box / true size\" over boxes matched at IoU >= 0.3, \"cell size / true median\" the size each image "
             "used against the median size of its true cells (median over the images, and the median error).\n",
             f"## Rows on the test set ({setting.test_set})\n",
             markdown_table([[f"{f} %", results["row_names"][k]] + [fmt(m.get(x)) for x in METRICS]
                             for f, rows in results["rows"].items() for k, m in rows.items()],
                            ["clicked", "row"] + list(METRICS)),
             "\n![boxes from clicks](" + results["figures"]["boxes_from_clicks"] + ")\n",
             "![cut-paste images](" + results["figures"]["synthesized"] + ")\n"]
    return "\n".join(lines)

