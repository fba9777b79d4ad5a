"""Fuzzing: random label files and images through the loaders, mappers and weak pipelines.

Every case must end in a valid data set (boxes inside the image, positive area) or in one of
the documented clear errors naming the file; never in another exception or a crash.
"""
import json
import os

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sissi_d2.data.image_io import ImageReadError

CLEAR_ERRORS = (ImageReadError, ValueError, FileNotFoundError)

coord = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-500, 500))
ann = st.fixed_dictionaries({"bbox": st.lists(coord, min_size=0, max_size=5), "image_id": st.integers(0, 3)})
image_kind = st.sampled_from(["gray8", "gray16", "rgb", "rgba", "garbage", "truncated", "empty", "missing"])


def _write_image(path, kind, rng):
    h, w = int(rng.integers(8, 64)), int(rng.integers(8, 64))
    if kind == "gray8":
        cv2.imwrite(path, rng.integers(0, 255, (h, w), dtype=np.uint8))
    elif kind == "gray16":
        cv2.imwrite(path, rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif kind == "rgb":
        cv2.imwrite(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    elif kind == "rgba":
        cv2.imwrite(path, rng.integers(0, 255, (h, w, 4), dtype=np.uint8))
    elif kind == "garbage":
        open(path, "wb").write(rng.bytes(int(rng.integers(1, 200))))
    elif kind == "truncated":
        ok, buf = cv2.imencode(".png", rng.integers(0, 255, (h, w), dtype=np.uint8))
        open(path, "wb").write(buf.tobytes()[: len(buf) // 2])
    elif kind == "empty":
        open(path, "wb").close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(image_kind, min_size=1, max_size=3), anns=st.lists(ann, max_size=12), seed=st.integers(0, 2**16))
def test_random_coco_files(tmp_path_factory, kinds, anns, seed):
    from sissi_d2.data.datasets import load_coco_boxes
    from sissi_d2.data.image_io import read_bgr8

    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(seed)
    images = []
    for i, kind in enumerate(kinds):
        name = f"im{i}.png"
        _write_image(str(folder / name), kind, rng)
        images.append({"id": i, "file_name": name})
    coco = {"images": images, "annotations": [dict(a, id=j, category_id=1) for j, a in enumerate(anns)],
            "categories": [{"id": 1, "name": "cell"}]}
    (folder / "labels.json").write_text(json.dumps(coco))
    try:
        records = load_coco_boxes(str(folder / "labels.json"))
    except CLEAR_ERRORS as e:
        assert "im" in str(e) or "labels.json" in str(e) or "bbox" in str(e), str(e)
        return
    for r in records:
        image = read_bgr8(r["file_name"])
        assert image.dtype == np.uint8 and image.shape == (r["height"], r["width"], 3)
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.integers(1, 200), w=st.integers(1, 200),
       pipeline=st.sampled_from(["alive", "inhibited", "dead"]), cell_size=st.floats(0.2, 3.0),
       depth=st.sampled_from([np.uint8, np.uint16]))
def test_weak_pipelines_on_random_images(seed, h, w, pipeline, cell_size, depth):
    from sissi_d2.data.image_io import to_uint8
    from sissi_d2.weak_labels.pipelines import make_weak_labels

    rng = np.random.default_rng(seed)
    image = to_uint8(rng.integers(0, np.iinfo(depth).max, (h, w), dtype=depth))
    boxes, scores = make_weak_labels(image, pipeline=pipeline, cell_size=cell_size)
    assert boxes.shape == (len(scores), 4) and np.isfinite(boxes).all()
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 2] > boxes[:, 0]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all() and (boxes[:, 3] > boxes[:, 1]).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), boxes=st.lists(st.lists(coord, min_size=4, max_size=4), max_size=8))
def test_cloning_and_mapper_on_random_boxes(seed, boxes):
    from sissi_d2.algorithms.cloning import make_synthetic_like

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (int(rng.integers(4, 80)), int(rng.integers(4, 80)), 3), dtype=np.uint8)
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = make_synthetic_like(image, arr, 21, 7.0)
    assert out.shape == image.shape and out.dtype == np.uint8
