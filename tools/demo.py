#!/usr/bin/env python
"""The SISSI demo on synthetic data: data -> weak labels -> three training rows -> report.

  python tools/demo.py --output output/demo            # `make demo`, ~12 min on 2 CPU cores
  python tools/demo.py --output /tmp/demo --quick      # a tiny run (tests), ~1-2 min
  python tools/demo.py --output output/demo SISSI.EPOCHS 12   # KEY VALUE overrides for every row

Steps (each prints what it does; training prints a line per epoch):

1. Synthetic data (``sissi_d2.data.synthetic``) in ``synthetic_root()`` (env SISSI_SYNTHETIC_ROOT,
   else <cache>/synthetic; ``--quick`` uses <root>_quick): fluorescent nuclei as the labelled
   source, phase-contrast fibroblasts as the target. Skipped when already there.
2. Weak labels of the target training images by classical image processing
   (``sissi_d2.weak_labels``) -> ``<root>/target_train_weak.json``; the same pipeline on the target
   TEST images gives the "weak labels as detections" row.
3. Registration of the ``synth_*`` data sets.
4. Training of the rows Weak-only, Baseline and A+SISSI(S) (``configs/demo/*.yaml``) sharing
   their common past (``sissi_d2.engine.rows.run_rows``): until its start rule fires every row
   trains on the same weak labels with the same seeded draws, so the early phase is trained once.
   Weak-only is the trunk (it records the memorisation curve and the source validation loss);
   A+SISSI(S) resumes from the trunk's checkpoint of the epoch ADELE fired, Baseline from the one
   where its source-validation-loss rule fires.
5. Evaluation on the target test set (COCO AP50 / AP75 / AP / AR, maxDets 400) and figures.
6. ``<output>/report.md`` (+ ``results.json``, ``figures/*.png``, ``log.txt``).

Re-running reuses what is finished (data, weak labels, trained rows, evaluations) and resumes a
row that was interrupted; other settings or data retrain the rows.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings

_T0 = time.time()  # the reported wall time includes the heavy imports below (torch, Detectron2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# OpenMP threads that spin while waiting cost twice the CPU time and more when the cores are
# shared with other work; passive waiting keeps a loaded machine usable (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Torch / Detectron2 0.6 emit many deprecation warnings on recent versions: not for the demo.
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402

import sissi_d2  # noqa: E402,F401  (compatibility patches before detectron2)

logger = logging.getLogger("sissi_d2.demo")

CONFIG_DIR = os.path.join(REPO, "configs", "demo")

# Data set sizes: images per split and their size (square).
FULL_DATA = dict(n_source_train=40, n_source_val=8, n_target_train=16, n_target_test=8, size=256)
QUICK_DATA = dict(n_source_train=8, n_source_val=2, n_target_train=4, n_target_test=2, size=128)

# --quick: the same rows, shrunk: 128 px, 5 epochs of 2 iterations, 2 TTA views, ADELE's
# horizon 3 so that it fires by epoch 3 and leaves at least one correction epoch.
QUICK_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "SOLVER.WARMUP_ITERS", "2",
    "SISSI.EPOCHS", "5", "SISSI.ADELE.HORIZON", "3", "SISSI.ADELE.MIN_POINTS", "3",
    "SISSI.SOURCE_VAL.PATIENCE", "1", "SISSI.SOURCE_VAL.MAX_IMAGES", "1",
    "SISSI.PSEUDO.SCALES", "(1.0,)", "SISSI.PSEUDO.FLIPS", "('none', 'hv')",
]

# (key, table name, config file). The Weak-only row is the trunk the others branch from.
ROWS = [
    ("weak_only", "Weak-only", "weak_only.yaml"),
    ("baseline", "Baseline", "baseline.yaml"),
    ("adele_sissi_s", "A+SISSI(S)", "adele_sissi_s.yaml"),
]
TRUNK = "weak_only"
ROW_NAMES = {k: n for k, n, _ in ROWS}
METRICS = ("AP50", "AP75", "AP", "AR")
TEST_SET = "synth_target_test"

# Weak labels of the synthetic target: the phase-contrast pipeline. Its defaults were tuned on
# Usiigaci (real phase contrast) and find no cell at all on some synthetic images (texture
# threshold too high for their shot noise): AP50 ~19 against the oracle masks of the demo's
# training images. Lower texture / body thresholds give AP50 ~50 (AR ~38): weak labels in the
# sense of the paper (many cells missed or cut, clusters in one box), not useless ones; the
# minimum area (at 640x480, i.e. ~9x9 px here) drops the boxes around debris specks (56 -> 7 of
# 334 boxes below 10x10 px, same AP), which would otherwise teach "debris is a cell".
WEAK_LABELS = {"pipeline": "phase", "cell_size": 1.0, "kwargs": {"texture_k": 2.5, "body_k": 1.5, "min_area": 400}}


# ---------------------------------------------------------------------------------------------
# console and log file
# ---------------------------------------------------------------------------------------------
class Clock:
    """Elapsed time since the demo started, and one-line progress messages."""

    def __init__(self, t0: float | None = None):
        self.t0 = time.time() if t0 is None else t0

    def elapsed(self) -> float:
        return time.time() - self.t0

    def stamp(self) -> str:
        s = int(self.elapsed())
        return f"{s // 60:02d}:{s % 60:02d}"

    def say(self, msg: str):
        logger.info(msg)


class _ConsoleFilter(logging.Filter):
    """On the console: the demo's and sissi_d2's INFO lines, everybody's warnings."""

    def filter(self, record):
        msg = record.getMessage()
        if msg.startswith("Cannot find the hook"):
            return False  # a branch row resumes from the trunk's checkpoint: expected
        if msg.startswith(("Distribution of instances", "Evaluation of ")):
            return False  # data set statistics; the demo prints its own results table
        if record.levelno >= logging.WARNING:
            return True
        return record.name.startswith("sissi_d2")


