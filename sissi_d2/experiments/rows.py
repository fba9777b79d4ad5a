"""Train several rows of an experiment (Table 1) sharing their common past.

Rows that differ only in what happens once their correction starts train identical weights
until then: data order is a function of (seed, epoch), the step RNG is reseeded from (seed,
iteration), and the hooks that watch the model do not change it. So one row on the weak labels
(rule ``never``) is trained once as the *trunk*, recording the start signals (memorisation check,
source validation loss), and every other row *branches* from the trunk's checkpoint at the end of
the epoch before its correction starts, then resumes as a normal run. Where a row branches is
planned by its own start rule replayed on the trunk's record (``StartRule.branch_plan``). A row
whose rule never fires within the epochs equals the trunk and is not trained again.

What must match for a branch to equal the row trained alone (:func:`past_differences`): every
setting except those read only once correction runs (the start rule and its patience, the
cloning settings of rows that do not clone before) and the start signals' own settings (records
that observe the weights); and
the trunk must have recorded, with the same settings, every signal the row records
(:func:`signal_mismatch`), or :func:`run_rows` refuses the plan and names the setting.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import torch

from ..engine.start_rules import MEMORISATION, SIGNAL_SETTINGS, SOURCE_VAL, build_start_rule, recorded_signals
from ..engine.checkpoint import prune_checkpoints, protect_branch_checkpoints
from ..utils.disk import check_rows_fit
from ..utils.atomic import atomic_open, atomic_write_json

__all__ = ["run_rows", "past_differences", "same_past", "signal_mismatch", "check_row_settings", "row_settings",
           "row_iterations", "time_left_line", "train_row"]

logger = logging.getLogger(__name__)

# Read only by the start rule, or only once correction runs.
_ROW_ONLY = ("SISSI.START_RULE", "SISSI.SOURCE_VAL.PATIENCE")
# The start signals observe (no_grad inference or losses on a forked RNG, the step RNG is reseeded):
# their settings change their record, not the weights; they are compared where the row records
# that signal.
_SIGNAL_KEYS = {
    MEMORISATION: ("SISSI.ADELE.TRACK", "SISSI.ADELE.THRESHOLD", "SISSI.ADELE.HORIZON", "SISSI.ADELE.MIN_POINTS"),
    SOURCE_VAL: ("SISSI.SOURCE_VAL_DATASETS", "SISSI.SOURCE_VAL.MAX_IMAGES"),
}
_ANY_SIGNAL_KEY = frozenset(k for keys in _SIGNAL_KEYS.values() for k in keys)
_CLONING = "SISSI.CLONING."

# Pseudo-label settings act only once correction starts (the memorisation check runs the
# identity view alone, and its boxes do not depend on PSEUDO.BATCH_SIZE).
_PSEUDO = "SISSI.PSEUDO."


def never_touches_weights(key: str, *eval_periods) -> bool:
    """Settings no weight or start signal depends on: disk retention (``SISSI.DISK.*``), the
    cloning cache's size (the cloned images are the same either way), the first pseudo-labels'
    cache folder (it holds the labels the row would make), and ``DATASETS.TEST``, read
    only by evaluation, when every run compared evaluates after training only
    (``TEST.EVAL_PERIOD`` 0 in each of ``eval_periods``)."""
    return (key.startswith("SISSI.DISK.") or key in ("SISSI.CLONING.CACHE_MB", "SISSI.PSEUDO.CACHE_DIR")
            or (key == "DATASETS.TEST" and all(int(p) == 0 for p in eval_periods)))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def row_settings(cfg) -> dict:
    """The row's config as flat plain JSON values (OUTPUT_DIR left out: folders may move)."""
    d = json.loads(json.dumps(cfg, default=lambda o: dict(o) if isinstance(o, dict) else list(o)))
    d.pop("OUTPUT_DIR", None)
    return _flat(d)


def _default_settings() -> dict:
    """row_settings of the default config (Detectron2's and sissi_d2's defaults, no file)."""
    from detectron2.config import get_cfg

    from ..config import add_sissi_config

    cfg = get_cfg()
    add_sissi_config(cfg)
    return row_settings(cfg)


