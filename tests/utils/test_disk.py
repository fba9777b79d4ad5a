"""Disk budget at start, and a clean stop on a full disk (atomic writes under ENOSPC)."""
import collections
import errno
import json
import os
import pickle
import subprocess

import pytest
import torch

from tests.engine.test_checkpoint_retention import _fill_disk, _sissi_cfg

MB = 2**20


def _run_folder(tmp_path):
    """A row folder as training leaves it: checkpoints, the tag, snapshots, memorisation.json."""
    run = tmp_path / "row"
    (run / "sissi" / "pseudo_labels").mkdir(parents=True)
    for it in (3, 5):
        (run / f"model_{it:07d}.pth").write_bytes(b"w" * (1000 * it))
    (run / "last_checkpoint").write_text("model_0000005.pth")
    for epoch in (2, 3):
        (run / "sissi" / "pseudo_labels" / f"epoch_{epoch:04d}.json").write_text(json.dumps({"epoch": epoch}))
    (run / "sissi" / "memorisation.json").write_text(json.dumps({"ap50": [0.1]}))
    return run


def _no_temp_files(folder):
    return not [n for _, _, files in os.walk(folder) for n in files if n.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# a full disk during the writes of a run
# ---------------------------------------------------------------------------------------------
def test_full_disk_writing_memorisation_json(tmp_path, monkeypatch):
    from sissi_d2.utils.atomic import atomic_write_json
    from sissi_d2.utils.disk import DiskFullError

    run = _run_folder(tmp_path)
    path = run / "sissi" / "memorisation.json"
    with monkeypatch.context() as m:
        _fill_disk(m, room=5)
        with pytest.raises(DiskFullError) as info:
            atomic_write_json(str(path), {"ap50": [0.1, 0.2] * 1000})
    message = str(info.value)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert f"No space left on the disk of {run}" in message  # the row folder, found from the tag
    assert "model_0000003.pth" in message and "model_0000005.pth" not in message  # what can go
    assert os.path.join("sissi", "pseudo_labels", "epoch_0002.json") in message
    assert "--resume" in message
    assert json.loads(path.read_text()) == {"ap50": [0.1]}  # the previous version is intact
    assert _no_temp_files(run)
    atomic_write_json(str(path), {"ap50": [0.1, 0.2]})  # space freed: the write goes through
    assert json.loads(path.read_text()) == {"ap50": [0.1, 0.2]}


def test_full_disk_writing_a_pseudo_label_snapshot(tmp_path, monkeypatch):
    try:
        from sissi_d2.data.label_files import save_records_as_coco
    except ImportError:
        from sissi_d2.data.datasets import save_records_as_coco
    from sissi_d2.utils.disk import DiskFullError

    run = _run_folder(tmp_path)
    path = run / "sissi" / "pseudo_labels" / "epoch_0003.json"
    before = path.read_bytes()
    records = [{"file_name": f"/data/img{i}.png", "image_id": f"img{i}", "height": 64, "width": 64,
                "annotations": [{"bbox": [1.5, 2.5, 10.0, 12.0], "bbox_mode": 0, "category_id": 0, "score": 0.9}] * 20}
               for i in range(10)]
    with monkeypatch.context() as m:
        _fill_disk(m, room=4096)
        with pytest.raises(DiskFullError, match="No space left on the disk of"):
            save_records_as_coco(records, str(path))
    assert path.read_bytes() == before
    assert _no_temp_files(run)
    save_records_as_coco(records, str(path))
    assert len(json.loads(path.read_text())["annotations"]) == 200


def test_full_disk_writing_a_checkpoint_through_torch_save(tmp_path, monkeypatch):
    """torch.save hides the OSError of write() in a RuntimeError; it is still a full disk."""
    from sissi_d2.utils.atomic import atomic_open
    from sissi_d2.utils.disk import DiskFullError

    path = tmp_path / "model_final.pth"
    torch.save({"w": torch.zeros(3)}, path)
    with monkeypatch.context() as m:
        _fill_disk(m, room=100)
        with pytest.raises(DiskFullError) as info:
            with atomic_open(str(path), "wb") as f:
                torch.save({"w": torch.ones(10000)}, f)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("call", ["fsync", "replace", "mkstemp"])
def test_full_disk_at_fsync_rename_or_file_creation(tmp_path, monkeypatch, call):
    from sissi_d2.utils import atomic
    from sissi_d2.utils.disk import DiskFullError

    path = tmp_path / "row.json"
    path.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(atomic.tempfile if call == "mkstemp" else atomic.os, call, full)
        with pytest.raises(DiskFullError):
            atomic.atomic_write_json(str(path), {"new": 1})
    assert path.read_text() == "old"
    assert _no_temp_files(tmp_path)


def test_other_errors_pass_through_unchanged(tmp_path, monkeypatch):
    from sissi_d2.utils.atomic import atomic_write_json

    with pytest.raises(TypeError):
        atomic_write_json(str(tmp_path / "x.json"), {"not json": object()})
    assert _no_temp_files(tmp_path)


def test_full_disk_anywhere_in_a_run_stops_with_the_row_folder(tmp_path):
    """E.g. a progress bar or a log line writing to a full disk mid pseudo-labelling."""
    from sissi_d2.utils.disk import DiskFullError, stop_cleanly_on_full_disk

    run = _run_folder(tmp_path)
    with pytest.raises(DiskFullError) as info:
        with stop_cleanly_on_full_disk(str(run)):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(run) in str(info.value) and "model_0000003.pth" in str(info.value)
    assert info.value.folder == str(run)
    with pytest.raises(ValueError):
        with stop_cleanly_on_full_disk(str(run)):
            raise ValueError("not a disk problem")
    copy = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert str(copy) == str(info.value) and copy.errno == errno.ENOSPC


def test_deletable_files_never_list_what_resume_reads(tmp_path):
    from sissi_d2.utils.disk import deletable_files

    run = _run_folder(tmp_path)
    (run / ".model_0000007.pth.abc123.tmp").write_bytes(b"t" * 10)
    listed = {os.path.relpath(p, run) for p, _, _ in deletable_files(str(run))}
    assert listed == {"model_0000003.pth", ".model_0000007.pth.abc123.tmp",
                      os.path.join("sissi", "pseudo_labels", "epoch_0002.json")}


def _mount_tmpfs(folder, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")


def test_a_really_full_small_file_system(tmp_path):
    """The same on a real 1 MB file system: a checkpoint that does not fit leaves the previous one
    and no temporary file; after freeing space the write succeeds."""
    from sissi_d2.engine.checkpoint import AtomicCheckpointer
    from sissi_d2.utils.disk import DiskFullError

    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "1m")
    try:
        model = torch.nn.Linear(300, 300)  # 353 KB of weights, 705 KB with momentum
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        ck = AtomicCheckpointer(model, str(disk), keep_last=1, optimizer=optimizer)
        ck.save("model_0000001", iteration=1)
        before = (disk / "model_0000001.pth").read_bytes()
        with pytest.raises(DiskFullError) as info:
            ck.save("model_0000003", iteration=3)  # two checkpoints do not fit in 1 MB
        assert str(disk) in str(info.value)
        assert sorted(os.listdir(disk)) == ["last_checkpoint", "model_0000001.pth"]
        assert (disk / "model_0000001.pth").read_bytes() == before
        (disk / "model_0000001.pth").unlink()  # the user frees space
        ck.save("model_0000003", iteration=3)
        assert ck.resume_or_load("", resume=True)["iteration"] == 3
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------
# estimates and the check at start
# ---------------------------------------------------------------------------------------------
def test_checkpoint_size_is_weights_plus_momentum():
    from sissi_d2.utils.disk import CHECKPOINT_OVERHEAD_BYTES, checkpoint_sizes

    model = torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.BatchNorm1d(50))
    ckpt, weights = checkpoint_sizes(model, momentum=0.9)
    params = (100 * 50 + 50 + 50 + 50) * 4
    buffers = (50 + 50) * 4 + 8  # running mean / var, num_batches_tracked (int64)
    assert weights == params + buffers
    assert ckpt == weights + params + CHECKPOINT_OVERHEAD_BYTES
    assert checkpoint_sizes(model, momentum=0.0)[0] == weights + CHECKPOINT_OVERHEAD_BYTES