def setup_logging(output: str, clock: Clock):
    os.makedirs(output, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_sissi_demo", False):
            root.removeHandler(h)
    root.setLevel(logging.INFO)

    class _Fmt(logging.Formatter):
        def format(self, record):
            prefix = f"[demo {clock.stamp()}] "
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname}: {msg}"
            return prefix + msg

    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(_Fmt())
    console.addFilter(_ConsoleFilter())
    console._sissi_demo = True
    fileh = logging.FileHandler(os.path.join(output, "log.txt"), mode="a", encoding="utf-8")
    fileh.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    fileh._sissi_demo = True
    root.addHandler(console)
    root.addHandler(fileh)
    # Detectron2 logs through its own logger; INFO-enabled here, SISSITrainer does not install
    # Detectron2's console handler (its records go to log.txt through the root logger).
    for name in ("detectron2", "fvcore", "d2"):
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = True
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json(path, data):
    from sissi_d2.utils.atomic import atomic_write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, data)


def _key(path: str) -> str:
    return os.path.basename(path)


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


# ---------------------------------------------------------------------------------------------
# 1. data, 2. weak labels, 3. registration
# ---------------------------------------------------------------------------------------------
def prepare_data(root: str, sizes: dict, seed: int, clock: Clock) -> dict:
    from sissi_d2.data.synthetic import write_synthetic_dataset

    clock.say(f"Step 1/6: synthetic data in {root}")
    manifest = write_synthetic_dataset(
        root, sizes["n_source_train"], sizes["n_source_val"], sizes["n_target_train"], sizes["n_target_test"],
        size=(sizes["size"], sizes["size"]), seed=seed, progress=True,
    )
    cells = manifest.get("cells", {})
    clock.say("  " + ", ".join(f"{k}: {v} images" + (f" ({cells[k]} cells)" if k in cells else "")
                               for k, v in manifest["params"]["counts"].items()))
    return manifest


def weak_label_settings() -> dict:
    """The weak-label pipeline for the synthetic phase-contrast target (:data:`WEAK_LABELS`)."""
    from sissi_d2.weak_labels.pipelines import available_pipelines

    if WEAK_LABELS["pipeline"] not in available_pipelines():
        raise RuntimeError(f"weak-label pipeline {WEAK_LABELS['pipeline']!r} is not registered "
                           f"(available: {available_pipelines()})")
    return json.loads(json.dumps(WEAK_LABELS))


def _image_files(folder: str) -> list:
    return sorted(glob.glob(os.path.join(folder, "*_img.png")))


def make_weak_json(image_dir: str, out_json: str, settings: dict, desc: str) -> dict:
    """Weak labels of every ``*_img.png`` of ``image_dir`` as COCO json (file names relative to
    ``image_dir``, a score per box); returns {file basename: (boxes, scores)}."""
    from detectron2.structures import BoxMode

    from sissi_d2.data.datasets import save_records_as_coco
    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.utils.progress import progress
    from sissi_d2.weak_labels.pipelines import make_weak_labels

    records, out = [], {}
    for path in progress(_image_files(image_dir), desc=desc):
        image = read_bgr8(path)
        boxes, scores = make_weak_labels(image, settings["pipeline"], settings["cell_size"],
                                         **settings.get("kwargs", {}))
        out[_key(path)] = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))
        records.append({
            "file_name": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "annotations": [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                             "score": float(s)} for b, s in zip(boxes, scores)],
        })
    save_records_as_coco(records, out_json, image_root=image_dir)
    return out


def prepare_weak_labels(root: str, output: str, manifest: dict, clock: Clock) -> dict:
    from sissi_d2.data.builtin import SYNTH_WEAK_JSON
    from sissi_d2.evaluation.label_quality import read_label_json

    settings = weak_label_settings()
    clock.say(f"Step 2/6: weak labels ({settings['pipeline']} pipeline, cell size {settings['cell_size']}, "
              f"{settings['kwargs']})")
    stamp = {"settings": settings, "data": manifest["params"]}
    train_json = os.path.join(root, SYNTH_WEAK_JSON)
    train_meta = os.path.join(root, "target_train_weak.demo.json")
    meta = _read_json(train_meta)
    if os.path.isfile(train_json) and meta is not None and meta.get("stamp") == stamp:
        clock.say(f"  target train: up to date ({train_json})")
    else:
        if os.path.isfile(train_json):
            logger.warning(f"Replacing {train_json}: it was not made by the demo with these settings.")
        make_weak_json(os.path.join(root, "target", "train"), train_json, settings, "weak labels, target train")
        _write_json(train_meta, {"stamp": stamp})
        clock.say(f"  target train -> {train_json}")
    # the same pipeline on the test images: "weak labels as detections" on the test set
    test_json = os.path.join(output, "weak_labels", "target_test_weak.json")
    test_meta = _read_json(test_json + ".demo.json")
    if os.path.isfile(test_json) and test_meta is not None and test_meta.get("stamp") == stamp:
        test_weak = read_label_json(test_json)
    else:
        test_weak = make_weak_json(os.path.join(root, "target", "test"), test_json, settings, "weak labels, target test")
        _write_json(test_json + ".demo.json", {"stamp": stamp})
    return {"settings": stamp["settings"], "train_json": train_json, "train": read_label_json(train_json),
            "test_json": test_json, "test": test_weak, "hash": _file_hash(train_json)}


