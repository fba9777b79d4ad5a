"""Shared fixtures: a tiny labelled data set drawn on the fly, and a tiny model config."""
import os

import cv2
import numpy as np
import pytest

import sissi_d2  # noqa: F401  (compatibility patches before detectron2)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED_DATA = os.environ.get("SISSI_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")


def draw_cells(rng, size=96, n=5):
    """A gray image with n bright textured blobs and their true boxes."""
    img = np.full((size, size), 60, np.uint8)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    boxes = []
    for _ in range(n):
        r = int(rng.integers(6, 11))
        cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
        cv2.circle(img, (cx, cy), r, int(rng.integers(170, 230)), -1)
        cv2.circle(img, (cx, cy), max(2, r // 3), 110, -1)
        boxes.append([cx - r, cy - r, cx + r + 1, cy + r + 1])
    return img, boxes


def write_tiny_dataset(folder, n_images, seed, keep_fraction=1.0):
    """Images as PNG + records; keep_fraction < 1 drops boxes (imitates missing weak labels)."""
    from detectron2.structures import BoxMode

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(n_images):
        img, boxes = draw_cells(rng)
        path = os.path.join(folder, f"img{i:03d}.png")
        cv2.imwrite(path, img)
        kept = [b for b in boxes if rng.random() < keep_fraction]
        records.append({
            "file_name": path, "image_id": f"img{i:03d}", "height": img.shape[0], "width": img.shape[1],
            "annotations": [{"bbox": list(map(float, b)), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in kept],
        })
    return records


def register_tiny_on_every_rank(data_root, n_source=6, n_target=4):
    """In a launched process: rank 0 draws tiny_source / tiny_target, every rank registers them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm

    for name, n, seed, keep in (("tiny_source", n_source, 1, 1.0), ("tiny_target", n_target, 2, 0.5)):
        recs = write_tiny_dataset(os.path.join(data_root, name), n, seed, keep) if comm.is_main_process() else None
        recs = comm.all_gather(recs)[0]
        DatasetCatalog.register(name, lambda r=recs: r)
        MetadataCatalog.get(name).set(thing_classes=["cell"])


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """Registers tiny_source (4 images), tiny_target (4, half the boxes), tiny_val, tiny_test."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = tmp_path_factory.mktemp("tiny")
    specs = {"tiny_source": (6, 1, 1.0), "tiny_target": (4, 2, 0.5), "tiny_val": (2, 3, 1.0), "tiny_test": (2, 4, 1.0)}
    for name, (n, seed, keep) in specs.items():
        records = write_tiny_dataset(str(root / name), n, seed, keep)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda r=records: [dict(x) for x in r])
        MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="coco")
    return root


TINY_BASE_CONFIG = os.path.join(ROOT, "configs", "cpu", "Base-SISSI-CPU.yaml")


def tiny_config(output_dir, *opts):
    """The lean CPU model shrunk further: 96 px input, 3 epochs of 2 iterations."""
    from sissi_d2.config_builder import build_config

    return build_config(TINY_BASE_CONFIG, tiny_opts(output_dir, *opts))


def tiny_opts(output_dir, *opts) -> list:
    """The overrides of TINY_BASE_CONFIG that make ``tiny_config``."""
    base = [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "96",
        "SISSI.SOURCE_DATASETS", "('tiny_source',)", "SISSI.TARGET_DATASETS", "('tiny_target',)",
        "SISSI.SOURCE_VAL_DATASETS", "()", "DATASETS.TEST", "()",
        "SISSI.IMS_PER_BATCH_SOURCE", "2", "SISSI.IMS_PER_BATCH_TARGET", "2", "SISSI.EPOCHS", "3",
        "SISSI.START_RULE", "never", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1",
        "SISSI.PSEUDO.SCALES", "(0.9, 1.1)", "SISSI.PSEUDO.FLIPS", "('none', 'h')",
        # an untrained model scores low: accept its boxes so that labels visibly change
        "SISSI.PSEUDO.MIN_VIEW_SCORE", "0.0", "SISSI.PSEUDO.WBF_SKIP_BOX_THR", "0.0",
        "SISSI.PSEUDO.SCORE_THRESH", "0.0", "SISSI.PSEUDO.TOPK", "20",
        "OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", "cpu",
    ]
    return base + list(opts)