def _clones_before_start(cfg) -> bool:
    return cfg.SISSI.CLONING.MODE == "always"


def past_differences(row_cfg, trunk_cfg) -> list:
    """Settings in which two runs may differ before the row's correction starts (sorted keys).

    Compared: everything but the start rule and its patience, the start signals' settings (the
    memorisation check and the source validation loss observe without touching the weights: a
    record, compared by :func:`signal_mismatch` where the row reads it) and, unless one of them
    clones from the first epoch (``CLONING.MODE always``), the cloning settings; never
    pseudo-label settings, disk retention, or the test sets when both evaluate only after training."""
    a, b = row_settings(row_cfg), row_settings(trunk_cfg)
    ignored = set(_ROW_ONLY) | _ANY_SIGNAL_KEY
    cloning_matters = _clones_before_start(row_cfg) or _clones_before_start(trunk_cfg)
    return sorted(k for k in set(a) | set(b)
                  if k not in ignored and not k.startswith(_PSEUDO) and (cloning_matters or not k.startswith(_CLONING))
                  and not never_touches_weights(k, row_cfg.TEST.EVAL_PERIOD, trunk_cfg.TEST.EVAL_PERIOD)
                  and a.get(k) != b.get(k))


def same_past(cfg_a, cfg_b) -> bool:
    """True when two configs train the same weights until the first one's correction starts."""
    return not past_differences(cfg_a, cfg_b)


def signal_mismatch(row_cfg, trunk_cfg) -> str | None:
    """Why the trunk's record cannot stand for the row's signals, naming the setting; None if it can.

    A row records the signals its rule needs (and the memorisation check with ADELE.TRACK); the
    trunk must record each of them with the same settings, or the row's start (and its copied
    record) would be read from another signal."""
    row_rec, trunk_rec = recorded_signals(row_cfg), recorded_signals(trunk_cfg)
    a, b = row_settings(row_cfg), row_settings(trunk_cfg)
    for signal in sorted(row_rec):
        if signal not in trunk_rec:
            return (f"the row records the {signal} signal (its start rule or SISSI.ADELE.TRACK) but the trunk does "
                    f"not: set {SIGNAL_SETTINGS[signal]} on the trunk")
        for key in _SIGNAL_KEYS[signal]:
            if key != "SISSI.ADELE.TRACK" and a.get(key) != b.get(key):
                return f"{key} is {a.get(key)!r} for the row but {b.get(key)!r} for the trunk that recorded the {signal} signal"
    return None


def _checkpoint_path(trunk_dir: str, epoch_end: int, ipe: int) -> str:
    return os.path.join(trunk_dir, f"model_{(epoch_end + 1) * ipe - 1:07d}.pth")


