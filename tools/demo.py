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
4. Training of the rows Weak-only, Baseline and A+SISSI(S) (``configs/demo/*.yaml``), sharing
   their common past: all rows train on the same weak labels with the same seed until their start
   rule fires, so the early phase is trained once. The A+SISSI(S) row is the trunk; Weak-only
   continues from the trunk's checkpoint of the epoch ADELE fired (the last weak-label epoch);
   Baseline continues from the checkpoint where its source-validation-loss rule fires, taken from
   the trunk or from Weak-only (both are pure weak-label training up to there).
5. Evaluation on the target test set (COCO AP50 / AP75 / AP / AR, maxDets 400) and figures.
6. ``<output>/report.md`` (+ ``results.json``, ``figures/*.png``, ``log.txt``).

Re-running reuses what is finished (data, weak labels, trained rows, evaluations) and resumes a
row that was interrupted; a changed configuration retrains the rows it affects.
"""
from __future__ import annotations

import argparse
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

# --quick: the same rows, shrunk: 128 px, 6 epochs of 2 iterations, 2 TTA views.
QUICK_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "SOLVER.WARMUP_ITERS", "2",
    "SISSI.EPOCHS", "6", "SISSI.ADELE.HORIZON", "3", "SISSI.ADELE.MIN_POINTS", "3",
    "SISSI.SOURCE_VAL.PATIENCE", "1", "SISSI.SOURCE_VAL.MAX_IMAGES", "2",
    "SISSI.PSEUDO.SCALES", "(1.0,)", "SISSI.PSEUDO.FLIPS", "('none', 'hv')",
]

# (key, table name, config file). The first row is the trunk the others branch from.
ROWS = [
    ("adele_sissi_s", "A+SISSI(S)", "adele_sissi_s.yaml"),
    ("weak_only", "Weak-only", "weak_only.yaml"),
    ("baseline", "Baseline", "baseline.yaml"),
]
ROW_NAMES = {k: n for k, n, _ in ROWS}
METRICS = ("AP50", "AP75", "AP", "AR")
TEST_SET = "synth_target_test"


# ---------------------------------------------------------------------------------------------
# console and log file
# ---------------------------------------------------------------------------------------------
class Clock:
    """Elapsed time since the demo started, and one-line progress messages."""

    def __init__(self):
        self.t0 = time.time()

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
        if msg.startswith("Distribution of instances"):
            return False
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


def weak_label_settings(size: int) -> dict:
    """The weak-label pipeline for the synthetic phase-contrast target, and its cell size.

    The paper's three pipelines were tuned for CellLab brightfield; the phase-contrast pipeline
    ("phase") is used when it is registered.
    """
    from sissi_d2.weak_labels.pipelines import available_pipelines

    names = available_pipelines()
    pipeline = "phase" if "phase" in names else "inhibited"
    return {"pipeline": pipeline, "cell_size": 1.0}


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
        boxes, scores = make_weak_labels(image, settings["pipeline"], settings["cell_size"])
        out[_key(path)] = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32))
        records.append({
            "file_name": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
            "annotations": [{"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                             "score": float(s)} for b, s in zip(boxes, scores)],
        })
    save_records_as_coco(records, out_json, image_root=image_dir)
    return out


def load_weak_json(path: str) -> dict:
    data = _read_json(path)
    by_id = {im["id"]: _key(im["file_name"]) for im in data["images"]}
    out = {k: ([], []) for k in by_id.values()}
    for a in data.get("annotations", []):
        x, y, w, h = a["bbox"]
        k = by_id[a["image_id"]]
        out[k][0].append([x, y, x + w, y + h])
        out[k][1].append(float(a.get("score", 1.0)))
    return {k: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32)) for k, (b, s) in out.items()}


def prepare_weak_labels(root: str, output: str, manifest: dict, size: int, clock: Clock) -> dict:
    from sissi_d2.data.builtin import SYNTH_WEAK_JSON

    settings = weak_label_settings(size)
    clock.say(f"Step 2/6: weak labels ({settings['pipeline']} pipeline, cell size {settings['cell_size']})")
    stamp = {"settings": settings, "data": manifest["params"]}
    train_json = os.path.join(root, SYNTH_WEAK_JSON)
    train_meta = os.path.join(root, "target_train_weak.demo.json")
    meta = _read_json(train_meta)
    if os.path.isfile(train_json) and (meta is None or meta.get("stamp") == stamp):
        if meta is None:
            clock.say(f"  using the existing {train_json} (not written by the demo)")
            stamp = {"settings": {"pipeline": "existing file", "cell_size": None}, "data": manifest["params"]}
        else:
            clock.say(f"  target train: up to date ({train_json})")
    else:
        make_weak_json(os.path.join(root, "target", "train"), train_json, settings, "weak labels, target train")
        _write_json(train_meta, {"stamp": stamp})
        clock.say(f"  target train -> {train_json}")
    # the same pipeline on the test images: "weak labels as detections" on the test set
    test_json = os.path.join(output, "weak_labels", "target_test_weak.json")
    test_meta = _read_json(test_json + ".demo.json")
    if os.path.isfile(test_json) and test_meta is not None and test_meta.get("stamp") == stamp:
        test_weak = load_weak_json(test_json)
    else:
        test_weak = make_weak_json(os.path.join(root, "target", "test"), test_json, settings, "weak labels, target test")
        _write_json(test_json + ".demo.json", {"stamp": stamp})
    return {"settings": stamp["settings"], "train_json": train_json, "train": load_weak_json(train_json),
            "test_json": test_json, "test": test_weak, "hash": _file_hash(train_json)}


def register(root: str, clock: Clock) -> list:
    from sissi_d2.data.builtin import register_synthetic_datasets

    names = register_synthetic_datasets(root)
    clock.say(f"Step 3/6: registered {', '.join(names)}")
    if "synth_target_train_weak" not in names:
        raise RuntimeError(f"synth_target_train_weak was not registered: {root}/target_train_weak.json missing?")
    return names


# ---------------------------------------------------------------------------------------------
# 4. training
# ---------------------------------------------------------------------------------------------
def row_config(row: str, output: str, opts: list, seed: int):
    from sissi_d2.setup import build_config

    cfg_file = os.path.join(CONFIG_DIR, dict((k, f) for k, _, f in ROWS)[row])
    # DATASETS.TEST is evaluated by the demo itself after training (step 5), not twice.
    return build_config(cfg_file, list(opts) + ["OUTPUT_DIR", os.path.join(output, "rows", row),
                                                "SEED", str(seed), "DATASETS.TEST", "()"])


def _cfg_fingerprint(cfg) -> str:
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    return _hash(c.dump())


def _progress_hook_class():
    from detectron2.engine import HookBase

    class DemoProgress(HookBase):
        """One console line per epoch (loss, labels in use, time, ETA), one at most every
        ``every_s`` seconds within an epoch."""

        def __init__(self, row: str, clock: Clock, ipe: int, every_s: float = 30.0):
            self.row, self.clock, self.ipe, self.every_s = row, clock, ipe, every_s

        def before_train(self):
            self.t_start = self.t_last = self.t_epoch = time.time()
            epochs = self.trainer.max_iter // self.ipe
            first_epoch = self.trainer.start_iter // self.ipe
            self.clock.say(f"  {ROW_NAMES[self.row]}: training epochs {first_epoch}..{epochs - 1} "
                           f"({self.ipe} iterations each)")

        def after_step(self):
            it = self.trainer.iter
            now = time.time()
            epoch, pos = divmod(it + 1, self.ipe)
            if pos == 0:
                epoch -= 1
                hist = self.trainer.storage.history("total_loss") if "total_loss" in self.trainer.storage.histories() else None
                loss = hist.median(self.ipe) if hist is not None else float("nan")
                hook = self.trainer.correction_hook
                labels = "weak labels" if hook.labels_epoch is None else f"pseudo-labels of epoch {hook.labels_epoch}"
                mode = self.trainer.cfg.SISSI.CLONING.MODE
                on = mode == "always" or (mode == "on_correction" and hook.labels_epoch is not None)
                cloning = ", synthetic-like images" if on else ""
                done = it + 1 - self.trainer.start_iter
                left = self.trainer.max_iter - (it + 1)
                eta = (now - self.t_start) / max(done, 1) * left
                self.clock.say(
                    f"  {ROW_NAMES[self.row]}: epoch {epoch}/{self.trainer.max_iter // self.ipe - 1} done "
                    f"in {now - self.t_epoch:.0f} s, loss {loss:.3f}, trained on {labels}{cloning}"
                    + (f", row ETA {eta / 60:.1f} min" if left else "")
                )
                self.t_epoch = self.t_last = now
            elif now - self.t_last > self.every_s:
                self.clock.say(f"  {ROW_NAMES[self.row]}: epoch {epoch}, iteration {pos}/{self.ipe}")
                self.t_last = now

    return DemoProgress


def _row_state_path(row_dir):
    return os.path.join(row_dir, "demo_row.json")


def _row_ready(row_dir: str, fingerprint: str) -> bool:
    """Whether the row folder may be reused (finished or resumable) for this fingerprint; a stale
    folder (other configuration, data or parent) is removed."""
    state = _read_json(_row_state_path(row_dir))
    if state is not None and state.get("fingerprint") == fingerprint:
        return True
    if os.path.isdir(row_dir):
        logger.info(f"  {row_dir}: made with other settings, training it again")
        shutil.rmtree(row_dir)
    return False


def _row_done(row_dir: str, fingerprint: str) -> bool:
    state = _read_json(_row_state_path(row_dir))
    return (state is not None and state.get("fingerprint") == fingerprint and state.get("done")
            and os.path.isfile(os.path.join(row_dir, "model_final.pth")))


def _link_or_copy(src: str, dst: str):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ckpt_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


def branch_row(parent_dir: str, row_dir: str, epoch_end: int, ipe: int):
    """Start ``row_dir`` from the parent's checkpoint at the end of epoch ``epoch_end``."""
    it = (epoch_end + 1) * ipe - 1
    src = os.path.join(parent_dir, _ckpt_name(it))
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{src} is missing: the branch point of {row_dir}. Delete {row_dir} and rerun.")
    _link_or_copy(src, os.path.join(row_dir, _ckpt_name(it)))
    with open(os.path.join(row_dir, "last_checkpoint"), "w") as f:
        f.write(_ckpt_name(it))


def train_row(row: str, cfg, clock: Clock, fingerprint: str, info: dict):
    """Train (or resume) one row in-process; writes demo_row.json when done."""
    import gc

    from detectron2.utils.env import seed_all_rng

    from sissi_d2.engine import SISSITrainer

    row_dir = cfg.OUTPUT_DIR
    os.makedirs(row_dir, exist_ok=True)
    _write_json(_row_state_path(row_dir), {"fingerprint": fingerprint, "done": False, **info})
    seed_all_rng(int(cfg.SEED))
    trainer = SISSITrainer(cfg)
    trainer.register_hooks([_progress_hook_class()(row, clock, trainer.iters_per_epoch)])
    trainer.resume_or_load(resume=True)
    if trainer.start_iter < trainer.max_iter:
        trainer.train()
    elif not os.path.isfile(os.path.join(row_dir, "model_final.pth")):
        # branched at the very last epoch: nothing left to train
        last = trainer.checkpointer.get_checkpoint_file()
        _link_or_copy(last, os.path.join(row_dir, "model_final.pth"))
    del trainer
    gc.collect()
    _write_json(_row_state_path(row_dir), {"fingerprint": fingerprint, "done": True, **info})


def source_val_start(history, patience: int):
    """Replay the source-validation-loss start rule on a loss history [[epoch, loss], ...]:
    (firing epoch or None, best epoch at that time)."""
    best_e, best = None, math.inf
    for e, loss in sorted((int(e), float(v)) for e, v in history):
        if loss < best:
            best, best_e = loss, e
        if best_e is not None and e - best_e >= patience:
            return e, best_e
    return None, best_e


def _hook_state(ckpt_path: str, hook: str):
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return state.get("trainer", {}).get("hooks", {}).get(hook)


def train_rows(output: str, opts: list, seed: int, clock: Clock, data_stamp) -> dict:
    """The three rows with their shared past; returns the branch information for the report."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.two_source import iters_per_epoch

    cfgs = {row: row_config(row, output, opts, seed) for row, _, _ in ROWS}
    dirs = {row: cfgs[row].OUTPUT_DIR for row in cfgs}
    trunk_cfg = cfgs["adele_sissi_s"]
    n_target = len(DatasetCatalog.get(trunk_cfg.SISSI.TARGET_DATASETS[0]))
    ipe = iters_per_epoch(n_target, trunk_cfg.SISSI.IMS_PER_BATCH_TARGET)
    epochs = int(trunk_cfg.SISSI.EPOCHS)
    info = {"iters_per_epoch": ipe, "epochs": epochs}
    clock.say(f"Step 4/6: training {len(ROWS)} rows, {epochs} epochs of {ipe} iterations "
              f"({trunk_cfg.SISSI.IMS_PER_BATCH_SOURCE} source + {trunk_cfg.SISSI.IMS_PER_BATCH_TARGET} target images each)")

    # -- the trunk: A+SISSI(S), from scratch
    fp_trunk = _hash([_cfg_fingerprint(trunk_cfg), data_stamp])
    if _row_done(dirs["adele_sissi_s"], fp_trunk):
        clock.say("  A+SISSI(S) (trunk): finished earlier, reused")
    else:
        _row_ready(dirs["adele_sissi_s"], fp_trunk)
        clock.say("  A+SISSI(S) (trunk): trains from scratch; the other rows share its weak-label epochs")
        train_row("adele_sissi_s", trunk_cfg, clock, fp_trunk, {"branch": None})
    mem = _read_json(os.path.join(dirs["adele_sissi_s"], "sissi", "memorisation.json"), {})
    fired = mem.get("fired_epoch")
    info["adele_fired_epoch"] = fired
    last_weak_trunk = epochs - 1 if fired is None else min(fired, epochs - 1)
    if fired is None:
        clock.say("  ADELE did not fire: the A+SISSI(S) row trained on weak labels throughout")
    else:
        clock.say(f"  ADELE fired at epoch {fired}: pseudo-labels + synthetic-like images from epoch {fired + 1}")

    # -- Weak-only: the trunk's weak-label epochs 0..last_weak_trunk, then on its own
    fp_weak = _hash([_cfg_fingerprint(cfgs["weak_only"]), fp_trunk, last_weak_trunk])
    weak_branch = {"parent": "adele_sissi_s", "after_epoch": last_weak_trunk}
    if _row_done(dirs["weak_only"], fp_weak):
        clock.say("  Weak-only: finished earlier, reused")
    else:
        if not _row_ready(dirs["weak_only"], fp_weak) or not os.path.isfile(
                os.path.join(dirs["weak_only"], "last_checkpoint")):
            branch_row(dirs["adele_sissi_s"], dirs["weak_only"], last_weak_trunk, ipe)
        clock.say(f"  Weak-only: continues from the trunk's checkpoint after epoch {last_weak_trunk} "
                  f"(epochs 0..{last_weak_trunk} shared)")
        train_row("weak_only", cfgs["weak_only"], clock, fp_weak, {"branch": weak_branch})
    info["weak_only_branch"] = weak_branch

    # -- Baseline: the weak-label history of both decides where its rule fires
    history = (_hook_state(os.path.join(dirs["weak_only"], "model_final.pth"), "SourceValLossHook") or {}).get("history", [])
    patience = int(cfgs["baseline"].SISSI.SOURCE_VAL.PATIENCE)
    start, best = source_val_start(history, patience)
    info["source_val_history"] = history
    info["baseline_start_epoch"], info["baseline_best_epoch"] = start, best

    def weak_checkpoint(epoch_end: int) -> tuple:
        """(folder, path) of the weak-label checkpoint at the end of ``epoch_end``."""
        folder = dirs["adele_sissi_s"] if epoch_end <= last_weak_trunk else dirs["weak_only"]
        return folder, os.path.join(folder, _ckpt_name((epoch_end + 1) * ipe - 1))

    fp_base = _hash([_cfg_fingerprint(cfgs["baseline"]), fp_weak, start, best])
    if start is None:
        clock.say(f"  Baseline: the source validation loss improved within every {patience} epochs: the rule "
                  "never fired, so Baseline = Weak-only")
        info["baseline_branch"] = {"same_as": "weak_only"}
    elif _row_done(dirs["baseline"], fp_base):
        clock.say("  Baseline: finished earlier, reused")
        info["baseline_branch"] = _read_json(_row_state_path(dirs["baseline"]), {}).get("branch")
    else:
        parent_dir, _ = weak_checkpoint(start - 1)
        parent = "adele_sissi_s" if parent_dir == dirs["adele_sissi_s"] else "weak_only"
        branch = {"parent": parent, "after_epoch": start - 1, "best_epoch": best}
        if not _row_ready(dirs["baseline"], fp_base) or not os.path.isfile(
                os.path.join(dirs["baseline"], "last_checkpoint")):
            branch_row(parent_dir, dirs["baseline"], start - 1, ipe)
            _write_best_weights(dirs, best, weak_checkpoint, os.path.join(dirs["baseline"], "sissi"))
        clock.say(f"  Baseline: lowest source validation loss at epoch {best}, no new low for {patience} "
                  f"epochs -> continues from the {ROW_NAMES[parent]} checkpoint after epoch {start - 1}; "
                  f"correction starts at epoch {start} from the epoch-{best} weights")
        train_row("baseline", cfgs["baseline"], clock, fp_base, {"branch": branch})
        info["baseline_branch"] = branch
    info["fingerprints"] = {"adele_sissi_s": fp_trunk, "weak_only": fp_weak, "baseline": fp_base}
    info["dirs"] = dirs
    info["cfgs"] = cfgs
    return info


def _write_best_weights(dirs, best: int, weak_checkpoint, sissi_dir: str):
    """``best_source_val.pth`` of the Baseline branch: the weights at the start of epoch ``best``."""
    import torch

    from sissi_d2.utils.atomic import atomic_open

    os.makedirs(sissi_dir, exist_ok=True)
    dst = os.path.join(sissi_dir, "best_source_val.pth")
    if best == 0:
        src = os.path.join(dirs["adele_sissi_s"], "sissi", "best_source_val.pth")
        state = torch.load(src, map_location="cpu", weights_only=True)
        if int(state.get("epoch", -1)) != 0:
            raise RuntimeError("the untrained model had the lowest source validation loss and its weights are gone; "
                               "raise SISSI.SOURCE_VAL.PATIENCE or the learning rate")
        shutil.copy2(src, dst)
        return
    _, path = weak_checkpoint(best - 1)
    state = torch.load(path, map_location="cpu", weights_only=True)
    with atomic_open(dst, "wb") as f:
        torch.save({"model": state["model"], "epoch": int(best)}, f)


# ---------------------------------------------------------------------------------------------
# 5. evaluation
# ---------------------------------------------------------------------------------------------
def gt_boxes(dataset: str) -> dict:
    from detectron2.data import DatasetCatalog

    from sissi_d2.evaluation.evaluator import records_ground_truth

    return records_ground_truth(DatasetCatalog.get(dataset))


def evaluate_row(row: str, cfg, row_dir: str, fingerprint: str, test_gt: dict, clock: Clock) -> dict:
    """AP50/AP75/AP/AR of ``model_final.pth`` on the test set; cached in demo_eval.json."""
    from detectron2.data import DatasetCatalog

    from sissi_d2.engine import SISSITrainer
    from sissi_d2.engine.checkpoint import load_weights
    from sissi_d2.engine.inference import RecordPredictor
    from sissi_d2.evaluation.box_metrics import coco_box_metrics

    path = os.path.join(row_dir, "demo_eval.json")
    cached = _read_json(path)
    if cached is not None and cached.get("fingerprint") == fingerprint:
        return cached
    model = SISSITrainer.build_model(cfg)
    load_weights(model, os.path.join(row_dir, "model_final.pth"))
    preds = RecordPredictor(cfg).plain_predictions(model, DatasetCatalog.get(TEST_SET), desc=f"test, {ROW_NAMES[row]}")
    metrics = coco_box_metrics(test_gt, preds, max_dets=int(cfg.SISSI.EVAL.MAX_DETS))
    result = {"fingerprint": fingerprint, "metrics": metrics,
              "predictions": {k: [b.tolist(), s.tolist()] for k, (b, s) in preds.items()}}
    _write_json(path, result)
    return result


# ---------------------------------------------------------------------------------------------
# 6. figures and report
# ---------------------------------------------------------------------------------------------
def _snapshot_boxes(path: str) -> dict:
    data = _read_json(path)
    by_id = {im["id"]: _key(im["file_name"]) for im in data["images"]}
    out = {k: [] for k in by_id.values()}
    for a in data.get("annotations", []):
        x, y, w, h = a["bbox"]
        out[by_id[a["image_id"]]].append([x, y, x + w, y + h])
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in out.items()}


def make_figures(output: str, root: str, info: dict, weak: dict, evals: dict, test_gt: dict, clock: Clock) -> dict:
    from sissi_d2.algorithms.cloning import make_synthetic_like
    from sissi_d2.config import BLUR_PRESETS
    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.utils.visualize import draw_boxes, plot_memorisation_curve, save_png, side_by_side

    fig_dir = os.path.join(output, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    figs = {}
    trunk = info["dirs"]["adele_sissi_s"]

    # memorisation curve (paper Fig. 7)
    mem_json = os.path.join(trunk, "sissi", "memorisation.json")
    if os.path.isfile(mem_json):
        figs["memorisation"] = plot_memorisation_curve(
            mem_json, os.path.join(fig_dir, "memorisation_curve.png"),
            title="A+SISSI(S): AP50 of the model vs the initial weak labels")

    # one target training image: weak labels -> pseudo-labels per correction epoch (Fig. 8)
    train_gt = gt_boxes("synth_target_train_oracle")
    snaps = sorted(glob.glob(os.path.join(trunk, "sissi", "pseudo_labels", "epoch_*.json")))
    snap_boxes = [(int(os.path.basename(p)[6:10]), _snapshot_boxes(p)) for p in snaps]
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
    grid = side_by_side(panels, titles, ncols=min(len(panels), 4))
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

    # test images: truth (green) and detections with score >= 0.5 (red)
    test_files = {_key(p): p for p in _image_files(os.path.join(root, "target", "test"))}
    keys = sorted(test_files, key=lambda k: -len(test_gt.get(k, [])))[:2]
    panels, titles = [], []
    for k in keys:
        img = read_bgr8(test_files[k])
        truth = draw_boxes(img, test_gt.get(k), "green")
        wb, ws = weak["test"].get(k, (np.zeros((0, 4)), np.zeros(0)))
        panels.append(draw_boxes(truth, wb, "yellow"))
        titles.append("weak labels (yellow)")
        for row in ("weak_only", "baseline", "adele_sissi_s"):
            pred = evals[row]["predictions"].get(k, [[], []])
            b, s = np.asarray(pred[0], np.float32).reshape(-1, 4), np.asarray(pred[1], np.float32)
            panels.append(draw_boxes(truth, b[s >= 0.5], "red"))
            titles.append(f"{ROW_NAMES[row]} ({int((s >= 0.5).sum())})")
    figs["test_predictions"] = save_png(os.path.join(fig_dir, "test_predictions.png"), side_by_side(panels, titles, ncols=4))
    clock.say(f"  figures in {fig_dir}")
    return figs


def results_table(rows: list) -> str:
    from tabulate import tabulate

    headers = ["row", "evaluated on", "start rule", "cloning", "correction from"] + list(METRICS)
    body = [[r["name"], r["on"], r["rule"], r["cloning"], r["start"]] + [_fmt(r["metrics"].get(m)) for m in METRICS]
            for r in rows]
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def write_report(output: str, args, manifest: dict, weak: dict, info: dict, table_rows: list, figs: dict,
                 wall: float, resumed: bool) -> str:
    cfg = info["cfgs"]["adele_sissi_s"]
    mem = _read_json(os.path.join(info["dirs"]["adele_sissi_s"], "sissi", "memorisation.json"), {})
    fired, epochs, ipe = info["adele_fired_epoch"], info["epochs"], info["iters_per_epoch"]
    counts = manifest["params"]["counts"]
    cells = manifest.get("cells", {})
    size = manifest["params"]["size"]
    rel = {k: os.path.relpath(v, output) for k, v in figs.items()}
    L = []
    L.append("# SISSI demo on synthetic data\n")
    L.append(f"Command: `python tools/demo.py {' '.join(sys.argv[1:])}`  ")
    L.append(f"Wall time of this run: **{wall / 60:.1f} min**" + (" (resumed: finished steps were reused)" if resumed else "")
             + f"; seed {args.seed}{'; --quick' if args.quick else ''}.\n")
    L.append("## Data\n")
    L.append(f"Synthetic set ({size[0]}x{size[1]} px) in `{args.synthetic_root}`: source (fluorescent-like nuclei, "
             f"fully labelled) {counts['source_train']} train + {counts['source_val']} validation images; target "
             f"(phase-contrast-like fibroblasts) {counts['target_train']} training images with weak labels only and "
             f"{counts['target_test']} test images with true boxes. Cells: "
             + ", ".join(f"{k} {v}" for k, v in cells.items()) + ".\n")
    s = weak["settings"]
    L.append(f"Weak labels: the `{s['pipeline']}` pipeline of `sissi_d2.weak_labels` (cell size {s['cell_size']}) "
             f"on every target image, written to `{weak['train_json']}`.\n")
    L.append("## Results on the target test set\n")
    L.append("COCO box metrics in percent, maxDets 400, against the true boxes of the test images. The weak-label "
             "rows score the classical pipeline's boxes as detections (with their scores): on the test images "
             "(comparable with the models) and on the training images against their oracle masks (the quality of "
             "what the models were trained on).\n")
    L.append(results_table(table_rows) + "\n")
    L.append("## How the rows were trained (shared early learning)\n")
    L.append(f"All rows use `configs/demo/Base-Demo.yaml`: R18-FPN (GroupNorm, from scratch), {size[0]} px, "
             f"{cfg.SISSI.IMS_PER_BATCH_SOURCE} source + {cfg.SISSI.IMS_PER_BATCH_TARGET} target images per iteration, "
             f"{epochs} epochs of {ipe} iterations, SGD lr {cfg.SOLVER.BASE_LR}, seed {cfg.SEED}. Until a row's start "
             "rule fires it trains on the same weak labels with the same data order as every other row, so that "
             "common past is trained once:\n")
    L.append(f"- **A+SISSI(S)** (`configs/demo/adele_sissi_s.yaml`) is the trunk, trained from scratch. "
             + (f"ADELE fired at epoch {fired}; epochs 0..{fired} trained on the weak labels, epochs "
                f"{fired + 1}..{epochs - 1} on TTA+WBF pseudo-labels regenerated every epoch, with synthetic-like "
                "images (strong blur)." if fired is not None else "ADELE never fired: it trained on weak labels "
                                                                   "throughout."))
    wb = info["weak_only_branch"]
    L.append(f"- **Weak-only** (`weak_only.yaml`) shares the trunk's epochs 0..{wb['after_epoch']} (its checkpoint "
             f"after epoch {wb['after_epoch']}, the last weak-label epoch of the trunk) and continues alone on the "
             "weak labels to the end.")
    bb = info.get("baseline_branch") or {}
    hist = ", ".join(f"{int(e)}: {v:.3f}" for e, v in info["source_val_history"])
    if bb.get("same_as"):
        L.append(f"- **Baseline** (`baseline.yaml`): the source validation loss never went "
                 f"{info['cfgs']['baseline'].SISSI.SOURCE_VAL.PATIENCE} epochs without a new low, so its rule never "
                 "fired and the row is identical to Weak-only (not trained again).")
    else:
        L.append(f"- **Baseline** (`baseline.yaml`): the source validation loss (on "
                 f"{info['cfgs']['baseline'].SISSI.SOURCE_VAL.MAX_IMAGES or 'all'} validation images, per epoch start) "
                 f"was lowest at epoch {info['baseline_best_epoch']} and did not improve for "
                 f"{info['cfgs']['baseline'].SISSI.SOURCE_VAL.PATIENCE} epochs, so the rule fires at epoch "
                 f"{info['baseline_start_epoch']}: the row shares epochs 0..{bb.get('after_epoch')} "
                 f"(checkpoint of {ROW_NAMES.get(bb.get('parent'), '?')}), restores the epoch-"
                 f"{info['baseline_best_epoch']} weights and self-trains on pseudo-labels without cloning.")
    L.append(f"\nSource validation loss per epoch (weak-label training): {hist}.\n")
    L.append("## Memorisation detection (ADELE, paper Fig. 7)\n")
    if mem:
        ap = ", ".join(f"{e}: {100 * v:.1f}" for e, v in zip(mem.get("epochs", []), mem.get("ap50", [])))
        ue = ", ".join(f"{e}: {u}" for e, u in zip(mem.get("epochs", []), mem.get("update_epochs", [])))
        L.append(f"AP50 (%) of plain inference on the target training images against their initial weak labels, "
                 f"per epoch start: {ap}. Estimated update epoch after each: {ue}. Horizon (ADELE's n_epoch) "
                 f"{mem.get('horizon')}, threshold {mem.get('threshold')}, at least {mem.get('min_points')} points. "
                 + (f"**Fired at epoch {fired}**; pseudo-labels from epoch {fired + 1}." if fired is not None
                    else "**Did not fire.**") + "\n")
    if "memorisation" in rel:
        L.append(f"![memorisation curve]({rel['memorisation']})\n")
    L.append("## Pseudo-labels over the correction epochs (paper Fig. 8)\n")
    L.append("One target training image: its true boxes (green, never used in training), its weak labels (yellow) "
             "and the A+SISSI(S) pseudo-labels (red) made at the start of each correction epoch.\n")
    L.append(f"![pseudo-labels]({rel['pseudo_labels']})\n")
    L.append("## Synthetic-like images (paper Fig. 3)\n")
    L.append("The same image, background blurred and the labelled boxes seamlessly cloned back: unlabelled cells "
             "fade into the background instead of being learnt as background.\n")
    L.append(f"![synthetic-like]({rel['synthetic_like']})\n")
    L.append("## Test images\n")
    L.append("True boxes in green; weak labels (yellow) and detections with score >= 0.5 (red) of each row.\n")
    L.append(f"![test predictions]({rel['test_predictions']})\n")
    L.append("## Caveats\n")
    L.append("A demo, not a benchmark: a few dozen synthetic images, a small model trained from scratch for a few "
             "minutes on a CPU, one seed. The numbers show the pipeline working end to end; they are noisy and do "
             "not reproduce the paper's Table 1 (for that: `make table` on the real data).\n")
    path = os.path.join(output, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(L))
    os.replace(path + ".tmp", path)
    return path


def prune_checkpoints(info: dict):
    """Keep model_final.pth of each row; drop the per-epoch checkpoints (~100 MB each)."""
    for d in info["dirs"].values():
        for p in glob.glob(os.path.join(d, "model_0*.pth")):
            os.remove(p)
        if os.path.isfile(os.path.join(d, "model_final.pth")):
            with open(os.path.join(d, "last_checkpoint"), "w") as f:
                f.write("model_final.pth")


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo", help="report, figures, rows (default: output/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (128 px, 6 epochs, a few images): for tests")
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
    clock = Clock()
    output = os.path.abspath(args.output)
    setup_logging(output, clock)
    from sissi_d2.setup import synthetic_root

    if args.synthetic_root is None:
        args.synthetic_root = synthetic_root() + ("_quick" if args.quick else "")
    root = os.path.abspath(args.synthetic_root)
    opts = (QUICK_OPTS if args.quick else []) + [o for o in args.opts if o != "--"]
    sizes = QUICK_DATA if args.quick else FULL_DATA
    resumed = os.path.isfile(os.path.join(output, "results.json"))
    clock.say(f"SISSI demo{' (quick)' if args.quick else ''}: output {output}")

    manifest = prepare_data(root, sizes, args.seed, clock)
    weak = prepare_weak_labels(root, output, manifest, sizes["size"], clock)
    register(root, clock)
    data_stamp = [manifest["params"], weak["hash"]]
    info = train_rows(output, opts, args.seed, clock, data_stamp)

    clock.say("Step 5/6: evaluation on the target test set")
    test_gt = gt_boxes(TEST_SET)
    from sissi_d2.evaluation.box_metrics import coco_box_metrics

    max_dets = int(info["cfgs"]["adele_sissi_s"].SISSI.EVAL.MAX_DETS)
    evals = {}
    for row in ("weak_only", "baseline", "adele_sissi_s"):
        if row == "baseline" and (info.get("baseline_branch") or {}).get("same_as"):
            evals[row] = evals["weak_only"]
            continue
        evals[row] = evaluate_row(row, info["cfgs"][row], info["dirs"][row], info["fingerprints"][row], test_gt, clock)
    weak_test = coco_box_metrics(test_gt, weak["test"], max_dets=max_dets)
    weak_train = coco_box_metrics(gt_boxes("synth_target_train_oracle"), weak["train"], max_dets=max_dets)
    fired = info["adele_fired_epoch"]
    base_start = info.get("baseline_start_epoch")
    table_rows = [
        {"key": "weak_labels_train", "name": "Weak labels (as detections)", "on": "target train (oracle)", "rule": "-",
         "cloning": "-", "start": "-", "metrics": weak_train},
        {"key": "weak_labels_test", "name": "Weak labels (as detections)", "on": "target test", "rule": "-",
         "cloning": "-", "start": "-", "metrics": weak_test},
        {"key": "weak_only", "name": "Weak-only", "on": "target test", "rule": "never", "cloning": "never",
         "start": "-", "metrics": evals["weak_only"]["metrics"]},
        {"key": "baseline", "name": "Baseline", "on": "target test", "rule": "source val loss", "cloning": "never",
         "start": "-" if base_start is None else f"epoch {base_start}", "metrics": evals["baseline"]["metrics"]},
        {"key": "adele_sissi_s", "name": "A+SISSI(S)", "on": "target test", "rule": "ADELE", "cloning": "strong",
         "start": "-" if fired is None else f"epoch {fired + 1}", "metrics": evals["adele_sissi_s"]["metrics"]},
    ]
    table = results_table(table_rows)
    print("\n" + table + "\n", flush=True)

    clock.say("Step 6/6: figures and report")
    figs = make_figures(output, root, info, weak, evals, test_gt, clock)
    if not args.keep_checkpoints:
        prune_checkpoints(info)
    wall = clock.elapsed()
    results = {
        "wall_time_s": wall, "quick": args.quick, "seed": args.seed, "synthetic_root": root,
        "data": manifest, "weak_label_settings": weak["settings"],
        "rows": {r["key"]: {"name": r["name"], "evaluated_on": r["on"], "start": r["start"],
                            **{m: r["metrics"].get(m) for m in METRICS},
                            "num_gt": r["metrics"].get("num_gt"), "num_pred": r["metrics"].get("num_pred")}
                 for r in table_rows},
        "adele_fired_epoch": fired, "baseline_start_epoch": base_start,
        "baseline_best_epoch": info.get("baseline_best_epoch"),
        "branches": {"weak_only": info["weak_only_branch"], "baseline": info.get("baseline_branch")},
        "epochs": info["epochs"], "iters_per_epoch": info["iters_per_epoch"],
        "figures": {k: os.path.relpath(v, output) for k, v in figs.items()},
    }
    _write_json(os.path.join(output, "results.json"), results)
    report = write_report(output, args, manifest, weak, info, table_rows, figs, wall, resumed)
    clock.say(f"Done in {wall / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