def test_pseudo_label_bytes_are_an_upper_bound():
    try:
        from sissi_d2.data.label_files import records_to_coco
    except ImportError:
        from sissi_d2.data.datasets import records_to_coco
    from sissi_d2.utils.disk import BYTES_PER_PSEUDO_LABEL

    ann = {"bbox": [123.45678901234, 234.5678901234, 160.123456789012, 270.987654321098], "bbox_mode": 0,
           "category_id": 0, "score": 0.876543210987}
    records = [{"file_name": f"/data/lab/train/image_{i:05d}.png", "image_id": f"image_{i:05d}", "height": 1024,
                "width": 1024, "annotations": [ann] * 200} for i in range(20)]
    written = len(json.dumps(records_to_coco(records), indent=1))
    assert written <= BYTES_PER_PSEUDO_LABEL * 200 * 20


@pytest.mark.parametrize("keep_last, epochs, every, expected", [
    (1, 60, 1, 3),    # the newest, the one being written, model_final
    (3, 60, 1, 5),
    (0, 60, 1, 61),   # keep all: one per epoch + model_final
    (0, 60, 5, 13),
    (5, 4, 1, 5),     # fewer epochs than K: all of them
])
def test_kept_checkpoint_count(keep_last, epochs, every, expected):
    from sissi_d2.utils.disk import kept_checkpoint_count

    cfg = _sissi_cfg(EPOCHS=epochs, CHECKPOINT_EVERY_EPOCHS=every, DISK__KEEP_LAST=keep_last)
    assert kept_checkpoint_count(cfg) == expected