def _branch(trunk_dir: str, row_dir: str, plan, ipe: int) -> None:
    """Seed row_dir with the trunk's checkpoint at the end of epoch plan.start_epoch - 1 (and the
    weights at the start of plan.restore_epoch, which the row's source validation hook keeps)."""
    src = _checkpoint_path(trunk_dir, plan.start_epoch - 1, ipe)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"the trunk checkpoint {src} is missing: cannot branch the row {row_dir}")
    os.makedirs(os.path.join(row_dir, "sissi"), exist_ok=True)
    shutil.copyfile(src, os.path.join(row_dir, os.path.basename(src)))
    for name in ("memorisation.json",):
        if os.path.isfile(os.path.join(trunk_dir, "sissi", name)):
            shutil.copyfile(os.path.join(trunk_dir, "sissi", name), os.path.join(row_dir, "sissi", name))
    if plan.restore_epoch is not None and plan.restore_epoch != plan.start_epoch:
        # the weights at the start of epoch e are those of the checkpoint at the end of e - 1
        state = torch.load(_checkpoint_path(trunk_dir, plan.restore_epoch - 1, ipe), map_location="cpu",
                           weights_only=True)
        with atomic_open(os.path.join(row_dir, "sissi", "best_source_val.pth"), "wb") as f:
            torch.save({"model": state["model"], "epoch": plan.restore_epoch}, f)
    with atomic_open(os.path.join(row_dir, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(src))


def check_row_settings(cfg) -> None:
    """A row's folder is reused (resume) only by the settings it was trained with.

    The first run records them in ``OUTPUT_DIR/sissi/row_settings.json``; a later run with other
    settings (another learning rate, other epochs, another data set...) would otherwise silently
    continue or reuse the old weights. It stops with the keys that differ instead. Pseudo-label
    settings are not compared for a row that never corrects (START_RULE never), nor disk
    retention, nor the test sets of rows evaluated only after training (TEST.EVAL_PERIOD 0): the
    finished row is evaluated on the current ones. An option newer than the record counts as
    unchanged while it has its default value."""
    path = os.path.join(cfg.OUTPUT_DIR, "sissi", "row_settings.json")
    current = row_settings(cfg)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        # A row that never corrects never reads its pseudo-label settings nor its start signals
        # (records that observe the weights): other values of them (e.g. a recipe that changed
        # its TTA views, an Oracle that stopped recording signals) still name the same weights.
        never = cfg.SISSI.START_RULE == "never"
        # An option added to sissi_d2 after the row was recorded, still at its default, is the
        # behaviour the row was trained with (every new option defaults to the old behaviour).
        defaults = _default_settings()
        diff = sorted(k for k in set(recorded) | set(current)
                      if recorded.get(k) != current.get(k) and not (never and (k.startswith(_PSEUDO) or k in _ANY_SIGNAL_KEY))
                      and not never_touches_weights(k, cfg.TEST.EVAL_PERIOD, recorded.get("TEST.EVAL_PERIOD", -1))
                      and not (k not in recorded and k in defaults and current.get(k) == defaults[k]))
        if diff:
            shown = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"{cfg.OUTPUT_DIR} holds a run trained with other settings ({shown}"
                f"{'; ...' if len(diff) > 6 else ''}). Use another output folder, or delete this one to train again.")
        return
    if os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        logger.warning("%s holds a run with no record of its settings: assuming they are the current ones", cfg.OUTPUT_DIR)
    atomic_write_json(path, current)


def train_row(key: str, cfg, trainer_cls=None, hooks=None, protect=(), extra_hooks=()) -> dict:
    """Train one row (resuming from its folder) and evaluate it on ``DATASETS.TEST``.

    ``hooks(key, trainer)``, if given, returns extra hooks for the row's trainer; ``protect``:
    the row configs that may branch from this one (a trunk keeps their checkpoints). Returns
    {"metrics", "seconds" (wall time of training, epoch checks included), "iterations" (trained
    now), "iters_per_epoch", "hooks_state" (the trainer's hooks, JSON types)}.
    """
    if trainer_cls is None:
        from ..engine.trainer import SISSITrainer as trainer_cls
    check_row_settings(cfg)
    trainer = trainer_cls(cfg)
    if hooks is not None:
        trainer.register_hooks(hooks(key, trainer))
    if extra_hooks:
        trainer.register_hooks(list(extra_hooks))
    if protect:
        protect_branch_checkpoints(trainer, protect)
    trainer.resume_or_load(resume=True)
    todo, seconds = trainer.max_iter - trainer.start_iter, 0.0
    if todo > 0:
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    metrics = {}
    if cfg.DATASETS.TEST:
        results = trainer_cls.test(cfg, trainer.model)
        if "bbox" in results:  # Detectron2 unwraps the results of a single test set
            results = {cfg.DATASETS.TEST[0]: results}
        metrics = {ds: res["bbox"] for ds, res in results.items()}
    return {"metrics": metrics, "seconds": seconds, "iterations": max(0, todo), "iters_per_epoch": trainer.iters_per_epoch,
            "hooks_state": hooks_state(trainer)}


