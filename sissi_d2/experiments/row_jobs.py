"""Rows trained at once, each in its own process, sharing the CPU cores (``run_rows(jobs=N)``).

Why: a CPU training step of the lean model does not keep two cores busy. Its convolutions run
1.6x faster on two threads than on one (2.7 vs 4.3 s per step on the 2-core AVX2 host), and the
data loading, the per-epoch checks and the pseudo-labelling's fusion run largely on one thread.
Two rows trained at once with one thread each move 1.2-1.4x more iterations per hour than the same
rows one after the other with two threads (measured: docs/performance.md). The trunk and the
rows with a past of their own (the Oracle) need nothing from each other, and the branches need
only the trunk's checkpoints, so they can run side by side. A branch can even start while the
trunk still trains: the trunk's process reports its start signals at the start of every epoch
(:class:`ReportEpochSignals`), and ``run_rows`` starts a row as soon as its rule has fired on
that record and a core is free.

Each row runs in a spawned process (not forked: a forked child of a process that has run
OpenMP can hang). The process registers again the data sets registered with
``register_sissi_dataset`` (the catalogs hold functions, which do not travel between processes),
logs to stdout with the row's name and to ``<OUTPUT_DIR>/log.txt``, runs the caller's
``setup(key)`` if any (which may change that logging), and at every step uses
``cores // rows running`` threads: when a row ends, the ones still running take its cores.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import queue as queue_module
import signal
import threading
import time
import traceback

import torch
from detectron2.engine import HookBase

__all__ = ["RowPool", "ReportEpochSignals", "ShareCores", "default_jobs"]

logger = logging.getLogger(__name__)


def default_jobs(cfgs) -> int:
    """Rows to train at once by default: 2 when every row trains on the CPU and this process has
    at least 2 threads (the measured gain above), else 1 (a GPU is kept by one row at a time)."""
    on_cpu = all(str(cfg.MODEL.DEVICE).startswith("cpu") for cfg in cfgs)
    return 2 if on_cpu and torch.get_num_threads() >= 2 else 1


class ShareCores(HookBase):
    """Before each step, use this process's share of the cores: ``cores // rows running``."""

    def __init__(self, cores: int, running):
        self.cores, self.running = cores, running

    def threads(self) -> int:
        return max(1, self.cores // max(1, self.running.value))

    def before_step(self):
        n = self.threads()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)


class ReportEpochSignals(HookBase):
    """At the start of each epoch, once the epoch hooks have measured it, send the hook states
    to the parent: ``(key, "progress", {"epochs_seen", "iters_per_epoch", "hooks_state"})``.
    Registered after the trainer's own hooks, so ``epochs_seen`` counts the epoch starting now."""

    def __init__(self, results, key: str):
        self.results, self.key = results, key

    def before_step(self):
        trainer = self.trainer
        ipe = trainer.iters_per_epoch
        if trainer.iter % ipe == 0:
            from .rows import hooks_state

            self.results.put((self.key, "progress", {"epochs_seen": trainer.iter // ipe + 1, "iters_per_epoch": ipe,
                                                     "hooks_state": hooks_state(trainer)}))


def _setup_logging(key: str, output_dir: str) -> None:
    from detectron2.utils.logger import setup_logger

    os.makedirs(output_dir, exist_ok=True)
    log = os.path.join(output_dir, "log.txt")
    setup_logger(log, name="detectron2", abbrev_name=f"{key}:d2")
    setup_logger(log, name="sissi_d2", abbrev_name=f"{key}:sissi_d2")
    setup_logger(log, name="fvcore", abbrev_name=f"{key}:fvcore")