def test_estimate_of_a_row(tmp_path):
    from sissi_d2.utils.disk import BYTES_OF_LOGS_PER_RUN, BYTES_PER_PSEUDO_LABEL, estimate_run

    cfg = _sissi_cfg(EPOCHS=60, START_RULE="adele", SOURCE_VAL_DATASETS=("val",), DISK__KEEP_LAST=1)
    cfg.OUTPUT_DIR = str(tmp_path / "row")
    est = estimate_run(cfg, 110 * MB, 55 * MB, n_target_images=25, extra_checkpoints=2)
    snapshots = 59 * 25 * 200 * BYTES_PER_PSEUDO_LABEL
    assert est.total == 3 * 110 * MB + 2 * 110 * MB + 2 * 55 * MB + snapshots + BYTES_OF_LOGS_PER_RUN
    assert est.present == 0 and est.needed == est.total
    # a resumed run has written part of it already
    (tmp_path / "row").mkdir()
    (tmp_path / "row" / "model_0000012.pth").write_bytes(b"x" * MB)
    assert estimate_run(cfg, 110 * MB, 55 * MB, 25).present == MB
    # the weak-only row writes no snapshots; keeping everything costs one checkpoint per epoch
    keep_all = _sissi_cfg(EPOCHS=60, START_RULE="never", DISK__KEEP_LAST=0)
    keep_all.OUTPUT_DIR = str(tmp_path / "all")
    est = estimate_run(keep_all, 110 * MB, 55 * MB, 25)
    assert est.total == 61 * 110 * MB + BYTES_OF_LOGS_PER_RUN
    assert any("SISSI.DISK.KEEP_LAST 1" in h for h in est.hints)


def _free(monkeypatch, free_bytes):
    from sissi_d2.utils import disk

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(10 * free_bytes, 9 * free_bytes, free_bytes))


def test_a_run_that_does_not_fit_refuses_to_start_with_what_to_change(tmp_path, monkeypatch):
    from sissi_d2.utils.disk import DiskBudgetError, check_fits, check_run_fits

    cfg = _sissi_cfg(EPOCHS=60, START_RULE="never", DISK__KEEP_LAST=0)
    cfg.OUTPUT_DIR = str(tmp_path / "out" / "weak_only")  # does not exist yet: its parent's disk
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights, ~9 MB per checkpoint
    _free(monkeypatch, 300 * MB)
    with pytest.raises(DiskBudgetError) as info:
        check_run_fits(cfg, model, n_target_images=25)
    message = str(info.value)
    # 61 checkpoints of 8 MB + 1 MB, and 50 MB of logs
    assert "needs about 576.9 MB more on the disk of" in message and "300.0 MB is free" in message
    assert "keeping 1.0 GB free: SISSI.DISK.RESERVE_MB" in message
    assert "61 checkpoints x 8.6 MB: 526.9 MB" in message
    assert "SISSI.DISK.KEEP_LAST 1 (now 0, all)" in message and "SISSI.DISK.CHECK False" in message
    # lowering what the message names makes it fit
    cfg.SISSI.DISK.KEEP_LAST = 1
    cfg.SISSI.DISK.RESERVE_MB = 100
    est = check_run_fits(cfg, model, n_target_images=25)
    assert est.needed < 200 * MB
    # the switch
    cfg.SISSI.DISK.KEEP_LAST = 0
    cfg.SISSI.DISK.CHECK = False
    check_run_fits(cfg, model, n_target_images=25)
    with pytest.raises(DiskBudgetError, match=r"keeping 250.0 MB free: SISSI.DISK.RESERVE_MB"):
        check_fits(est, reserve_bytes=250 * MB)


def test_rows_are_checked_together_before_the_trunk_starts(tmp_path, monkeypatch):
    from sissi_d2.utils.disk import DiskBudgetError, check_fits, estimate_rows

    rows = {}
    for name, rule in (("weak_only", "never"), ("adele", "adele"), ("baseline", "source_val_loss")):
        cfg = _sissi_cfg(EPOCHS=20, START_RULE=rule, SOURCE_VAL_DATASETS=("val",))
        cfg.OUTPUT_DIR = str(tmp_path / "table" / name)
        rows[name] = cfg
    estimates = estimate_rows(rows, "weak_only", 110 * MB, 55 * MB, n_target_images=25)
    # the trunk keeps the checkpoints its rows may branch from: one for adele, two for baseline
    # (its start and its best weights)
    assert estimates["weak_only"].total - estimates["adele"].total == 3 * 110 * MB - 19 * 25 * 200 * 250
    total = sum(e.total for e in estimates.values())
    _free(monkeypatch, total)  # each row fits alone, all of them together only without the reserve
    check_fits(list(estimates.values()))
    with pytest.raises(DiskBudgetError) as info:
        check_fits(list(estimates.values()), reserve_bytes=MB, what="Table 1")
    assert str(info.value).startswith("Table 1 needs about") and "(3 row folders)" in str(info.value)