def register(root: str, clock: Clock) -> list:
    from sissi_d2.data.builtin import register_synthetic_datasets

    names = register_synthetic_datasets(root)
    clock.say(f"Step 3/6: registered {', '.join(names)}")
    if "synth_target_train_weak" not in names:
        raise RuntimeError(f"synth_target_train_weak was not registered: {root}/target_train_weak.json missing?")
    return names


# ---------------------------------------------------------------------------------------------
# 4. training (sissi_d2.engine.rows: a trunk and its branches) and 5. evaluation
# ---------------------------------------------------------------------------------------------
def row_config(row: str, output: str, opts: list, seed: int):
    from sissi_d2.setup import build_config

    cfg_file = os.path.join(CONFIG_DIR, dict((k, f) for k, _, f in ROWS)[row])
    return build_config(cfg_file, list(opts) + ["OUTPUT_DIR", os.path.join(output, "rows", row), "SEED", str(seed)])


def _cfg_fingerprint(cfg) -> str:
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    return _hash(c.dump())


def _progress_hook_class():
    from detectron2.engine import HookBase

    class DemoProgress(HookBase):
        """One console line per epoch (loss, labels in use, time, ETA), and one at most every
        ``every_s`` seconds within an epoch."""

        epochs_trained = 0  # over all rows of this run

        def __init__(self, row: str, clock: Clock, ipe: int, every_s: float = 30.0):
            self.row, self.clock, self.ipe, self.every_s = row, clock, ipe, every_s
            self.name = ROW_NAMES.get(row, row)

        def before_train(self):
            self.t_start = self.t_last = self.t_epoch = time.time()
            epochs = self.trainer.max_iter // self.ipe
            first = self.trainer.start_iter // self.ipe
            if first < epochs:
                self.clock.say(f"  {self.name}: training epochs {first}..{epochs - 1} ({self.ipe} iterations each)")

        def after_step(self):
            trainer = self.trainer
            it, now = trainer.iter, time.time()
            epoch, pos = divmod(it + 1, self.ipe)
            if pos == 0:
                epoch -= 1
                storage = trainer.storage
                loss = storage.history("total_loss").median(self.ipe) if "total_loss" in storage.histories() else math.nan
                hook = trainer.correction_hook
                labels = "weak labels" if hook.labels_epoch is None else f"pseudo-labels of epoch {hook.labels_epoch}"
                mode = trainer.cfg.SISSI.CLONING.MODE
                cloning = mode == "always" or (mode == "on_correction" and hook.labels_epoch is not None)
                left = trainer.max_iter - (it + 1)
                eta = (now - self.t_start) / max(it + 1 - trainer.start_iter, 1) * left
                self.clock.say(
                    f"  {self.name}: epoch {epoch}/{trainer.max_iter // self.ipe - 1} done in {now - self.t_epoch:.0f} s, "
                    f"loss {loss:.3f}, trained on {labels}{', synthetic-like images' if cloning else ''}"
                    + (f"; row ETA {eta / 60:.1f} min" if left else ""))
                self.t_epoch = self.t_last = now
                DemoProgress.epochs_trained += 1
            elif now - self.t_last > self.every_s:
                self.clock.say(f"  {self.name}: epoch {epoch}, iteration {pos}/{self.ipe}")
                self.t_last = now

    return DemoProgress


@contextlib.contextmanager
def _trainers_with_progress(clock: Clock):
    """Within the block, the trainers built by ``run_rows`` carry the demo's progress hook."""
    import sissi_d2.engine.trainer as trainer_module

    base = trainer_module.SISSITrainer
    hook_cls = _progress_hook_class()

    class DemoTrainer(base):
        def build_hooks(self):
            row = os.path.basename(os.path.normpath(self.cfg.OUTPUT_DIR))
            return super().build_hooks() + [hook_cls(row, clock, self.iters_per_epoch)]

    trainer_module.SISSITrainer = DemoTrainer
    try:
        yield hook_cls
    finally:
        trainer_module.SISSITrainer = base


def _trainer_hooks_state(ckpt_path: str) -> dict:
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return json.loads(json.dumps(state.get("trainer", {}).get("hooks", {})))


