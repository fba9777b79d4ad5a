"""Disk use of long runs: what a run will write, a free-space check at start, a clear stop on a
full disk.

A row keeps a few checkpoints of about 2x the model's fp32 parameters (weights + SGD momentum),
pseudo-label snapshots and small logs. ``estimate_run`` / ``estimate_rows`` add these up from the
config and the model; ``check_fits`` compares the estimate with the free space of the output
folder and refuses to start with what is needed, what is free and which setting lowers it.

A write that still hits a full disk (another process filled it) raises :class:`DiskFullError`:
the message names the folder and what can be deleted there, and ``--resume`` continues once space
is freed because atomic writes never leave a half-written file or a damaged previous version.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

__all__ = [
    "DiskFullError",
    "DiskBudgetError",
    "DiskEstimate",
    "CHECKPOINT_NAME_RE",
    "checkpoint_iteration",
    "is_disk_full",
    "format_bytes",
    "free_bytes",
    "folder_bytes",
    "deletable_files",
    "disk_full_message",
    "stop_cleanly_on_full_disk",
    "checkpoint_sizes",
    "model_checkpoint_sizes",
    "kept_checkpoint_count",
    "estimate_run",
    "estimate_rows",
    "check_fits",
    "check_run_fits",
    "check_rows_fit",
]

logger = logging.getLogger(__name__)

# Per-epoch checkpoints written by Detectron2's PeriodicCheckpointer ("model_final.pth" is not one).
CHECKPOINT_NAME_RE = re.compile(r"^model_(\d{7})\.pth$")
# Temporary files of utils.atomic.atomic_open (".<name>.<random>.tmp"); left behind only by a
# process killed mid-write.
TEMP_NAME_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")

# errno values of a full disk: no space, or the user's quota is used up.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

# A pseudo-label in a COCO snapshot written with indent=1 (floats at full precision): measured
# 234 B per box (tests/utils/test_disk.py keeps this an upper bound).
BYTES_PER_PSEUDO_LABEL = 250
# Logs, metrics.json, row json files, evaluation predictions: a few MB per row; 50 MB covers
# Detectron2's event log of a long run and predictions of a few hundred test images.
BYTES_OF_LOGS_PER_RUN = 50 * 2**20
# torch.save's zip container adds a record per tensor; measured overhead of a checkpoint of the
# lean CPU model is well below 1% (docs/disk.md). 1 MB covers it.
CHECKPOINT_OVERHEAD_BYTES = 2**20


class DiskFullError(OSError):
    """The disk filled up during a write. ``str(e)`` says which folder and what can be deleted.

    An OSError with errno ENOSPC, so code that handles full disks by errno still recognises it.
    """

    def __init__(self, message: str, folder: str | None = None):
        super().__init__(errno.ENOSPC, message)
        self.folder = folder

    def __str__(self):
        return self.strerror

    def __reduce__(self):  # picklable across processes (DDP workers, subprocess tests)
        return (type(self), (self.strerror, self.folder))


class DiskBudgetError(RuntimeError):
    """A run would not fit on the disk of its output folder; raised before it starts."""


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def checkpoint_iteration(name: str):
    """Iteration of a per-epoch checkpoint file name (``model_0000012.pth`` -> 12), else None."""
    m = CHECKPOINT_NAME_RE.match(os.path.basename(name))
    return int(m.group(1)) if m else None


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from is a full-disk error.

    torch.save turns an OSError of the file's write() into a RuntimeError ("unexpected pos ...")
    whose ``__context__`` is the OSError, hence the walk along the chain.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def format_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int:
    """Free bytes (for this user) on the disk that holds ``path`` or, if it does not exist yet,
    the nearest folder above it."""
    return int(shutil.disk_usage(_existing_ancestor(path)).free)


def _device(path: str) -> int:
    return os.stat(_existing_ancestor(path)).st_dev


def folder_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# ---------------------------------------------------------------------------------------------
# a clear stop on a full disk
# ---------------------------------------------------------------------------------------------
def _run_folder_of(path: str, levels: int = 3) -> str:
    """The run (row) folder a written file belongs to: the nearest folder above it holding a
    ``last_checkpoint`` tag, e.g. OUTPUT_DIR for OUTPUT_DIR/sissi/pseudo_labels/epoch_0003.json."""
    folder = os.path.dirname(os.path.abspath(path))
    candidate = folder
    for _ in range(levels + 1):
        if os.path.isfile(os.path.join(candidate, "last_checkpoint")):
            return candidate
        candidate = os.path.dirname(candidate)
    return folder


def _read_last_checkpoint(run_dir: str):
    with contextlib.suppress(OSError):
        with open(os.path.join(run_dir, "last_checkpoint"), encoding="utf-8") as f:
            return f.read().strip()
    return None


def deletable_files(run_dir: str) -> list:
    """Files of a run folder that ``--resume`` does not need, largest first: (path, bytes, why).

    Older per-epoch checkpoints (resume reads the one named in ``last_checkpoint``), temporary
    files left by a killed write, and pseudo-label snapshots older than the newest one (resume
    reads only the snapshot of the current labels, which is the newest).
    """
    out = []

    def add(path, why):
        with contextlib.suppress(OSError):
            out.append((path, os.path.getsize(path), why))

    last = _read_last_checkpoint(run_dir)
    numbered = sorted((p for p in glob.glob(os.path.join(run_dir, "model_*.pth")) if checkpoint_iteration(p) is not None),
                      key=checkpoint_iteration)
    names = [os.path.basename(p) for p in numbered]
    if last in names or (last and os.path.isfile(os.path.join(run_dir, last))):
        keep = last
    else:  # no usable tag: keep the newest, which a --resume after re-tagging would read
        keep = names[-1] if names else None
    for p in numbered:
        if os.path.basename(p) != keep:
            add(p, "older checkpoint (--resume reads the newest; a trunk keeps it while a row still branches from it)")
    for sub in ("", "sissi", os.path.join("sissi", "pseudo_labels")):
        folder = os.path.join(run_dir, sub)
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                if TEMP_NAME_RE.match(name):
                    add(os.path.join(folder, name), "temporary file of an interrupted write")
    snapshots = sorted(glob.glob(os.path.join(run_dir, "sissi", "pseudo_labels", "epoch_*.json")))
    for p in snapshots[:-1]:
        add(p, "older pseudo-label snapshot (only label-quality figures read it)")
    return sorted(out, key=lambda t: -t[1])


def disk_full_message(path: str, run_dir: str | None = None, max_listed: int = 6) -> str:
    """What happened, where, what can be deleted, how to continue."""
    path = os.path.abspath(os.fspath(path))
    run_dir = os.path.abspath(run_dir) if run_dir else _run_folder_of(path)
    try:
        free = format_bytes(free_bytes(run_dir))
    except OSError:
        free = "unknown"
    lines = [
        f"No space left on the disk of {run_dir} ({free} free) while writing {path}.",
        "Nothing is half-written: the new file was discarded and the previous version of it, if any, is intact.",
    ]
    try:
        candidates = deletable_files(run_dir)
    except OSError:
        candidates = []
    if candidates:
        total = sum(size for _, size, _ in candidates)
        lines.append(f"In {run_dir}, {len(candidates)} file(s) ({format_bytes(total)}) are not needed to resume:")
        for p, size, why in candidates[:max_listed]:
            lines.append(f"  {os.path.relpath(p, run_dir)}  {format_bytes(size)}: {why}")
        if len(candidates) > max_listed:
            lines.append(f"  ... and {len(candidates) - max_listed} more")
    lines.append(
        "Free space (these files, output folders of finished runs, or the data cache SISSI_CACHE_DIR), then run "
        "the same command again (train_net.py with --resume) to continue from the last checkpoint. To write "
        "less, lower SISSI.DISK.KEEP_LAST (checkpoints kept per row)."
    )
    return "\n".join(lines)


@contextlib.contextmanager
def stop_cleanly_on_full_disk(run_dir: str):
    """Turn a full-disk error raised anywhere inside (a checkpoint, a snapshot, a log line, a
    progress bar) into a :class:`DiskFullError` that names ``run_dir`` and what can be deleted."""
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as e:
        if not is_disk_full(e):
            raise
        where = getattr(e, "filename", None) or run_dir
        raise DiskFullError(disk_full_message(where, run_dir=run_dir), folder=run_dir) from e


# ---------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------
@dataclass
class DiskEstimate:
    """What a run (or a set of rows) writes at most into ``folder``, by part."""

    folder: str
    parts: dict = field(default_factory=dict)  # what -> bytes
    present: int = 0  # bytes already in the folder(s) (a resumed run has written them already)
    hints: list = field(default_factory=list)  # settings that lower the estimate

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def needed(self) -> int:
        """Bytes still to be written: the total less what is already on disk."""
        return max(0, self.total - self.present)

    def describe(self) -> str:
        return "; ".join(f"{k}: {format_bytes(v)}" for k, v in self.parts.items() if v)


def checkpoint_sizes(model, momentum: float = 0.9):
    """(bytes of a training checkpoint, bytes of the weights alone) of ``model`` in fp32 terms.

    A training checkpoint holds the state dict (parameters + buffers) and the optimizer state:
    SGD with momentum keeps one buffer per trainable parameter, so about 2x the parameters.
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum_buffers = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) if momentum else 0
    return int(weights + momentum_buffers + CHECKPOINT_OVERHEAD_BYTES), int(weights)


