"""Named data sets: the synthetic layout and the shared real data (skipped when absent)."""
import os

import numpy as np
import pytest

import sissi_d2  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog

from sissi_d2.data import datasets as ds
from sissi_d2.data.datasets import registry
from sissi_d2.data.builtin import (
    SHARED_DATASETS,
    SYNTHETIC_DATASETS,
    register_shared_datasets,
    register_synthetic_datasets,
)
from sissi_d2.data.datasets import load_cellpose_folder, save_records_as_coco, shared_data_root
from sissi_d2.data.synthetic import write_synthetic_dataset

SYNTH_NAMES = list(SYNTHETIC_DATASETS) + ["synth_target_train_weak"]
SHARED_NAMES = list(SHARED_DATASETS) + ["usiigaci_train_weak"]
SHARED_ROOT = shared_data_root()
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED_ROOT),
    reason=f"shared real data not found at {SHARED_ROOT} (set SISSI_SHARED_DATA to run these tests)",
)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Take the given catalog names out for the test and put the previous entries back after,
    so that other tests' registrations of the same names survive. Caches go to tmp."""
    monkeypatch.setenv("SISSI_CACHE_DIR", str(tmp_path / "cache"))
    saved = {}

    def take(names):
        for n in names:
            if n not in saved:
                saved[n] = (DatasetCatalog[n] if n in DatasetCatalog.list() else None,
                            MetadataCatalog.get(n) if n in MetadataCatalog.list() else None,
                            registry._REGISTERED.get(n))
                ds.unregister_sissi_dataset(n)

    yield take
    for n, (func, meta, sig) in saved.items():
        ds.unregister_sissi_dataset(n)
        if func is not None:
            DatasetCatalog.register(n, func)
        if meta is not None:
            MetadataCatalog[n] = meta
        if sig is not None:
            registry._REGISTERED[n] = sig


@pytest.fixture
def synth_root(tmp_path):
    root = tmp_path / "synth"
    write_synthetic_dataset(root, n_source_train=3, n_source_val=2, n_target_train=3, n_target_test=2,
                            size=(64, 80), seed=0)
    return root


def test_register_synthetic_datasets(synth_root, isolated, tmp_path):
    isolated(SYNTH_NAMES)
    names = register_synthetic_datasets(synth_root)
    assert names == list(SYNTHETIC_DATASETS)  # no weak labels yet
    assert register_synthetic_datasets(synth_root) == names  # twice is safe
    counts = {n: len(DatasetCatalog.get(n)) for n in names}
    assert counts == {"synth_source_train": 3, "synth_source_val": 2, "synth_target_train_images": 3,
                      "synth_target_train_oracle": 3, "synth_target_test": 2}
    assert all(r["annotations"] == [] for r in DatasetCatalog.get("synth_target_train_images"))
    oracle = DatasetCatalog.get("synth_target_train_oracle")
    assert sum(len(r["annotations"]) for r in oracle) > 0
    assert [r["file_name"] for r in oracle] == [r["file_name"] for r in DatasetCatalog.get("synth_target_train_images")]
    for n in names:
        meta = MetadataCatalog.get(n)
        assert meta.thing_classes == ["cell"] and meta.evaluator_type == "coco"

    # weak labels appear (written relative to the images by a weak-label pipeline)
    weak = oracle[:2]
    save_records_as_coco(weak, synth_root / "target_train_weak.json", image_root=synth_root / "target" / "train")
    names2 = register_synthetic_datasets(synth_root)
    assert names2 == names + ["synth_target_train_weak"]
    loaded = DatasetCatalog.get("synth_target_train_weak")
    assert [r["file_name"] for r in loaded] == [r["file_name"] for r in weak]
    for a, b in zip(loaded, weak):
        np.testing.assert_allclose([x["bbox"] for x in a["annotations"]], [x["bbox"] for x in b["annotations"]])
    assert MetadataCatalog.get("synth_target_train_weak").json_file == str(synth_root / "target_train_weak.json")

    # the same names for another root: a clear conflict, not a silent switch
    other = tmp_path / "other"
    write_synthetic_dataset(other, n_source_train=1, n_source_val=1, n_target_train=1, n_target_test=1, size=48)
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_datasets(other)


def test_register_synthetic_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="sissi_d2.data.synthetic"):
        register_synthetic_datasets(tmp_path / "nowhere")


def test_register_shared_absent_root_registers_nothing(tmp_path):
    assert register_shared_datasets(tmp_path / "no_shared_data") == []


