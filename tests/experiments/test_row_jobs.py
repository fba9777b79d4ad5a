"""Rows trained at once in their own processes (run_rows(jobs=2)) plan and train what the same
rows trained one after the other do; a failing row is named; the pool's thread share."""
import os

import pytest
import torch

from tests.conftest import tiny_config, write_tiny_dataset

EPOCHS = 4


@pytest.fixture(scope="module")
def coco_tiny(tmp_path_factory):
    """tiny data sets registered with register_sissi_dataset (files on disk), which a row's
    process registers again by itself."""
    from sissi_d2.data.datasets import register_sissi_dataset, unregister_sissi_dataset
    from sissi_d2.data.label_files import save_records_as_coco

    root = tmp_path_factory.mktemp("rowjobs")
    names = {}
    for name, (n, seed, keep) in {"source": (6, 1, 1.0), "target": (4, 2, 0.5), "val": (2, 3, 1.0),
                                  "test": (2, 4, 1.0)}.items():
        records = write_tiny_dataset(str(root / name), n, seed, keep)
        path = save_records_as_coco(records, root / f"{name}.json")
        names[name] = register_sissi_dataset(f"rowjobs_{name}", "coco", path)
    yield names
    for name in names.values():
        unregister_sissi_dataset(name)


def _row(out, rule, *opts):
    return tiny_config(out, "SISSI.SOURCE_DATASETS", "('rowjobs_source',)", "SISSI.TARGET_DATASETS",
                       "('rowjobs_target',)", "SISSI.SOURCE_VAL_DATASETS", "('rowjobs_val',)",
                       "DATASETS.TEST", "('rowjobs_test',)", "SISSI.START_RULE", rule,
                       "SISSI.CLONING.MODE", "on_correction", "SISSI.EPOCHS", str(EPOCHS), "SEED", "5", *opts)


def _rows(root):
    return {"trunk": _row(root / "trunk", "never"),
            "epoch2": _row(root / "epoch2", "epoch:2"),
            "late": _row(root / "late", "epoch:9"),  # never fires within 4 epochs: the trunk
            "own": _row(root / "own", "never", "SOLVER.BASE_LR", "0.02")}  # a past of its own


def test_rows_at_once_train_what_rows_one_by_one_train(coco_tiny, tmp_path):
    from sissi_d2.experiments.rows import run_rows

    # One thread here, so one per row's process too (the pool shares what this process has):
    # the same threads in both runs make the same float sums, and the weights can be compared bitwise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_rows(_rows(tmp_path / "serial"), trunk="trunk")
        parallel = run_rows(_rows(tmp_path / "parallel"), trunk="trunk", jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert list(parallel) == ["trunk", "epoch2", "late", "own"]
    for key in serial:
        for field in ("branched_from_epoch", "plan", "same_as"):
            assert parallel[key][field] == serial[key][field], (key, field)
        assert set(parallel[key]["metrics"]) == {"rowjobs_test"}, key
        assert os.path.isfile(tmp_path / "parallel" / key / "row.json"), key
    assert parallel["epoch2"]["branched_from_epoch"] == 2 and parallel["late"]["same_as"] == "trunk"
    # the branch was queued as the trunk started epoch 2, where its rule fired, not once the trunk had finished
    assert parallel["epoch2"]["queued_at_trunk_epoch"] == 2 and serial["epoch2"]["queued_at_trunk_epoch"] is None
    assert parallel["own"]["queued_at_trunk_epoch"] is None and parallel["late"]["queued_at_trunk_epoch"] is None
    assert parallel["own"]["branched_from_epoch"] is None and parallel["own"]["same_as"] is None
    for key in ("trunk", "epoch2", "own"):
        a = torch.load(tmp_path / "serial" / key / "model_final.pth", map_location="cpu", weights_only=True)["model"]
        b = torch.load(tmp_path / "parallel" / key / "model_final.pth", map_location="cpu", weights_only=True)["model"]
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
        # each row's process wrote its own log
        assert "Starting training" in (tmp_path / "parallel" / key / "log.txt").read_text(), key
    # the lr of "own" really differs: its weights are not the trunk's
    own = torch.load(tmp_path / "parallel" / "own" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    trunk = torch.load(tmp_path / "parallel" / "trunk" / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert any(not torch.equal(own[k], trunk[k]) for k in own)
    # run again: every row is reused, nothing trains
    again = run_rows(_rows(tmp_path / "parallel"), trunk="trunk", jobs=2)
    assert {k: e["plan"] for k, e in again.items()} == {k: e["plan"] for k, e in parallel.items()}
    assert {e["iterations_trained"] for e in again.values()} == {0} and parallel["epoch2"]["iterations_trained"] > 0


def test_a_failing_row_is_named_and_the_others_stop(coco_tiny, tmp_path):
    from sissi_d2.experiments.rows import run_rows

    rows = _rows(tmp_path)
    bad = _row(tmp_path / "bad", "never", "SOLVER.BASE_LR", "0.02")
    bad.defrost()
    bad.SISSI.SOURCE_DATASETS = ("not_registered_anywhere",)
    bad.freeze()
    with pytest.raises(RuntimeError, match=r"(?s)Row 'bad' failed in its process .*not_registered_anywhere.*run_rows\(setup="):
        run_rows({"trunk": rows["trunk"], "bad": bad}, trunk="trunk", jobs=2)


def test_jobs_must_be_positive_and_threads_follow_the_rows_running():
    import multiprocessing as mp

    from sissi_d2.experiments.row_jobs import RowPool, ShareCores

    with pytest.raises(ValueError, match="jobs must be >= 1"):
        RowPool(0)
    with pytest.raises(TypeError, match="must be picklable"):
        RowPool(2, hooks=lambda key, trainer: [])
    RowPool(1, hooks=lambda key, trainer: [])  # one row at a time: trained here, nothing is sent
    running = mp.Value("i", 2)
    share = ShareCores(4, running)
    assert share.threads() == 2
    running.value = 1
    assert share.threads() == 4
    running.value = 8
    assert share.threads() == 1


def test_sigterm_stops_the_rows_and_close_restores_the_handler():
    import signal

    from sissi_d2.experiments.row_jobs import RowPool

    before = signal.getsignal(signal.SIGTERM)
    pool = RowPool(2)
    try:
        with pytest.raises(SystemExit) as stop:
            signal.raise_signal(signal.SIGTERM)  # `kill PID`: unwinds to run_rows' finally, which closes the pool
        assert stop.value.code == 128 + signal.SIGTERM
    finally:
        pool.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_row_process_ends_when_its_parent_is_killed(tmp_path):
    """A row's process whose parent dies (SIGKILL: no finally runs) ends by itself instead of
    training on as an orphan."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time; import sissi_d2.experiments.row_jobs as j; "
            "j._exit_with_parent(int(sys.argv[1]), every_s=0.2); print('ready', flush=True); time.sleep(120)")
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(["bash", "-c", f'"{sys.executable}" -c "{code}" $$ & echo $! > {pid_file}; wait'],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\tZ" not in next(line for line in f if line.startswith("State:"))
        except FileNotFoundError:
            return False

    deadline = time.time() + 20
    while alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(child)
