"""Checkpoint retention never removes what --resume or a later branch needs."""
import errno
import logging
import os
import random
import shutil

import pytest
import torch

from tests.conftest import tiny_config


def _sissi_cfg(**sissi):
    from detectron2.config import get_cfg

    from sissi_d2.config import add_sissi_config

    cfg = add_sissi_config(get_cfg())
    for key, value in sissi.items():
        node, _, leaf = key.rpartition("__")
        target = cfg.SISSI
        for part in filter(None, node.split("__")):
            target = getattr(target, part)
        setattr(target, leaf, value)
    return cfg


def _checkpointer(folder, keep_last):
    from sissi_d2.engine.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return AtomicCheckpointer(model, str(folder), keep_last=keep_last, optimizer=optimizer)


def _names(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------------
# the pure policy
# ---------------------------------------------------------------------------------------------
def test_newest_k_resume_target_and_protected_are_kept():
    from sissi_d2.engine.checkpoint import checkpoints_to_delete

    names = [f"model_{i:07d}.pth" for i in (1, 3, 5, 7, 9)] + ["model_final.pth", "last_checkpoint", "config.yaml"]
    assert checkpoints_to_delete(names, 2) == ["model_0000001.pth", "model_0000003.pth", "model_0000005.pth"]
    # what --resume reads stays even when it is older than the newest K (a resumed run whose tag
    # names an older checkpoint than a newer file left by a crash)
    assert "model_0000003.pth" not in checkpoints_to_delete(names, 1, last_checkpoint="model_0000003.pth")
    # protected by iteration or by name
    assert checkpoints_to_delete(names, 1, protected=[3, "model_0000005.pth"]) == ["model_0000001.pth", "model_0000007.pth"]
    assert checkpoints_to_delete(names, 0) == []  # 0 = keep all
    assert "model_final.pth" not in checkpoints_to_delete(names, 1)


def test_checkpointer_prunes_after_each_save_and_logs(tmp_path, caplog):
    ck = _checkpointer(tmp_path, keep_last=2)
    (tmp_path / "sissi").mkdir()
    (tmp_path / "sissi" / "best_source_val.pth").write_bytes(b"best")
    with caplog.at_level(logging.INFO, logger="sissi_d2.engine.checkpoint"):
        for it in (1, 3, 5, 7):
            ck.save(f"model_{it:07d}", iteration=it)
        ck.save("model_final", iteration=7)
    assert _names(tmp_path) == ["last_checkpoint", "model_0000005.pth", "model_0000007.pth", "model_final.pth", "sissi"]
    assert (tmp_path / "sissi" / "best_source_val.pth").read_bytes() == b"best"
    deleted = [r.getMessage() for r in caplog.records if "Retention: deleted" in r.getMessage()]
    assert len(deleted) == 2 and "model_0000001.pth" in deleted[0] and "model_0000003.pth" in deleted[1]
    resumed = _checkpointer(tmp_path, keep_last=2)
    assert resumed.resume_or_load("", resume=True)["iteration"] == 7


def test_protected_checkpoints_survive_until_released(tmp_path):
    ck = _checkpointer(tmp_path, keep_last=1)
    ck.protect([3])
    asked = []
    ck.protect_with(lambda: asked.append(1) or ["model_0000005.pth"])
    for it in (1, 3, 5, 7, 9):
        ck.save(f"model_{it:07d}", iteration=it)
    assert asked
    assert [n for n in _names(tmp_path) if n.startswith("model_")] == [
        "model_0000003.pth", "model_0000005.pth", "model_0000009.pth"]
    ck.unprotect([3])
    ck._protect_fns.clear()  # every row has branched
    ck.prune()
    assert [n for n in _names(tmp_path) if n.startswith("model_")] == ["model_0000009.pth"]


def test_stale_temporary_checkpoint_is_removed_by_the_next_prune(tmp_path):
    ck = _checkpointer(tmp_path, keep_last=1)
    (tmp_path / ".model_0000001.pth.k3j_x9.tmp").write_bytes(b"x" * 100)  # a killed write
    ck.save("model_0000003", iteration=3)
    assert _names(tmp_path) == ["last_checkpoint", "model_0000003.pth"]


# ---------------------------------------------------------------------------------------------
# nothing --resume needs goes before its replacement is complete
# ---------------------------------------------------------------------------------------------
class _DiskFillsAfter:
    """A file whose disk fills after ``room`` bytes: what reaches the disk is cut short."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fill_disk(monkeypatch, room, only=None):
    """Make atomic writes (of files whose name contains ``only``) hit a full disk."""
    from sissi_d2.utils import atomic

    real_fdopen = os.fdopen
    real_mkstemp = atomic.tempfile.mkstemp
    current = {}

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        current[fd] = path
        return fd, path

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return _DiskFillsAfter(f, room) if only is None or only in os.path.basename(current.get(fd, "")) else f

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


@pytest.mark.parametrize("fails", ["checkpoint", "last_checkpoint"])
def test_full_disk_during_a_save_deletes_nothing_and_resume_continues(tmp_path, monkeypatch, fails):
    from sissi_d2.utils.disk import DiskFullError

    ck = _checkpointer(tmp_path, keep_last=1)
    ck.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    with monkeypatch.context() as m:
        _fill_disk(m, room=64 if fails == "checkpoint" else 2, only=".model_" if fails == "checkpoint" else ".last_")
        with pytest.raises(DiskFullError) as info:
            ck.save("model_0000003", iteration=3)
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path) in str(info.value) and "--resume" in str(info.value)
    assert not [n for n in _names(tmp_path) if n.endswith(".tmp")]  # nothing half-written
    assert (tmp_path / "model_0000001.pth").read_bytes() == before  # the previous one is intact
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    # the checkpoint itself may be complete when only the tag failed; --resume reads the tag
    assert _checkpointer(tmp_path, keep_last=1).resume_or_load("", resume=True)["iteration"] == 1
    # space freed: the same save goes through, and only now the older checkpoint goes
    ck.save("model_0000003", iteration=3)
    assert [n for n in _names(tmp_path) if n.startswith("model_")] == ["model_0000003.pth"]
    assert _checkpointer(tmp_path, keep_last=1).resume_or_load("", resume=True)["iteration"] == 3


# ---------------------------------------------------------------------------------------------
# a trunk keeps what its rows branch from
# ---------------------------------------------------------------------------------------------
def _planned_checkpoint_epochs(cfg, state):
    """The end-of-epoch trunk checkpoints run_rows reads for this row (its real planner)."""
    from sissi_d2.engine.start_rules import build_start_rule, recorded_signals

    plan = build_start_rule(cfg).branch_plan(state, recorded_signals(cfg), int(cfg.SISSI.EPOCHS))
    plan = None if plan is None else (plan.start_epoch, plan.restore_epoch)
    if plan is None or plan[0] == 0 or plan[1] == 0:
        return set()  # identical to the trunk, or trained from scratch
    start, restore = plan
    return {start - 1} | ({restore - 1} if restore is not None else set())


def _row_cfgs(epochs, patience):
    return [_sissi_cfg(START_RULE=rule, EPOCHS=epochs, ADELE__TRACK=True, SOURCE_VAL_DATASETS=("val",),
                       SOURCE_VAL__PATIENCE=patience)
            for rule in ("never", "adele", "source_val_loss", "epoch:3", f"epoch:{epochs - 1}", f"epoch:{epochs + 2}")]


def test_trunk_retention_keeps_every_checkpoint_a_planned_branch_needs():
    """A trunk simulated epoch by epoch (signals at each epoch start, a checkpoint at each epoch
    end, retention with K = 1 and the online protection), random signal curves: every checkpoint
    the real planner asks for is still there when the trunk ends, and none is kept for nothing."""
    from sissi_d2.engine.checkpoint import branch_checkpoint_epochs, checkpoints_to_delete, epoch_end_checkpoint

    rng = random.Random(0)
    ipe = 3
    for trial in range(300):
        epochs, patience = rng.randint(2, 12), rng.randint(1, 4)
        rows = _row_cfgs(epochs, patience)
        fire_at = rng.choice([None] + list(range(epochs)))
        losses = [rng.choice([rng.random(), 1.0 - 0.05 * e]) for e in range(epochs)]
        on_disk, state = set(), {}
        for epoch in range(epochs):
            # start of the epoch: the hooks observe the model after `epoch` epochs
            fired = fire_at if fire_at is not None and fire_at <= epoch else None
            state = {"MemorisationHook": {"detector": {"fired_epoch": fired}},
                     "SourceValLossHook": {"history": [[e, losses[e]] for e in range(epoch + 1)]}}
            # end of the epoch: the checkpoint, then retention
            on_disk.add(epoch_end_checkpoint(epoch, ipe))
            planned = branch_checkpoint_epochs(rows, state, epochs_seen=epoch + 1)
            protected = set(on_disk) if planned is None else {epoch_end_checkpoint(e, ipe) for e in planned}
            on_disk -= set(checkpoints_to_delete(on_disk, 1, protected))
        needed = set()
        for cfg in rows[1:]:
            needed |= {epoch_end_checkpoint(e, ipe) for e in _planned_checkpoint_epochs(cfg, state)}
        newest = epoch_end_checkpoint(epochs - 1, ipe)
        assert needed <= on_disk, (trial, needed - on_disk)
        assert on_disk == needed | {newest}, (trial, on_disk - needed)


def test_unknown_rule_keeps_everything():
    from sissi_d2.engine.checkpoint import branch_checkpoint_epochs

    assert branch_checkpoint_epochs([_sissi_cfg(START_RULE="my_rule")], {}) is None


def test_trunk_pruned_while_training_gives_the_same_branched_row(tiny_datasets, tmp_path):
    """A real trunk trained with retention K = 1 and the protection of an epoch:2 row keeps the
    checkpoint that row branches from; the row branched from it ends bitwise where the row trained
    alone ends; --resume of the pruned trunk finds its final model; once the row has branched, the
    trunk prunes the rest."""
    from sissi_d2.engine.checkpoint import epoch_end_checkpoint, protect_branch_checkpoints, prune_checkpoints
    from sissi_d2.engine.trainer import SISSITrainer

    def cfg(out, rule, cloning="never"):
        return tiny_config(out, "SISSI.START_RULE", rule, "SISSI.CLONING.MODE", cloning, "SEED", "5")

    row_cfg = cfg(tmp_path / "row", "epoch:2", "on_correction")
    trunk = SISSITrainer(cfg(tmp_path / "trunk", "never"))
    trunk.checkpointer.keep_last = 1
    protect_branch_checkpoints(trunk, [row_cfg])
    trunk.resume_or_load(resume=False)
    trunk.train()
    ipe = trunk.iters_per_epoch
    branch_file = epoch_end_checkpoint(1, ipe)  # weights at the start of epoch 2
    kept = sorted(n for n in os.listdir(tmp_path / "trunk") if n.startswith("model_"))
    assert kept == sorted({branch_file, epoch_end_checkpoint(2, ipe), "model_final.pth"}), kept

    resumed = SISSITrainer(cfg(tmp_path / "trunk", "never"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == resumed.max_iter

    # branch as run_rows does: the trunk checkpoint and a last_checkpoint tag naming it
    (tmp_path / "row").mkdir()
    shutil.copyfile(tmp_path / "trunk" / branch_file, tmp_path / "row" / branch_file)
    (tmp_path / "row" / "last_checkpoint").write_text(branch_file)
    row = SISSITrainer(row_cfg)
    row.checkpointer.keep_last = 1
    row.resume_or_load(resume=True)
    assert row.start_iter == 2 * ipe
    row.train()
    assert not (tmp_path / "row" / branch_file).exists()  # the row's own retention

    alone = SISSITrainer(cfg(tmp_path / "alone", "epoch:2", "on_correction"))
    alone.resume_or_load(resume=False)
    alone.train()
    branched = torch.load(tmp_path / "row" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    for k, v in alone.model.state_dict().items():
        assert torch.equal(v, branched[k]), k

    deleted = prune_checkpoints(str(tmp_path / "trunk"), keep_last=1)  # every row has branched
    assert [os.path.basename(p) for p in deleted] == [branch_file]