def train_rows(output: str, opts: list, seed: int, clock: Clock, data_stamp) -> dict:
    """Train and evaluate the rows with ``run_rows`` (the Weak-only row is the trunk)."""
    from sissi_d2.engine.rows import branch_epoch, run_rows

    cfgs = {row: row_config(row, output, opts, seed) for row, _, _ in ROWS}
    rows_dir = os.path.join(output, "rows")
    fingerprint = _hash([{r: _cfg_fingerprint(c) for r, c in cfgs.items()}, data_stamp])
    state_path = os.path.join(rows_dir, "demo_rows.json")
    state = _read_json(state_path, {})
    if state.get("fingerprint") != fingerprint and os.path.isdir(rows_dir):
        clock.say(f"  {rows_dir} was trained with other settings or data: training again")
        shutil.rmtree(rows_dir)
        state = {}
    _write_json(state_path, {"fingerprint": fingerprint, "complete": bool(state.get("complete"))})

    trunk_cfg = cfgs[TRUNK]
    epochs = int(trunk_cfg.SISSI.EPOCHS)
    clock.say(f"Step 4/6: training {len(ROWS)} rows: {epochs} epochs, {trunk_cfg.SISSI.IMS_PER_BATCH_SOURCE} source + "
              f"{trunk_cfg.SISSI.IMS_PER_BATCH_TARGET} target images per iteration")
    for row, name, _ in ROWS:
        if os.path.isfile(os.path.join(cfgs[row].OUTPUT_DIR, "model_final.pth")):
            clock.say(f"  {name}: trained earlier, reused")
    clock.say(f"  {ROW_NAMES[TRUNK]} is the trunk (trained from scratch, memorisation check and source validation "
              "loss recorded); the other rows branch from its checkpoints where their start rule fires")
    with _trainers_with_progress(clock) as hook_cls:
        summary = run_rows(cfgs, trunk=TRUNK)
    _write_json(state_path, {"fingerprint": fingerprint, "complete": True})

    trunk_dir = trunk_cfg.OUTPUT_DIR
    hooks_state = _trainer_hooks_state(os.path.join(trunk_dir, "model_final.pth"))
    plans = {row: branch_epoch(cfgs[row], hooks_state) for row in cfgs if row != TRUNK}
    mem = _read_json(os.path.join(trunk_dir, "sissi", "memorisation.json"), {})
    info = {
        "cfgs": cfgs, "dirs": {r: c.OUTPUT_DIR for r, c in cfgs.items()}, "summary": summary, "epochs": epochs,
        "plans": plans, "memorisation": mem, "adele_fired_epoch": mem.get("fired_epoch"),
        "source_val_history": hooks_state.get("SourceValLossHook", {}).get("history", []),
        "baseline_start_epoch": plans["baseline"][0] if plans["baseline"] else None,
        "baseline_best_epoch": plans["baseline"][1] if plans["baseline"] else None,
        "epochs_trained_now": hook_cls.epochs_trained,
    }
    return info


def gt_boxes(dataset: str) -> dict:
    from detectron2.data import DatasetCatalog

    from sissi_d2.evaluation.evaluator import records_ground_truth

    return records_ground_truth(DatasetCatalog.get(dataset))


def row_evaluation(row: str, info: dict) -> dict:
    """{"metrics": AP50/AP75/AP/AR, "predictions": {file: (boxes, scores)}} of a trained row."""
    entry = info["summary"][row]
    metrics = entry.get("metrics") or {}
    metrics = metrics.get(TEST_SET) or next(iter(metrics.values()), {})
    source_row = entry.get("same_as") or row
    path = os.path.join(info["dirs"][source_row], "inference", TEST_SET, "predictions.json")
    preds = {p["file"]: (np.asarray(p["boxes"], np.float32).reshape(-1, 4), np.asarray(p["scores"], np.float32))
             for p in (_read_json(path, []) or [])}
    return {"metrics": dict(metrics), "predictions": preds}