def test_register_shared_partial_layout(tmp_path, isolated):
    """Only the folders that exist are registered (here a fake root with the test split only)."""
    isolated(SHARED_NAMES)
    import cv2

    test_dir = tmp_path / "fake_shared" / "usiigaci_phase" / "test"
    test_dir.mkdir(parents=True)
    cv2.imwrite(str(test_dir / "s_img.png"), np.zeros((20, 30), np.uint8))
    lab = np.zeros((20, 30), np.uint16)
    lab[2:12, 3:9] = 1
    cv2.imwrite(str(test_dir / "s_masks.png"), lab)
    assert register_shared_datasets(tmp_path / "fake_shared") == ["usiigaci_test"]
    (rec,) = DatasetCatalog.get("usiigaci_test")
    assert rec["annotations"][0]["bbox"] == [3.0, 2.0, 9.0, 12.0]


@needs_shared
def test_shared_real_data(isolated, tmp_path):
    isolated(SHARED_NAMES)
    names = register_shared_datasets()
    assert names == list(SHARED_DATASETS)  # no weak labels in the tmp cache
    assert register_shared_datasets() == names

    test = DatasetCatalog.get("usiigaci_test")
    assert len(test) == 10
    # 612 annotated cells; one label of 2 pixels (set16, id 50) is dropped by the min_area rule
    assert sum(len(r["annotations"]) for r in test) == 611
    assert all((r["height"], r["width"]) == (1022, 1024) for r in test)
    assert MetadataCatalog.get("usiigaci_test").thing_classes == ["cell"]

    images = DatasetCatalog.get("usiigaci_train_images")
    assert len(images) == 25 and all(r["annotations"] == [] for r in images)
    oracle = DatasetCatalog.get("usiigaci_train_oracle")
    assert [r["file_name"] for r in oracle] == [r["file_name"] for r in images]
    assert 1590 <= sum(len(r["annotations"]) for r in oracle) <= 1603

    val = DatasetCatalog.get("dsb2018_fluor_val")
    assert len(val) == 60 and sum(len(r["annotations"]) for r in val) == 2453
    # the big source split is registered, lazily (not converted here: it takes seconds)
    assert MetadataCatalog.get("dsb2018_fluor_train").sissi_path == os.path.join(SHARED_ROOT, "dsb2018_fluor", "train")

    # the weak labels are registered once a pipeline has written them to the cache dir
    weak = [dict(r, annotations=o["annotations"][:5]) for r, o in zip(images[:3], oracle[:3])]
    save_records_as_coco(weak, tmp_path / "cache" / "usiigaci_train_weak.json",
                         image_root=os.path.join(SHARED_ROOT, "usiigaci_phase", "train"))
    assert register_shared_datasets() == names + ["usiigaci_train_weak"]
    loaded = DatasetCatalog.get("usiigaci_train_weak")
    assert [r["file_name"] for r in loaded] == [r["file_name"] for r in images[:3]]
    assert [len(r["annotations"]) for r in loaded] == [5, 5, 5]


@needs_shared
def test_real_labels_with_specks_and_split_blobs():
    """The real test masks carry stray specks and two-blob labels (data README): the rule keeps
    boxes close to the main body for specks and covers both blobs for split labels."""
    from sissi_d2.data.datasets import boxes_from_label_image
    from sissi_d2.data.image_io import read_label_image

    lab = read_label_image(os.path.join(SHARED_ROOT, "usiigaci_phase", "test", "set34_masks.png"))
    boxes, ids = boxes_from_label_image(lab, return_ids=True)
    ys, xs = np.nonzero(lab == 25)  # two blobs of 1053 and 431 px
    np.testing.assert_array_equal(boxes[list(ids).index(25)], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    lab = read_label_image(os.path.join(SHARED_ROOT, "usiigaci_phase", "test", "set30_masks.png"))
    boxes, ids = boxes_from_label_image(lab, return_ids=True)
    with_specks = boxes_from_label_image(lab, speck_fraction=0.0)
    k = list(ids).index(11)  # an 852 px cell with stray specks of 8, 3 and 2 px
    import cv2

    n, parts, stats, _ = cv2.connectedComponentsWithStats((lab == 11).astype(np.uint8), connectivity=8)
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, 4]))]
    np.testing.assert_array_equal(boxes[k], [x, y, x + w, y + h])  # the main body only
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(with_specks[k]) > 1.5 * area(boxes[k])
    cached = load_cellpose_folder(os.path.join(SHARED_ROOT, "usiigaci_phase", "test"), use_cache=False)
    assert sum(len(r["annotations"]) for r in cached) == 611