def model_checkpoint_sizes(cfg):
    """:func:`checkpoint_sizes` of the model ``cfg`` builds (built on the CPU, then dropped)."""
    from detectron2.modeling import build_model

    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    model = build_model(cpu_cfg)
    return checkpoint_sizes(model, momentum=cfg.SOLVER.MOMENTUM)


def _saved_checkpoint_count(cfg) -> int:
    """Per-epoch checkpoints a whole run saves."""
    return max(1, int(cfg.SISSI.EPOCHS) // max(1, int(cfg.SISSI.CHECKPOINT_EVERY_EPOCHS)))


def kept_checkpoint_count(cfg) -> int:
    """Training checkpoints a run holds at its peak, model_final.pth included.

    With SISSI.DISK.KEEP_LAST = K > 0: K per-epoch checkpoints, the next one being written (the
    older ones are deleted only once it is complete), and model_final.pth. With 0: all of them.
    """
    saved = _saved_checkpoint_count(cfg)
    keep = int(cfg.SISSI.DISK.KEEP_LAST)
    if keep <= 0 or keep + 1 >= saved:
        return saved + 1
    return keep + 2


def _correction_epochs(cfg) -> int:
    """Epochs that can write a pseudo-label snapshot (an upper bound for rules decided online)."""
    rule = str(cfg.SISSI.START_RULE)
    epochs = int(cfg.SISSI.EPOCHS)
    if rule == "never":
        return 0
    if rule.startswith("epoch:"):
        with contextlib.suppress(ValueError):
            return max(0, epochs - int(rule.split(":", 1)[1]))
    return max(0, epochs - 1)


def estimate_run(cfg, checkpoint_bytes: int, weights_bytes: int, n_target_images: int,
                 extra_checkpoints: int = 0) -> DiskEstimate:
    """What one run (one row) writes into cfg.OUTPUT_DIR at most.

    ``extra_checkpoints``: checkpoints kept beyond the retention, e.g. those a trunk keeps for the
    rows that branch from it.
    """
    kept = kept_checkpoint_count(cfg)
    parts = {f"{kept} checkpoints x {format_bytes(checkpoint_bytes)}": kept * checkpoint_bytes}
    # a run that keeps every checkpoint already holds those its branches need
    extra_checkpoints = min(extra_checkpoints, _saved_checkpoint_count(cfg) + 1 - kept)
    if extra_checkpoints:
        parts[f"{extra_checkpoints} checkpoints kept for branches"] = extra_checkpoints * checkpoint_bytes
    if cfg.SISSI.SOURCE_VAL_DATASETS:
        # the best weights and, while a better one is written, its replacement
        parts["best_source_val.pth"] = 2 * weights_bytes
    snapshots = _correction_epochs(cfg)
    if snapshots:
        parts[f"{snapshots} pseudo-label snapshots"] = (
            snapshots * n_target_images * int(cfg.SISSI.PSEUDO.TOPK) * BYTES_PER_PSEUDO_LABEL)
    parts["logs, metrics, predictions"] = BYTES_OF_LOGS_PER_RUN
    hints = []
    keep = int(cfg.SISSI.DISK.KEEP_LAST)
    if keep != 1:
        hints.append(f"SISSI.DISK.KEEP_LAST 1 (now {keep}{', all' if keep <= 0 else ''})")
    if keep <= 0 and int(cfg.SISSI.CHECKPOINT_EVERY_EPOCHS) <= 1:
        hints.append("SISSI.CHECKPOINT_EVERY_EPOCHS > 1")
    if snapshots:
        hints.append(f"SISSI.PSEUDO.TOPK (now {int(cfg.SISSI.PSEUDO.TOPK)}; bounds the pseudo-labels per image)")
    return DiskEstimate(cfg.OUTPUT_DIR, parts, folder_bytes(cfg.OUTPUT_DIR), hints)


def _branch_checkpoints(row_cfgs) -> int:
    """Trunk checkpoints the rows may branch from at most: rows with the same rule (and patience)
    read the same trunk signals, so they branch at the same epoch; the source-validation rule also
    reads its best weights from an earlier checkpoint."""
    needed = set()
    for cfg in row_cfgs:
        rule = str(cfg.SISSI.START_RULE)
        if rule == "source_val_loss":
            patience = int(cfg.SISSI.SOURCE_VAL.PATIENCE)
            needed |= {(rule, patience, "start"), (rule, patience, "best weights")}
        elif rule != "never":
            needed.add(rule)
    return len(needed)


def estimate_rows(rows: dict, trunk: str, checkpoint_bytes: int, weights_bytes: int, n_target_images: int,
                  branch_checkpoints: int | None = None) -> dict:
    """Estimates of every row of ``run_rows`` (name -> cfg), by name. An upper bound: every row is
    counted as a full run, and the trunk keeps ``branch_checkpoints`` more checkpoints for the
    rows that may branch from it (default: one per row with a start rule, where it branches, and
    one more for the source-validation rule, whose best weights come from an earlier checkpoint)."""
    if branch_checkpoints is None:
        branch_checkpoints = _branch_checkpoints(cfg for name, cfg in rows.items() if name != trunk)
    return {
        name: estimate_run(cfg, checkpoint_bytes, weights_bytes, n_target_images,
                           extra_checkpoints=branch_checkpoints if name == trunk else 0)
        for name, cfg in rows.items()
    }


def check_fits(estimates, reserve_bytes: int = 0, what: str = "This run", hints=()) -> None:
    """Raise :class:`DiskBudgetError` when the estimates do not fit the free space of their disks.

    ``estimates``: one DiskEstimate or several (rows); those on the same disk are added up.
    ``reserve_bytes`` stay free for everything else on the machine; ``hints``: more settings that
    lower the estimate, named in the message.
    """
    if isinstance(estimates, DiskEstimate):
        estimates = [estimates]
    by_disk: dict = {}
    for est in estimates:
        by_disk.setdefault(_device(est.folder), []).append(est)
    for group in by_disk.values():
        needed = sum(e.needed for e in group)
        free = free_bytes(group[0].folder)
        if needed + reserve_bytes <= free:
            continue
        folders = sorted({os.path.abspath(e.folder) for e in group})
        shown = folders[0] if len(folders) == 1 else f"{os.path.commonpath(folders)} ({len(folders)} row folders)"
        parts: dict = {}  # what -> [bytes, rows]
        for e in group:
            for k, v in e.parts.items():
                total, count = parts.get(k, (0, 0))
                parts[k] = (total + v, count + 1)
        written = "; ".join(f"{k}{f' (x {n} rows)' if n > 1 else ''}: {format_bytes(v)}" for k, (v, n) in parts.items() if v)
        lower = list(dict.fromkeys([h for e in group for h in e.hints] + list(hints)))
        present = sum(e.present for e in group)
        raise DiskBudgetError(
            f"{what} needs about {format_bytes(needed)} more on the disk of {shown}, but only "
            f"{format_bytes(free)} is free{f' (keeping {format_bytes(reserve_bytes)} free: SISSI.DISK.RESERVE_MB)' if reserve_bytes else ''}.\n"
            f"It writes at most: {written}"
            f"{f'; {format_bytes(present)} of it is already there' if present else ''}.\n"
            f"Lower it with: {'; '.join(lower + ['an OUTPUT_DIR on a larger disk'])}. "
            "Or free space and start again; SISSI.DISK.CHECK False skips this check."
        )


# ---------------------------------------------------------------------------------------------
# the checks a run and run_rows call at start
# ---------------------------------------------------------------------------------------------
def _target_image_count(cfg) -> int:
    from detectron2.data import DatasetCatalog

    return sum(len(DatasetCatalog.get(name)) for name in cfg.SISSI.TARGET_DATASETS)


def check_run_fits(cfg, model, n_target_images: int, extra_checkpoints: int = 0) -> DiskEstimate:
    """At the start of a run: estimate what it writes into cfg.OUTPUT_DIR and, with
    SISSI.DISK.CHECK, refuse to start (DiskBudgetError) when that does not fit the free space."""
    ckpt, weights = checkpoint_sizes(model, momentum=cfg.SOLVER.MOMENTUM)
    est = estimate_run(cfg, ckpt, weights, n_target_images, extra_checkpoints)
    logger.info("Disk: this run writes at most %s into %s (%s); %s free", format_bytes(est.needed),
                cfg.OUTPUT_DIR, est.describe(), format_bytes(free_bytes(cfg.OUTPUT_DIR)))
    if cfg.SISSI.DISK.CHECK:
        check_fits(est, int(cfg.SISSI.DISK.RESERVE_MB) * 2**20)
    return est


def check_rows_fit(rows: dict, trunk: str, n_target_images: int | None = None, what: str = "This set of rows") -> dict:
    """At the start of run_rows (Table 1, the demo, the studies): the same check for all rows at
    once, before the trunk starts, so that a table does not stop at its sixth row."""
    trunk_cfg = rows[trunk]
    if n_target_images is None:
        n_target_images = _target_image_count(trunk_cfg)
    ckpt, weights = model_checkpoint_sizes(trunk_cfg)
    estimates = estimate_rows(rows, trunk, ckpt, weights, n_target_images)
    needed = sum(e.needed for e in estimates.values())
    logger.info("Disk: %d rows write at most %s (checkpoint %s); %s free in %s", len(rows), format_bytes(needed),
                format_bytes(ckpt), format_bytes(free_bytes(trunk_cfg.OUTPUT_DIR)), trunk_cfg.OUTPUT_DIR)
    if trunk_cfg.SISSI.DISK.CHECK:
        check_fits(list(estimates.values()), int(trunk_cfg.SISSI.DISK.RESERVE_MB) * 2**20, what=what,
                   hints=["fewer rows (tools/table1.py --rows ...)"])
    return estimates