# ---------------------------------------------------------------------------------------------
# 6. figures and report
# ---------------------------------------------------------------------------------------------
def make_figures(output: str, root: str, info: dict, weak: dict, evals: dict, test_gt: dict, clock: Clock) -> dict:
    from sissi_d2.algorithms.cloning import make_synthetic_like
    from sissi_d2.config import BLUR_PRESETS
    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.evaluation.label_quality import read_label_json, snapshot_paths
    from sissi_d2.utils.visualize import draw_boxes, plot_memorisation_curve, save_png, side_by_side

    fig_dir = os.path.join(output, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    figs = {}
    adele = info["dirs"]["adele_sissi_s"]

    # memorisation curve (paper Fig. 7), recorded by the trunk
    mem_json = os.path.join(info["dirs"][TRUNK], "sissi", "memorisation.json")
    if os.path.isfile(mem_json):
        figs["memorisation"] = plot_memorisation_curve(
            mem_json, os.path.join(fig_dir, "memorisation_curve.png"),
            title="Trunk: AP50 vs the initial weak labels, ADELE fit and firing epoch")

    # one target training image: weak labels -> pseudo-labels per correction epoch (Fig. 8)
    train_gt = gt_boxes("synth_target_train_oracle")
    snaps = snapshot_paths(adele)
    if len(snaps) > 6:  # at most 6 epochs in the figure: the first, the last, evenly in between
        snaps = [snaps[i] for i in sorted(set(np.linspace(0, len(snaps) - 1, 6).round().astype(int)))]
    snap_boxes = [(epoch, {k: b for k, (b, _) in read_label_json(p).items()}) for epoch, p in snaps]
    files = {_key(p): p for p in _image_files(os.path.join(root, "target", "train"))}
    key = max(sorted(files), key=lambda k: (len(train_gt.get(k, [])), -sorted(files).index(k)))
    image = read_bgr8(files[key])
    weak_boxes = weak["train"].get(key, (np.zeros((0, 4)), None))[0]
    panels = [draw_boxes(image, train_gt.get(key), "green"), draw_boxes(image, weak_boxes, "yellow")]
    titles = [f"truth ({len(train_gt.get(key, []))})", f"weak labels ({len(weak_boxes)})"]
    for epoch, boxes in snap_boxes:
        b = boxes.get(key, np.zeros((0, 4)))
        panels.append(draw_boxes(image, b, "red"))
        titles.append(f"pseudo ep {epoch} ({len(b)})")
    grid = side_by_side(panels, titles, ncols=len(panels) if len(panels) <= 5 else 4)
    figs["pseudo_labels"] = save_png(os.path.join(fig_dir, "pseudo_labels.png"), grid)

    # synthetic-like image (Fig. 3)
    latest = snap_boxes[-1][1].get(key, weak_boxes) if snap_boxes else weak_boxes
    k_s, s_s = BLUR_PRESETS["strong"]
    k_w, s_w = BLUR_PRESETS["weak"]
    panels = [image, make_synthetic_like(image, weak_boxes, k_s, s_s), make_synthetic_like(image, latest, k_s, s_s),
              make_synthetic_like(image, latest, k_w, s_w)]
    src = f"pseudo ep {snap_boxes[-1][0]}" if snap_boxes else "weak labels"
    titles = ["target image", "strong blur, weak labels", f"strong blur, {src}", f"weak blur, {src}"]
    figs["synthetic_like"] = save_png(os.path.join(fig_dir, "synthetic_like.png"), side_by_side(panels, titles, ncols=4))

    # test images: truth (green); weak labels (yellow) and each row's top-k detections (red), k the
    # number of true cells of the image, so that rows with different score calibration compare
    test_files = {_key(p): p for p in _image_files(os.path.join(root, "target", "test"))}
    keys = sorted(test_files, key=lambda k: -len(test_gt.get(k, [])))[:2]
    panels, titles = [], []
    for k in keys:
        img = read_bgr8(test_files[k])
        n_true = len(test_gt.get(k, []))
        truth = draw_boxes(img, test_gt.get(k), "green")
        wb, _ = weak["test"].get(k, (np.zeros((0, 4)), np.zeros(0)))
        panels.append(draw_boxes(truth, wb, "yellow"))
        titles.append(f"weak labels ({len(wb)}), truth ({n_true})")
        for row in ("weak_only", "baseline", "adele_sissi_s"):
            b, sc = evals[row]["predictions"].get(k, (np.zeros((0, 4)), np.zeros(0)))
            top = np.argsort(-np.asarray(sc))[:n_true]
            panels.append(draw_boxes(truth, np.asarray(b).reshape(-1, 4)[top], "red"))
            titles.append(f"{ROW_NAMES[row]}, top {len(top)}")
    figs["test_predictions"] = save_png(os.path.join(fig_dir, "test_predictions.png"), side_by_side(panels, titles, ncols=4))
    clock.say(f"  figures in {fig_dir}")
    return figs


def results_table(rows: list) -> str:
    from tabulate import tabulate

    headers = ["row", "evaluated on", "start rule", "cloning", "correction from"] + list(METRICS)
    body = [[r["name"], r["on"], r["rule"], r["cloning"], r["start"]] + [_fmt(r["metrics"].get(m)) for m in METRICS]
            for r in rows]
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def label_quality(weak: dict, info: dict, max_dets: int) -> list:
    """Box metrics of the training labels against the oracle masks: the weak labels, then the
    A+SISSI(S) pseudo-labels of every correction epoch (what each epoch trained on)."""
    from sissi_d2.evaluation.box_metrics import coco_box_metrics
    from sissi_d2.evaluation.label_quality import pseudo_label_quality

    gt = gt_boxes("synth_target_train_oracle")
    out = [{"labels": "weak labels", "metrics": coco_box_metrics(gt, weak["train"], max_dets=max_dets)}]
    for q in pseudo_label_quality(gt, info["dirs"]["adele_sissi_s"], max_dets=max_dets):
        out.append({"labels": f"pseudo-labels, epoch {q.pop('epoch')}", "metrics": q})
    return out


def interpretation(table_rows: list, quality: list, info: dict) -> str:
    """A few sentences reading the table: did correction help, and were the pseudo-labels better
    than the weak labels they replaced?"""
    m = {r["key"]: r["metrics"] for r in table_rows}

    def ap50(key):
        v = m.get(key, {}).get("AP50")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    weak_only, base, adele = ap50("weak_only"), ap50("baseline"), ap50("adele_sissi_s")
    out = []
    if None not in (weak_only, adele):
        delta = adele - weak_only
        verdict = "above" if delta > 1 else "below" if delta < -1 else "level with"
        out.append(f"**Reading the table.** A+SISSI(S) ends {verdict} Weak-only ({adele:.1f} vs {weak_only:.1f} AP50)"
                   + (f" and the Baseline ends at {base:.1f}." if base is not None else "."))
    weak_q = quality[0]["metrics"].get("AP50") if quality else None
    pseudo = [q for q in quality[1:] if q["metrics"].get("AP50") is not None]
    if weak_q is not None and pseudo:
        best = max(pseudo, key=lambda q: q["metrics"]["AP50"])
        last = pseudo[-1]
        if best["metrics"]["AP50"] > weak_q:
            out.append(f"The pseudo-labels beat the weak labels they replaced (best: {best['labels']}, AP50 "
                       f"{best['metrics']['AP50']:.1f} vs {weak_q:.1f} against the oracle masks): the detector had "
                       "learnt the cells beyond its noisy labels before correction started, which is what SISSI "
                       "relies on.")
        else:
            out.append(f"The pseudo-labels stayed worse than the weak labels they replaced (AP50 "
                       f"{last['metrics']['AP50']:.1f} at the last epoch vs {weak_q:.1f} against the oracle masks): "
                       "when correction started the detector, trained from scratch for a few CPU minutes, was still "
                       "early in its training (its test AP50 is far below that of the weak labels themselves), and "
                       "self-training on its own detections made it worse. The method needs a detector that has "
                       "learnt more than its labels when correction starts, as in the paper's setting (an "
                       "ImageNet-pretrained R50 trained much longer); a longer run, e.g. `python tools/demo.py "
                       "SISSI.EPOCHS 40 SISSI.ADELE.HORIZON 36`, gives it more of that early-learning phase.")
    return " ".join(out)


def write_report(output: str, args, manifest: dict, weak: dict, info: dict, table_rows: list, quality: list,
                 figs: dict, wall: float, training_run) -> str:
    from tabulate import tabulate

    cfg = info["cfgs"][TRUNK]
    mem = info["memorisation"]
    fired, epochs = info["adele_fired_epoch"], info["epochs"]
    counts = manifest["params"]["counts"]
    cells = manifest.get("cells", {})
    size = manifest["params"]["size"]
    rel = {k: os.path.relpath(v, output) for k, v in figs.items()}
    L = ["# SISSI demo on synthetic data\n"]
    L.append(f"Command: `python tools/demo.py {' '.join(sys.argv[1:])}`  ")
    if not info["epochs_trained_now"]:
        timing = f"Wall time of this run: {wall / 60:.1f} min (everything reused)"
        if training_run:
            timing += f"; the run that trained the rows took **{training_run['wall_time_s'] / 60:.1f} min**"
    else:
        timing = f"Wall time: **{wall / 60:.1f} min** ({info['epochs_trained_now']} epochs trained)"
    L.append(timing + f"; seed {args.seed}{'; --quick' if args.quick else ''}.\n")

    L.append("## Data\n")
    L.append(f"Synthetic set ({size[0]}x{size[1]} px) in `{args.synthetic_root}`: source (fluorescent-like nuclei, "
             f"fully labelled) {counts['source_train']} training + {counts['source_val']} validation images; target "
             f"(phase-contrast-like fibroblasts) {counts['target_train']} training images with weak labels only and "
             f"{counts['target_test']} test images with true boxes. Cells: "
             + ", ".join(f"{k} {v}" for k, v in cells.items()) + ".\n")
    s = weak["settings"]
    L.append(f"Weak labels: the `{s['pipeline']}` pipeline of `sissi_d2.weak_labels` (cell size {s['cell_size']}, "
             f"{', '.join(f'{k}={v}' for k, v in s.get('kwargs', {}).items()) or 'defaults'}) on "
             f"every target image, written to `{weak['train_json']}` (the test images' weak labels, for the "
             f"\"weak labels as detections\" row, to `{os.path.relpath(weak['test_json'], output)}`). The pipeline's "
             "defaults were tuned on real phase-contrast images (Usiigaci); on these synthetic images they miss every "
             "cell of some images, hence the lower texture and body thresholds (see `WEAK_LABELS` in tools/demo.py).\n")

    L.append("## Results on the target test set\n")
    L.append("COCO box metrics in percent (maxDets 400) against the true boxes. \"Weak labels (as detections)\" scores "
             "the classical pipeline's boxes (with their scores) like a detector: on the test images, comparable with "
             "the trained rows, and on the training images against their oracle masks, i.e. the quality of what the "
             "rows were trained on.\n")
    L.append(results_table(table_rows) + "\n")

    L.append(interpretation(table_rows, quality, info) + "\n")
    L.append("## How the rows were trained: one shared early phase\n")
    L.append(f"`configs/demo/Base-Demo.yaml`: R18-FPN (GroupNorm, from scratch, 64-channel FPN), {size[0]} px, "
             f"{cfg.SISSI.IMS_PER_BATCH_SOURCE} source + {cfg.SISSI.IMS_PER_BATCH_TARGET} target images per iteration, "
             f"{epochs} epochs (one epoch = one pass over the target training images), SGD lr {cfg.SOLVER.BASE_LR}, "
             f"seed {cfg.SEED}. Until its start rule fires every row trains on the same weak labels with the same "
             "data order and the same random draws (seeded by epoch and iteration), so the rows are identical up to "
             "there and that past is trained once (`sissi_d2.engine.rows.run_rows`):\n")
    L.append(f"- **Weak-only** (`configs/demo/weak_only.yaml`) is the trunk: trained from scratch for all {epochs} "
             "epochs on the weak labels, recording both start signals (the ADELE memorisation check, "
             "`SISSI.ADELE.TRACK`, and the source validation loss) and a checkpoint per epoch.")
    plan_a, plan_b = info["plans"].get("adele_sissi_s"), info["plans"].get("baseline")
    if plan_a:
        L.append(f"- **A+SISSI(S)** (`adele_sissi_s.yaml`): ADELE fired at epoch {fired}, so the row is the trunk up "
                 f"to the end of epoch {plan_a[0] - 1} (its checkpoint is copied and resumed); from epoch {plan_a[0]} "
                 "on it trains on TTA+WBF pseudo-labels regenerated at every epoch start, on synthetic-like images "
                 "(strong blur).")
    else:
        L.append("- **A+SISSI(S)** (`adele_sissi_s.yaml`): ADELE did not fire early enough to leave a correction "
                 "epoch, so the row equals the trunk (not trained again).")
    if plan_b:
        L.append(f"- **Baseline** (`baseline.yaml`): the source validation loss was lowest at epoch {plan_b[1]} and "
                 f"had no new low for {info['cfgs']['baseline'].SISSI.SOURCE_VAL.PATIENCE} epochs at epoch {plan_b[0]}: "
                 f"the row is the trunk up to the end of epoch {plan_b[0] - 1}, restores the weights of epoch "
                 f"{plan_b[1]} and self-trains on pseudo-labels from epoch {plan_b[0]} on, without cloning.")
    else:
        L.append(f"- **Baseline** (`baseline.yaml`): the source validation loss never went "
                 f"{info['cfgs']['baseline'].SISSI.SOURCE_VAL.PATIENCE} epochs without a new low, so its rule never "
                 "fired: the row equals the trunk (not trained again).")
    trained = epochs + sum(epochs - p[0] for p in (plan_a, plan_b) if p)
    L.append(f"\nEpochs trained: {trained} instead of {3 * epochs} for three separate runs. Source validation loss per "
             "epoch start (trunk): " + ", ".join(f"{int(e)}: {v:.3f}" for e, v in info["source_val_history"]) + ".\n")

    L.append("## Memorisation detection (ADELE, paper Fig. 7)\n")
    if mem:
        ap = ", ".join(f"{e}: {100 * v:.1f}" for e, v in zip(mem.get("epochs", []), mem.get("ap50", [])))
        ue = ", ".join(f"{e}: {u if u is not None else '-'}" for e, u in zip(mem.get("epochs", []), mem.get("update_epochs", [])))
        L.append(f"AP50 (%) of plain inference on the target training images against their initial weak labels, at "
                 f"each epoch start: {ap}. Estimated update epoch after each check: {ue}. ADELE's horizon "
                 f"(n_epoch) {mem.get('horizon')}, threshold {mem.get('threshold')}, at least {mem.get('min_points')} "
                 "points per fit. "
                 + (f"**Memorisation detected at epoch {fired}**: that epoch still trains on the weak labels, the "
                    f"first pseudo-labels are made at the start of epoch {fired + 1}." if fired is not None
                    else "**Memorisation was not detected.**")
                 + (" The estimate sat at the horizon: the curve had not visibly decelerated yet, so the rule fired "
                    "because the horizon was reached (why the demo's horizon is shorter than its run: "
                    "`configs/demo/Base-Demo.yaml`)." if fired is not None and mem.get("update_epochs")
                    and mem["update_epochs"][-1] == mem.get("horizon") else "") + "\n")
    if "memorisation" in rel:
        L.append(f"![memorisation curve]({rel['memorisation']})\n")

    L.append("## Training labels over the correction epochs (paper Fig. 8)\n")
    L.append("Quality of the labels each A+SISSI(S) epoch trained on, against the oracle masks of the target "
             "training images (never used in training):\n")
    L.append(tabulate([[q["labels"], q["metrics"].get("num_pred")] + [_fmt(q["metrics"].get(m)) for m in METRICS]
                       for q in quality], headers=["labels", "#boxes"] + list(METRICS), tablefmt="pipe",
                      disable_numparse=True) + "\n")
    L.append("One target training image: true boxes (green), weak labels (yellow) and the pseudo-labels (red) made "
             "at the start of each correction epoch.\n")
    L.append(f"![pseudo-labels]({rel['pseudo_labels']})\n")

    L.append("## Synthetic-like images (paper Fig. 3)\n")
    L.append("The same image with its background blurred and the labelled boxes seamlessly cloned back "
             "(`sissi_d2.algorithms.cloning`): unlabelled cells fade into the background instead of being learnt as "
             "background.\n")
    L.append(f"![synthetic-like]({rel['synthetic_like']})\n")

    L.append("## Test images\n")
    L.append("True boxes in green; the weak labels (yellow) and each row's highest-scoring detections (red), as "
             "many as the image has true cells.\n")
    L.append(f"![test predictions]({rel['test_predictions']})\n")

    L.append("## Caveats\n")
    L.append("A demo, not a benchmark: a few dozen small synthetic images, a small detector trained from scratch for "
             "minutes on a CPU, one seed. The numbers show the method working end to end and are noisy; they do not "
             "reproduce the paper's Table 1.\n")
    L.append("Artifacts: `results.json` (all numbers), `log.txt` (full log), `rows/<row>/` (model_final.pth, "
             "metrics, `sissi/memorisation.json`, `sissi/pseudo_labels/epoch_NNNN.json`).\n")
    path = os.path.join(output, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(L))
    os.replace(path + ".tmp", path)
    return path


def prune_checkpoints(info: dict):
    """Keep model_final.pth of each row; drop the per-epoch checkpoints (~100 MB each)."""
    for d in info["dirs"].values():
        if not os.path.isfile(os.path.join(d, "model_final.pth")):
            continue
        for p in glob.glob(os.path.join(d, "model_0*.pth")):
            os.remove(p)
        with open(os.path.join(d, "last_checkpoint"), "w") as f:
            f.write("model_final.pth")


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo", help="report, figures, rows (default: output/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (128 px, a few images and epochs): for tests")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--synthetic-root", default=None,
                   help="synthetic data folder (default: synthetic_root(), i.e. env SISSI_SYNTHETIC_ROOT or "
                        "<cache>/synthetic; with --quick <that>_quick)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every epoch's checkpoint (the branch points); default: only model_final.pth")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides for every row, e.g. SISSI.EPOCHS 12")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock(_T0)
    output = os.path.abspath(args.output)
    setup_logging(output, clock)
    from sissi_d2.setup import synthetic_root

    if args.synthetic_root is None:
        args.synthetic_root = synthetic_root() + ("_quick" if args.quick else "")
    root = os.path.abspath(args.synthetic_root)
    opts = (QUICK_OPTS if args.quick else []) + [o for o in args.opts if o != "--"]
    if len(opts) % 2:
        raise SystemExit(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    sizes = QUICK_DATA if args.quick else FULL_DATA
    resumed = os.path.isfile(os.path.join(output, "results.json"))
    clock.say(f"SISSI demo{' (quick)' if args.quick else ''}: output {output}")

    manifest = prepare_data(root, sizes, args.seed, clock)
    weak = prepare_weak_labels(root, output, manifest, clock)
    register(root, clock)
    info = train_rows(output, opts, args.seed, clock, [manifest["params"], weak["hash"]])

    clock.say("Step 5/6: results on the target test set")
    from sissi_d2.evaluation.box_metrics import coco_box_metrics

    max_dets = int(info["cfgs"][TRUNK].SISSI.EVAL.MAX_DETS)
    test_gt = gt_boxes(TEST_SET)
    evals = {row: row_evaluation(row, info) for row, _, _ in ROWS}
    weak_test = coco_box_metrics(test_gt, weak["test"], max_dets=max_dets)
    weak_train = coco_box_metrics(gt_boxes("synth_target_train_oracle"), weak["train"], max_dets=max_dets)
    fired = info["adele_fired_epoch"]
    plan_a, plan_b = info["plans"].get("adele_sissi_s"), info["plans"].get("baseline")
    table_rows = [
        {"key": "weak_labels_train", "name": "Weak labels (as detections)", "on": "target train (oracle)",
         "rule": "-", "cloning": "-", "start": "-", "metrics": weak_train},
        {"key": "weak_labels_test", "name": "Weak labels (as detections)", "on": "target test", "rule": "-",
         "cloning": "-", "start": "-", "metrics": weak_test},
        {"key": "weak_only", "name": "Weak-only", "on": "target test", "rule": "never", "cloning": "never",
         "start": "-", "metrics": evals["weak_only"]["metrics"]},
        {"key": "baseline", "name": "Baseline", "on": "target test", "rule": "source val loss", "cloning": "never",
         "start": f"epoch {plan_b[0]}" if plan_b else "never", "metrics": evals["baseline"]["metrics"]},
        {"key": "adele_sissi_s", "name": "A+SISSI(S)", "on": "target test", "rule": "ADELE", "cloning": "strong",
         "start": f"epoch {plan_a[0]}" if plan_a else "never", "metrics": evals["adele_sissi_s"]["metrics"]},
    ]
    table = results_table(table_rows)
    print("\n" + table + "\n", flush=True)
    quality = label_quality(weak, info, max_dets)

    clock.say("Step 6/6: figures and report")
    figs = make_figures(output, root, info, weak, evals, test_gt, clock)
    if not args.keep_checkpoints:
        prune_checkpoints(info)
    wall = clock.elapsed()
    previous = _read_json(os.path.join(output, "results.json"), {}) if resumed else {}
    if info["epochs_trained_now"]:
        training_run = {"wall_time_s": wall, "epochs_trained": info["epochs_trained_now"]}
    else:
        training_run = previous.get("training_run")
    results = {
        "wall_time_s": wall, "training_run": training_run, "quick": args.quick, "seed": args.seed, "synthetic_root": root,
        "data": manifest, "weak_label_settings": weak["settings"],
        "rows": {r["key"]: {"name": r["name"], "evaluated_on": r["on"], "correction_from": r["start"],
                            **{m: r["metrics"].get(m) for m in METRICS}} for r in table_rows},
        "training_label_quality": [{"labels": q["labels"], **{m: q["metrics"].get(m) for m in METRICS},
                                    "num_boxes": q["metrics"].get("num_pred")} for q in quality],
        "adele_fired_epoch": fired, "memorisation": info["memorisation"],
        "baseline_start_epoch": plan_b[0] if plan_b else None, "baseline_best_epoch": plan_b[1] if plan_b else None,
        "source_val_history": info["source_val_history"],
        "branches": {row: {"branched_from_epoch": e.get("branched_from_epoch"), "same_as": e.get("same_as")}
                     for row, e in info["summary"].items()},
        "epochs": info["epochs"],
        "figures": {k: os.path.relpath(v, output) for k, v in figs.items()},
    }
    _write_json(os.path.join(output, "results.json"), results)
    report = write_report(output, args, manifest, weak, info, table_rows, quality, figs, wall, training_run)
    clock.say(f"Done in {wall / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