def hooks_state(trainer) -> dict:
    """The trainer's hook states (what its checkpoints hold under "hooks"), as JSON types."""
    return json.loads(json.dumps(trainer.state_dict()["hooks"]))


def row_iterations(kind: str, epochs: int, iters_per_epoch: int, start_epoch: int = 0) -> int:
    """Iterations a row still trains once the trunk is done: a row trained from scratch all of
    its epochs, a branch those from its start epoch on, a row equal to the trunk none."""
    if kind == "same":
        return 0
    if kind == "branch":
        return max(0, epochs - start_epoch) * iters_per_epoch
    if kind == "scratch":
        return epochs * iters_per_epoch
    raise ValueError(f"unknown row kind {kind!r} (scratch, branch or same)")


def time_left_line(rows_left: list, iterations_left: int, iterations_done: int, seconds_done: float,
                   at_once: int = 1) -> str:
    """One progress line for a set of rows: what is left, and how long it takes at the pace
    measured so far on this machine (the paper's configs or a slower CPU change it a lot, so
    it is measured, never assumed). ``seconds_done``: the training time of the rows finished so
    far, each row's own; with ``at_once`` rows trained at a time, that pace is shared by that many
    rows. Rows that clone or pseudo-label cost more per iteration than the trunk, and a row
    still training counts whole, so the figure is rough until a few rows have finished."""
    if not rows_left:
        return "Rows: all rows trained"
    names = ", ".join(rows_left)
    if iterations_done <= 0:
        return f"Rows: left {names}, {iterations_left} iterations (no pace measured yet: every row so far was reused)"
    pace = seconds_done / iterations_done
    measured = f"measured on this machine: {iterations_done} iterations in {seconds_done / 60:.1f} min"
    if at_once > 1:
        return (f"Rows: left {names}, {iterations_left} iterations: about "
                f"{iterations_left * pace / at_once / 60:.0f} min, {at_once} rows at a time at {pace:.2f} s per "
                f"iteration each ({measured} of row time, epoch checks included)")
    return (f"Rows: left {names}, {iterations_left} iterations: about {iterations_left * pace / 60:.0f} min at "
            f"{pace:.2f} s per iteration ({measured}, epoch checks included)")


def _row_kind(cfg, trunk_cfg, trunk_state: dict, recorded, epochs_seen: int | None = None) -> tuple | None:
    """(kind, plan, why) of a row against the trunk: 'branch', 'same' (its rule never fires) or
    'scratch', with ``why`` it cannot reuse the trunk (its past differs, or its correction starts
    from the initial weights). ``epochs_seen``: the trunk is still training and ``trunk_state`` is
    its record of that many epoch starts; then None while the row's rule has not fired on it (a
    rule reads only the signals up to the epoch it judges, so a plan found on a part of the record
    is the plan of the whole; that it never fires is known only at the end)."""
    differences = past_differences(cfg, trunk_cfg)
    if differences:
        return "scratch", None, f"differs from the trunk before correction ({', '.join(differences[:4])})"
    epochs = int(cfg.SISSI.EPOCHS)
    seen = epochs if epochs_seen is None else min(epochs, int(epochs_seen))
    plan = build_start_rule(cfg).branch_plan(trunk_state, recorded, seen)
    if plan is None:
        return ("same", None, None) if epochs_seen is None else None
    if plan.start_epoch == 0 or plan.restore_epoch == 0:
        # nothing of the trunk to reuse: its weights at epoch 0 are the initial ones
        return "scratch", plan, "correction starts from the initial weights"
    return "branch", plan, None


def _share_first_labels(rows: dict, branching: list, folder: str) -> dict:
    """Branches that start from the same trunk checkpoint with the same pseudo-label settings make
    the same first pseudo-labels: the first to label stores them in ``folder`` and the others read
    them (``SISSI.PSEUDO.CACHE_DIR``, engine/label_cache.py), one TTA pass over the target images
    less per such row. A row that names its own cache folder keeps it."""
    out = dict(rows)
    for key in branching:
        if not rows[key].SISSI.PSEUDO.CACHE_DIR:
            cfg = rows[key].clone()
            cfg.defrost()
            cfg.SISSI.PSEUDO.CACHE_DIR = folder
            cfg.freeze()
            out[key] = cfg
    return out