def _exit_with_parent(parent_pid: int, every_s: float = 5.0) -> None:
    """End this process when its parent is gone (killed with SIGKILL, say): an orphaned row would
    go on taking the cores. Its checkpoints are written atomically, so stopping anywhere is safe."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(results, key, cfg, protect, report, trainer_cls, hooks, setup, datasets, cores, running, parent_pid) -> None:
    """A row's process: train and evaluate it, put (key, "ok", result) or (key, "error", traceback);
    with ``report``, also (key, "progress", ...) at each epoch start (:class:`ReportEpochSignals`)."""
    _exit_with_parent(parent_pid)
    try:
        import sissi_d2  # noqa: F401  (the compatibility patches, in a fresh interpreter)
        from sissi_d2.data.datasets import register_sissi_datasets

        from .rows import train_row

        share = ShareCores(cores, running)
        torch.set_num_threads(share.threads())
        _setup_logging(key, cfg.OUTPUT_DIR)
        register_sissi_datasets(datasets)
        if setup is not None:
            setup(key)
        extra = [share] + ([ReportEpochSignals(results, key)] if report else [])
        result = train_row(key, cfg, trainer_cls, hooks, protect, extra_hooks=extra)
        results.put((key, "ok", result))
    except BaseException:  # noqa: B902  (reported to the parent, which raises it with the row's name)
        results.put((key, "error", traceback.format_exc()))


class RowPool:
    """Rows to train, in submission order, at most ``jobs`` at a time.

    ``jobs == 1`` trains each row in this process when its result is asked for (:meth:`next_done`),
    so that the caller logs between rows exactly as if it trained them itself.
    """

    def __init__(self, jobs: int = 1, trainer_cls=None, hooks=None, setup=None):
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1 (rows trained at once), got {jobs}")
        self.jobs = int(jobs)
        self.trainer_cls, self.hooks, self.setup = trainer_cls, hooks, setup
        self.waiting = collections.deque()  # (key, cfg, protect, report)
        self.running = {}  # key -> (process, output_dir)
        if self.jobs > 1:
            import pickle

            from sissi_d2.data.datasets import registered_sissi_datasets

            try:
                pickle.dumps((trainer_cls, hooks, setup))
            except Exception as e:  # a lambda or a class defined inside a function
                raise TypeError(f"run_rows(jobs={self.jobs}) sends trainer_cls, hooks and setup to each row's process, "
                                f"so they must be picklable (defined at module level): {e}. Use jobs=1 to train "
                                "the rows in this process with them.") from e

            self._ctx = mp.get_context("spawn")
            self._results = self._ctx.Queue()
            self._count = self._ctx.Value("i", 0)
            self._datasets = registered_sissi_datasets()
            self._cores = torch.get_num_threads()  # what this process was given (OMP_NUM_THREADS, or all cores)
            # `kill PID` of this process stops its rows too (close() runs), as Ctrl-C does
            self._sigterm = None
            if threading.current_thread() is threading.main_thread():
                self._sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)

    def submit(self, key: str, cfg, protect=(), report: bool = False) -> None:
        """Queue a row; ``report``: its process reports its start signals at each epoch start (a
        trunk), passed to ``next_done(on_progress=...)``; with ``jobs == 1`` nothing is reported."""
        self.waiting.append((key, cfg, list(protect), bool(report)))

    def pending(self) -> bool:
        return bool(self.waiting or self.running)

    def next_done(self, on_progress=None) -> tuple:
        """(key, result of ``train_row``) of the next row to finish; raises RuntimeError naming the
        row if it failed. Meanwhile ``on_progress(key, report)`` is called with each report of a
        row submitted with ``report=True``; it may submit rows, which start when a slot is free."""
        if self.jobs == 1:
            from .rows import train_row

            key, cfg, protect, _ = self.waiting.popleft()
            return key, train_row(key, cfg, self.trainer_cls, self.hooks, protect)
        self._start()
        while True:
            try:
                key, status, payload = self._results.get(timeout=2.0)
            except queue_module.Empty:
                for key, (proc, out) in self.running.items():
                    if proc.exitcode not in (None, 0):  # died without a word: killed, out of memory
                        raise RuntimeError(
                            f"Row {key!r}: its process ended with exit code {proc.exitcode} without a result "
                            f"(killed? out of memory?). Its log: {os.path.join(out, 'log.txt')}. Run the same "
                            "command again to resume it from its last checkpoint.")
                continue
            if status == "progress":
                if on_progress is not None:
                    on_progress(key, payload)
                self._start()
                continue
            proc, out = self.running.pop(key)
            proc.join()
            self._count.value = len(self.running)
            if status == "error":
                hint = ("\nA row's process registers again the data sets registered with register_sissi_dataset "
                        "only: register any other in a function given as run_rows(setup=...), which each row's process calls with the row's key."
                        if "are not registered" in payload else "")
                raise RuntimeError(f"Row {key!r} failed in its process (log: {os.path.join(out, 'log.txt')}):\n"
                                   f"{payload}{hint}")
            self._start()
            return key, payload

    def _start(self) -> None:
        while self.waiting and len(self.running) < self.jobs:
            key, cfg, protect, report = self.waiting.popleft()
            self._count.value = len(self.running) + 1
            proc = self._ctx.Process(
                target=_work, name=f"row-{key}",
                args=(self._results, key, cfg, protect, report, self.trainer_cls, self.hooks, self.setup, self._datasets,
                      self._cores, self._count, os.getpid()))
            proc.start()
            self.running[key] = (proc, cfg.OUTPUT_DIR)
            logger.info("Row %r: training in process %d (log: %s)", key, proc.pid, os.path.join(cfg.OUTPUT_DIR, "log.txt"))

    def close(self) -> None:
        """Stop rows still running (after an error or an interrupt); their checkpoints stay for --resume."""
        for key, (proc, _) in list(self.running.items()):
            if proc.is_alive():
                logger.warning("Row %r: stopping its process %d", key, proc.pid)
                proc.terminate()
            proc.join(timeout=30)
        self.running.clear()
        if self.jobs > 1 and self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)