def _trunk_signals(hooks_state: dict) -> dict:
    return {"memorisation_fired_epoch": hooks_state.get("MemorisationHook", {}).get("detector", {}).get("fired_epoch"),
            "source_val_history": hooks_state.get("SourceValLossHook", {}).get("history", [])}


def run_rows(rows: dict, trunk: str, trainer_cls=None, hooks=None, jobs: int = 1, setup=None) -> dict:
    """Train and evaluate every row (key -> frozen cfg); ``rows[trunk]`` must use rule 'never'.

    ``trainer_cls`` (default ``SISSITrainer``) trains every row; ``hooks(key, trainer)``, if given,
    returns extra hooks for the row's trainer (e.g. progress lines). Returns key -> {"metrics",
    "branched_from_epoch", "plan", "output_dir", "same_as", "queued_at_trunk_epoch"} (the trunk's
    entry also holds its "signals") and writes it into each row's folder as ``row.json``; the
    summary alone also holds "iterations_trained" (by this call). Finished rows are reused
    (resume). A row whose start rule would read a signal the trunk did not record raises ValueError.

    ``jobs`` > 1 trains up to that many rows at once, each in its own process sharing the cores
    (:mod:`.row_jobs`): the trunk together with the rows whose past differs from it (e.g. the
    Oracle), then the branches. A branch starts as soon as its rule has fired on the trunk's record
    and a slot is free, while the trunk still trains if need be ("queued_at_trunk_epoch": the
    epoch the trunk was starting when the row was queued; None once the trunk had finished). Data
    sets registered with ``register_sissi_dataset`` are registered again in every process;
    ``setup(key)``, if given, runs there first with the row's key (register others there, set up
    its logging). ``trainer_cls``, ``hooks`` and ``setup`` must then be picklable (module-level).
    """
    from .row_jobs import RowPool

    trunk_cfg = rows[trunk]
    if trunk_cfg.SISSI.START_RULE != "never":
        raise ValueError(f"the trunk row {trunk!r} must train on the weak labels (START_RULE never)")
    for key, cfg in rows.items():  # refuse before anything is trained
        if key != trunk and not past_differences(cfg, trunk_cfg):
            why = signal_mismatch(cfg, trunk_cfg)
            if why:
                raise ValueError(f"row {key!r} cannot branch from the trunk {trunk!r}: {why}")
    check_rows_fit(rows, trunk)
    own_past = [k for k in rows if k != trunk and past_differences(rows[k], trunk_cfg)]
    branching = [k for k in rows if k != trunk and k not in own_past]
    rows = _share_first_labels(rows, branching, os.path.join(trunk_cfg.OUTPUT_DIR, "sissi", "first_pseudo_labels"))
    recorded = recorded_signals(trunk_cfg)
    summary, kinds, done = {}, {}, set()
    clock = {"seconds": 0.0, "iterations": 0}  # the training time and iterations of the rows finished
    trunk_at = {"ipe": None, "epoch": None}  # iterations per epoch; the epoch the running trunk starts

    def left() -> tuple:
        todo = [k for k in kinds if k not in done and kinds[k][0] != "same"]
        its = sum(row_iterations(kinds[k][0], int(rows[k].SISSI.EPOCHS), trunk_at["ipe"],
                                 kinds[k][1].start_epoch if kinds[k][1] is not None else 0) for k in todo)
        return todo, its

    def submit(key: str) -> None:
        kind, plan, why = kinds[key]
        entry = summary[key] = {"output_dir": rows[key].OUTPUT_DIR, "same_as": None, "branched_from_epoch": None,
                                "plan": None, "queued_at_trunk_epoch": trunk_at["epoch"], "iterations_trained": 0}
        if plan is not None:
            entry["plan"] = {"start_epoch": plan.start_epoch, "restore_epoch": plan.restore_epoch}
        if kind == "same":
            logger.info("Row %r: its start rule never fires within the epochs; identical to %r", key, trunk)
            entry.update(same_as=trunk, metrics=summary[trunk]["metrics"])
            done.add(key)
            return
        if kind == "scratch":
            logger.info("Row %r %s: trained from scratch", key, why)
        else:
            check_row_settings(rows[key])  # before the branch checkpoint lands in its folder
            if not os.path.isfile(os.path.join(rows[key].OUTPUT_DIR, "last_checkpoint")):
                _branch(trunk_cfg.OUTPUT_DIR, rows[key].OUTPUT_DIR, plan, trunk_at["ipe"])
            while_trunk = (f", while the trunk trains epoch {trunk_at['epoch']}" if trunk_at["epoch"] is not None
                           else "")
            logger.info("Row %r: branched from the trunk at the start of epoch %d%s", key, plan.start_epoch, while_trunk)
            entry["branched_from_epoch"] = plan.start_epoch
        pool.submit(key, rows[key])

    def on_trunk_progress(key: str, report: dict) -> None:
        """The running trunk starts an epoch: start the branches whose rule has fired on its record."""
        trunk_at.update(ipe=report["iters_per_epoch"], epoch=report["epochs_seen"] - 1)
        for k in branching:
            if k not in kinds:
                kind = _row_kind(rows[k], trunk_cfg, report["hooks_state"], recorded, report["epochs_seen"])
                if kind is not None:
                    kinds[k] = kind
                    submit(k)

    pool = RowPool(jobs, trainer_cls, hooks, setup)
    try:
        logger.info("Rows: training the trunk %r in %s%s", trunk, trunk_cfg.OUTPUT_DIR,
                    f" ({pool.jobs} rows at a time)" if pool.jobs > 1 else "")
        # The trunk keeps the checkpoints its branches may start from until every row has branched.
        pool.submit(trunk, trunk_cfg, protect=[rows[k] for k in branching], report=True)
        if pool.jobs > 1:  # rows with a past of their own need nothing of the trunk: train them alongside
            for key in own_past:
                kinds[key] = _row_kind(rows[key], trunk_cfg, {}, frozenset())
                submit(key)
        trunk_done = False
        while pool.pending():
            key, result = pool.next_done(on_progress=on_trunk_progress)
            clock["seconds"] += result["seconds"]
            clock["iterations"] += result["iterations"]
            if key != trunk:
                summary[key].update(metrics=result["metrics"], iterations_trained=result["iterations"])
                done.add(key)
                if trunk_done:  # a row beside the trunk may finish first
                    logger.info(time_left_line(*left(), clock["iterations"], clock["seconds"], pool.jobs))
                continue
            trunk_done = True
            trunk_at.update(ipe=result["iters_per_epoch"], epoch=None)
            trunk_state = result["hooks_state"]
            summary[trunk] = {"metrics": result["metrics"], "branched_from_epoch": 0, "plan": None,
                              "output_dir": trunk_cfg.OUTPUT_DIR, "same_as": None, "queued_at_trunk_epoch": None,
                              "iterations_trained": result["iterations"], "signals": _trunk_signals(trunk_state)}
            for k in rows:
                if k != trunk and k not in kinds:
                    kinds[k] = _row_kind(rows[k], trunk_cfg, trunk_state, recorded)
            logger.info(time_left_line(*left(), clock["iterations"], clock["seconds"], pool.jobs))
            for k in rows:
                if k != trunk and k not in summary:
                    submit(k)
    finally:
        pool.close()
    summary = {k: summary[k] for k in rows}  # the rows' order
    for key, entry in summary.items():
        atomic_write_json(os.path.join(entry["output_dir"], "row.json"),
                          {"row": key, **{f: v for f, v in entry.items() if f != "iterations_trained"}})
    # Every row has branched: the trunk needs only what its own --resume needs.
    prune_checkpoints(trunk_cfg.OUTPUT_DIR, int(trunk_cfg.SISSI.DISK.KEEP_LAST))
    return summary
