"""Loaders, the box-from-mask rule, sanitising, the conversion cache, COCO round trip, registration."""
import functools
import json
import logging
import math
import os

import cv2
import numpy as np
import pytest

import sissi_d2  # noqa: F401  (patches detectron2 first)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from sissi_d2.data import datasets as ds
from sissi_d2.data.datasets import cellpose, registry
from sissi_d2.data.datasets import (
    boxes_from_label_image,
    load_celllab_folder,
    load_cellpose_folder,
    load_coco_boxes,
    load_image_folder,
    read_image_size,
    records_to_coco,
    register_sissi_dataset,
    sanitize_boxes,
    save_records_as_coco,
    unregister_sissi_dataset,
)
from sissi_d2.data.image_io import ImageReadError

LOGGER = "sissi_d2.data.datasets"


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SISSI_CACHE_DIR", str(cache))
    return cache


def boxes_of(record):
    return np.asarray([a["bbox"] for a in record["annotations"]], np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# helpers that write images of several kinds
# ---------------------------------------------------------------------------------------------
def write_gray8(path, h=40, w=60, value=100):
    img = np.full((h, w), value, np.uint8)
    assert cv2.imwrite(str(path), img)
    return img


def write_gray16(path, h=40, w=60):
    img = (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 37 % 65535).astype(np.uint16)
    assert cv2.imwrite(str(path), img)
    return img


def write_rgba(path, h=40, w=60):
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 1] = 200
    img[..., 3] = 128
    assert cv2.imwrite(str(path), img)
    return img


def write_mask(path, labels):
    assert cv2.imwrite(str(path), labels.astype(np.uint16))


def make_labels(h=40, w=60):
    labels = np.zeros((h, w), np.int32)
    labels[5:15, 10:22] = 1       # box [10, 5, 22, 15]
    labels[20:35, 30:40] = 7      # box [30, 20, 40, 35] (non-contiguous id)
    return labels


# ---------------------------------------------------------------------------------------------
# boxes from label images
# ---------------------------------------------------------------------------------------------
def test_boxes_are_label_extents_with_pixel_edges():
    boxes, ids = boxes_from_label_image(make_labels(), return_ids=True)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)
    np.testing.assert_array_equal(boxes, [[10, 5, 22, 15], [30, 20, 40, 35]])
    np.testing.assert_array_equal(ids, [1, 7])


def test_empty_label_image_gives_no_boxes():
    boxes = boxes_from_label_image(np.zeros((8, 9), np.uint16))
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32


def test_far_speck_of_a_label_is_ignored():
    labels = np.zeros((100, 100), np.int32)
    labels[10:30, 10:30] = 3            # the cell: 400 px
    labels[90, 95] = 3                  # stray pixels far away
    labels[80:82, 5:7] = 3              # 4 px speck
    np.testing.assert_array_equal(boxes_from_label_image(labels), [[10, 10, 30, 30]])
    # with specks counted (fraction 0), the box would stretch over the empty background
    np.testing.assert_array_equal(boxes_from_label_image(labels, speck_fraction=0.0), [[5, 10, 96, 91]])


def test_split_label_keeps_the_union_of_substantial_parts():
    labels = np.zeros((100, 100), np.int32)
    labels[10:30, 10:30] = 5            # 400 px
    labels[40:55, 12:24] = 5            # 180 px, a second blob of the same id (not a speck)
    labels[95:97, 95:97] = 5            # and a 4 px speck
    np.testing.assert_array_equal(boxes_from_label_image(labels), [[10, 10, 30, 55]])


def test_diagonal_pixels_stay_one_part():
    labels = np.zeros((30, 30), np.int32)
    labels[2:8, 2:8] = 1
    for k in range(8, 20):              # a one-pixel-wide diagonal process
        labels[k, k] = 1
    np.testing.assert_array_equal(boxes_from_label_image(labels), [[2, 2, 20, 20]])


def test_tiny_labels_below_min_area_are_dropped():
    labels = make_labels()
    labels[0, 0:3] = 9                  # 3 px paint slip
    assert len(boxes_from_label_image(labels)) == 2
    assert len(boxes_from_label_image(labels, min_area=1)) == 3
    assert len(boxes_from_label_image(labels, min_area=121)) == 1  # the 120 px label goes too


def test_touching_labels_get_separate_boxes():
    labels = np.zeros((20, 20), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2
    np.testing.assert_array_equal(boxes_from_label_image(labels), [[2, 2, 10, 10], [10, 2, 18, 10]])


# ---------------------------------------------------------------------------------------------
# image headers
# ---------------------------------------------------------------------------------------------
def test_read_image_size_of_many_formats(tmp_path):
    write_gray8(tmp_path / "g.png", 33, 47)
    write_gray16(tmp_path / "d.png", 21, 13)
    write_rgba(tmp_path / "a.png", 15, 16)
    cv2.imwrite(str(tmp_path / "c.jpg"), np.zeros((19, 23, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "t.tif"), np.zeros((11, 12), np.uint16))
    assert read_image_size(tmp_path / "g.png") == (33, 47)
    assert read_image_size(tmp_path / "d.png") == (21, 13)
    assert read_image_size(tmp_path / "a.png") == (15, 16)
    assert read_image_size(tmp_path / "c.jpg") == (19, 23)
    assert read_image_size(tmp_path / "t.tif") == (11, 12)


@pytest.mark.parametrize("cut", [0, 20, -30])
def test_truncated_or_empty_image_names_the_file(tmp_path, cut):
    path = tmp_path / "broken_img.png"
    write_gray8(path, 64, 64)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ImageReadError, match="broken_img.png"):
        read_image_size(path)


def test_missing_and_non_image_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nothere.png"):
        read_image_size(tmp_path / "nothere.png")
    (tmp_path / "text.png").write_text("not an image at all")
    with pytest.raises(ImageReadError, match="text.png"):
        read_image_size(tmp_path / "text.png")


# ---------------------------------------------------------------------------------------------
# sanitising
# ---------------------------------------------------------------------------------------------
def _rec(anns, h=50, w=80):
    return {"file_name": "/x/img.png", "height": h, "width": w, "image_id": "img",
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, **extra}
                            for b, extra in anns]}


def test_sanitize_repairs_and_drops_with_one_warning(caplog):
    rec = _rec([
        ([10, 10, 20, 20], {"score": 0.9}),      # valid, untouched
        ([-5, 40, 30, 70], {}),                   # clipped -> [0, 40, 30, 50]
        ([60, 30, 50, 5], {}),                    # inverted -> [50, 5, 60, 30]
        ([float("nan"), 1, 5, 5], {}),            # dropped
        ([5, 5, 5, 25], {}),                      # zero width: dropped
        ([90, 10, 120, 20], {}),                  # fully outside: dropped
        ([70, -10, 100, 0], {}),                  # outside (above the image): dropped
    ])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = sanitize_boxes(rec, source="labels.json")
    assert out is rec
    np.testing.assert_allclose(boxes_of(rec), [[10, 10, 20, 20], [0, 40, 30, 50], [50, 5, 60, 30]])
    assert rec["annotations"][0]["score"] == 0.9
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS and a["category_id"] == 0 for a in rec["annotations"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "labels.json" in msg and "1 clipped" in msg and "1 with inverted" in msg
    assert "1 NaN" in msg and "1 zero-area" in msg and "2 fully outside" in msg and "kept 3 of 7" in msg


def test_sanitize_is_silent_when_nothing_to_fix(caplog):
    rec = _rec([([0, 0, 80, 50], {}), ([1.5, 2.5, 3.5, 4.5], {})])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sanitize_boxes(rec)
    assert not caplog.records
    assert len(rec["annotations"]) == 2


def test_sanitize_converts_xywh():
    rec = _rec([([10, 10, 5, 6], {})])
    rec["annotations"][0]["bbox_mode"] = BoxMode.XYWH_ABS
    sanitize_boxes(rec)
    np.testing.assert_allclose(boxes_of(rec), [[10, 10, 15, 16]])
    assert rec["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS


# ---------------------------------------------------------------------------------------------
# Cellpose folders
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cellpose_dir(tmp_path):
    folder = tmp_path / "cp"
    folder.mkdir()
    h, w = 40, 60
    write_gray8(folder / "a_img.png", h, w)
    write_mask(folder / "a_masks.png", make_labels(h, w))
    write_gray16(folder / "b_img.png", h, w)
    lab = np.zeros((h, w), np.int32)
    lab[0:10, 50:60] = 2
    write_mask(folder / "b_masks.png", lab)
    write_rgba(folder / "c_img.png", h, w)
    write_mask(folder / "c_masks.png", np.zeros((h, w), np.int32))  # an image with no cells
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_load_cellpose_folder(cellpose_dir):
    recs = load_cellpose_folder(cellpose_dir)
    assert [r["image_id"] for r in recs] == ["a", "b", "c"]
    for r in recs:
        assert os.path.isabs(r["file_name"]) and r["file_name"].endswith(f"{r['image_id']}_img.png")
        assert (r["height"], r["width"]) == (40, 60)
        for a in r["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYXY_ABS and a["category_id"] == 0
            assert all(isinstance(v, float) for v in a["bbox"])
    np.testing.assert_array_equal(boxes_of(recs[0]), [[10, 5, 22, 15], [30, 20, 40, 35]])
    np.testing.assert_array_equal(boxes_of(recs[1]), [[50, 0, 60, 10]])
    assert recs[2]["annotations"] == []


def test_cellpose_separate_mask_dir(tmp_path):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir(), masks.mkdir()
    write_gray8(imgs / "s1_img.png")
    write_mask(masks / "s1_masks.png", make_labels())
    recs = load_cellpose_folder(imgs, mask_dir=masks)
    assert len(recs) == 1 and len(recs[0]["annotations"]) == 2
    with pytest.raises(FileNotFoundError, match="s1_masks.png"):
        load_cellpose_folder(imgs)  # the masks are not next to the images


def test_cellpose_mask_of_wrong_size_names_both_files(cellpose_dir):
    write_mask(cellpose_dir / "b_masks.png", np.zeros((41, 60), np.int32))
    with pytest.raises(ValueError) as err:
        load_cellpose_folder(cellpose_dir)
    assert "b_masks.png" in str(err.value) and "b_img.png" in str(err.value)


def test_cellpose_missing_mask_names_the_file(cellpose_dir):
    os.remove(cellpose_dir / "c_masks.png")
    with pytest.raises(FileNotFoundError, match="c_masks.png"):
        load_cellpose_folder(cellpose_dir)


def test_cellpose_truncated_files_name_the_file(cellpose_dir):
    data = (cellpose_dir / "a_img.png").read_bytes()
    (cellpose_dir / "a_img.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="a_img.png"):
        load_cellpose_folder(cellpose_dir, use_cache=False)
    write_gray8(cellpose_dir / "a_img.png")
    data = (cellpose_dir / "b_masks.png").read_bytes()
    (cellpose_dir / "b_masks.png").write_bytes(data[:30])
    with pytest.raises(ImageReadError, match="b_masks.png"):
        load_cellpose_folder(cellpose_dir, use_cache=False)


def test_cellpose_folder_without_pairs_is_an_error(tmp_path):
    write_gray8(tmp_path / "plain.png")
    with pytest.raises(FileNotFoundError, match="_img.png"):
        load_cellpose_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cellpose_folder(tmp_path / "nope")


def test_conversion_cache_is_reused_and_invalidated(cellpose_dir, _tmp_cache, monkeypatch):
    first = load_cellpose_folder(cellpose_dir)
    cached = list((_tmp_cache / "conversions").glob("cellpose_*.json"))
    assert len(cached) == 1

    def no_decoding(path):
        raise AssertionError(f"mask {path} decoded although the cache is valid")

    monkeypatch.setattr(cellpose, "read_label_image", no_decoding)
    second = load_cellpose_folder(cellpose_dir)
    assert second == first
    assert all(a["bbox_mode"] is BoxMode.XYXY_ABS for r in second for a in r["annotations"])
    monkeypatch.undo()
    monkeypatch.setenv("SISSI_CACHE_DIR", str(_tmp_cache))

    # a changed mask invalidates the cache
    lab = np.zeros((40, 60), np.int32)
    lab[1:4, 2:9] = 1
    lab[20:30, 20:30] = 2
    write_mask(cellpose_dir / "c_masks.png", lab)
    st = os.stat(cellpose_dir / "c_masks.png")
    os.utime(cellpose_dir / "c_masks.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    third = load_cellpose_folder(cellpose_dir)
    np.testing.assert_array_equal(boxes_of(third[2]), [[2, 1, 9, 4], [20, 20, 30, 30]])

    # a new pair invalidates it too
    write_gray8(cellpose_dir / "d_img.png")
    write_mask(cellpose_dir / "d_masks.png", make_labels())
    assert [r["image_id"] for r in load_cellpose_folder(cellpose_dir)] == ["a", "b", "c", "d"]

    # other rule parameters use another cache entry
    load_cellpose_folder(cellpose_dir, min_area=500)
    assert len(list((_tmp_cache / "conversions").glob("cellpose_*.json"))) == 2


def test_corrupt_cache_file_is_ignored(cellpose_dir, _tmp_cache):
    first = load_cellpose_folder(cellpose_dir)
    (cache_file,) = (_tmp_cache / "conversions").glob("cellpose_*.json")
    cache_file.write_text("{ not json")
    assert load_cellpose_folder(cellpose_dir) == first


def test_no_cache_written_when_disabled(cellpose_dir, _tmp_cache):
    load_cellpose_folder(cellpose_dir, use_cache=False)
    assert not (_tmp_cache / "conversions").exists()


# ---------------------------------------------------------------------------------------------
# COCO json
# ---------------------------------------------------------------------------------------------
def _coco_fixture(tmp_path, rel=True):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_gray8(imgs / "p.png", 50, 80)
    write_gray16(imgs / "q_img.png", 30, 20)
    write_rgba(imgs / "r.png", 10, 10)
    name = (lambda n: n) if rel else (lambda n: str(imgs / n))
    data = {
        "images": [{"id": 11, "file_name": name("p.png"), "height": 50, "width": 80},
                   {"id": 12, "file_name": name("q_img.png")},
                   {"id": 13, "file_name": name("r.png")}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 1, "bbox": [10, 10, 5, 6], "score": 0.75},
            {"id": 2, "image_id": 11, "category_id": 4, "bbox": [70, 40, 20, 20]},   # clipped
            {"id": 3, "image_id": 12, "category_id": 1, "bbox": [15, 10, -5, 5]},    # negative width
            {"id": 4, "image_id": 12, "category_id": 1, "bbox": [1, 1, 0, 5]},       # zero area
        ],
        "categories": [{"id": 1, "name": "cell"}, {"id": 4, "name": "other"}],
    }
    return imgs, data


def test_load_coco_boxes_with_image_root(tmp_path, caplog):
    imgs, data = _coco_fixture(tmp_path)
    json_path = tmp_path / "labels" / "weak.json"
    json_path.parent.mkdir()
    json_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recs = load_coco_boxes(json_path, image_root=imgs)
    assert [r["image_id"] for r in recs] == ["p", "q", "r"]
    assert recs[0]["file_name"] == str(imgs / "p.png")
    assert [(r["height"], r["width"]) for r in recs] == [(50, 80), (30, 20), (10, 10)]
    np.testing.assert_allclose(boxes_of(recs[0]), [[10, 10, 15, 16], [70, 40, 80, 50]])
    assert recs[0]["annotations"][0]["score"] == 0.75 and "score" not in recs[0]["annotations"][1]
    np.testing.assert_allclose(boxes_of(recs[1]), [[10, 10, 15, 15]])
    assert recs[2]["annotations"] == []
    assert all(a["category_id"] == 0 and a["bbox_mode"] == BoxMode.XYXY_ABS for r in recs for a in r["annotations"])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and any("p.png" in m and "clipped" in m for m in msgs)
    assert any("q_img.png" in m and "inverted" in m and "zero-area" in m for m in msgs)


def test_load_coco_relative_to_json_folder(tmp_path):
    imgs, data = _coco_fixture(tmp_path)
    (imgs / "labels.json").write_text(json.dumps(data))
    recs = load_coco_boxes(imgs / "labels.json")
    assert len(recs) == 3 and recs[1]["file_name"] == str(imgs / "q_img.png")


def test_coco_size_mismatch_and_missing_image(tmp_path):
    imgs, data = _coco_fixture(tmp_path, rel=False)
    data["images"][0]["height"] = 51
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="p.png"):
        load_coco_boxes(tmp_path / "a.json")
    data["images"][0]["height"] = 50
    os.remove(imgs / "r.png")
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ImageReadError, match="r.png"):
        load_coco_boxes(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="c.json"):
        load_coco_boxes(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="d.json"):
        load_coco_boxes(tmp_path / "d.json")


def test_records_to_coco_structure():
    recs = [{"file_name": "/d/a.png", "height": 10, "width": 20, "image_id": "a", "annotations": [
        {"bbox": [1.0, 2.0, 4.0, 7.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "score": 0.5},
        {"bbox": [1.0, 2.0, 3.0, 3.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]},
        {"file_name": "/d/b.png", "height": 10, "width": 20, "image_id": "b", "annotations": []}]
    coco = records_to_coco(recs)
    assert coco["categories"] == [{"id": 1, "name": "cell"}]
    assert [i["id"] for i in coco["images"]] == [1, 2]
    assert coco["images"][0] == {"id": 1, "file_name": "/d/a.png", "height": 10, "width": 20}
    a0, a1 = coco["annotations"]
    assert a0["bbox"] == [1.0, 2.0, 3.0, 5.0] and a0["area"] == 15.0 and a0["score"] == 0.5
    assert a0["category_id"] == 1 and a0["image_id"] == 1 and a0["iscrowd"] == 0
    assert a1["bbox"] == [1.0, 2.0, 3.0, 3.0] and "score" not in a1
    assert len({a["id"] for a in coco["annotations"]}) == 2
    json.dumps(coco)  # serialisable


def test_coco_round_trip(cellpose_dir, tmp_path):
    recs = load_cellpose_folder(cellpose_dir)
    rng = np.random.default_rng(0)
    for r in recs:  # pseudo-labels: fractional boxes with scores
        r["annotations"].append({"bbox": [1.25, 2.5, 17.125, 30.0 + 1 / 3], "bbox_mode": BoxMode.XYXY_ABS,
                                 "category_id": 0, "score": float(rng.random())})
    path = save_records_as_coco(recs, tmp_path / "snap" / "pseudo.json")
    assert path == str(tmp_path / "snap" / "pseudo.json") and os.path.isfile(path)
    assert not [n for n in os.listdir(tmp_path / "snap") if n.endswith(".tmp")]
    back = load_coco_boxes(path)
    assert [(r["file_name"], r["image_id"], r["height"], r["width"]) for r in back] == \
        [(r["file_name"], r["image_id"], r["height"], r["width"]) for r in recs]
    for a, b in zip(recs, back):
        np.testing.assert_allclose(boxes_of(b), boxes_of(a), rtol=0, atol=1e-9)
        assert [x.get("score") for x in b["annotations"]] == [x.get("score") for x in a["annotations"]]


def test_coco_round_trip_relative_names(cellpose_dir, tmp_path):
    recs = load_cellpose_folder(cellpose_dir)
    path = save_records_as_coco(recs, cellpose_dir / "labels.json", image_root=cellpose_dir)
    with open(path) as f:
        assert json.load(f)["images"][0]["file_name"] == "a_img.png"
    back = load_coco_boxes(path)
    assert [r["file_name"] for r in back] == [r["file_name"] for r in recs]
    assert [len(r["annotations"]) for r in back] == [2, 1, 0]


# ---------------------------------------------------------------------------------------------
# CellLab text labels
# ---------------------------------------------------------------------------------------------
def test_load_celllab_folder(tmp_path, caplog):
    imgs, labels = tmp_path / "imgs", tmp_path / "labels"
    imgs.mkdir(), labels.mkdir()
    write_gray8(imgs / "x1.png", 48, 64)
    write_rgba(imgs / "x2_img.png", 48, 64)
    write_gray16(imgs / "x3.tif", 48, 64)  # no label file
    (labels / "x1.txt").write_text("alive 1 2 11 12\n\nDEAD 20.5 20 30 30.5\n# comment\ninhib 60 40 70 50\n")
    (labels / "x2.txt").write_text("inhib,5,5,9,9\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recs = load_celllab_folder(imgs, labels)
    assert [r["image_id"] for r in recs] == ["x1", "x2", "x3"]
    np.testing.assert_allclose(boxes_of(recs[0]), [[1, 2, 11, 12], [20.5, 20, 30, 30.5], [60, 40, 64, 48]])
    assert [a["celllab_class"] for a in recs[0]["annotations"]] == ["alive", "dead", "inhib"]
    assert all(a["category_id"] == 0 for r in recs for a in r["annotations"])
    np.testing.assert_allclose(boxes_of(recs[1]), [[5, 5, 9, 9]])
    assert recs[2]["annotations"] == []
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert "x1.txt" in msgs and "clipped" in msgs and "1 of 3 images have no .txt" in msgs


@pytest.mark.parametrize("bad", ["alive 1 2 3", "zombie 1 2 3 4", "dead 1 2 x 4", "alive 1 2 3 4 5"])
def test_celllab_malformed_line_names_file_and_line(tmp_path, bad):
    write_gray8(tmp_path / "y.png")
    (tmp_path / "y.txt").write_text(f"alive 1 1 5 5\n\n{bad}\n")
    with pytest.raises(ValueError) as err:
        load_celllab_folder(tmp_path)
    assert "y.txt" in str(err.value) and "line 3" in str(err.value)


def test_celllab_label_without_image(tmp_path):
    write_gray8(tmp_path / "y.png")
    (tmp_path / "z.txt").write_text("alive 1 1 5 5\n")
    with pytest.raises(FileNotFoundError, match="z.txt"):
        load_celllab_folder(tmp_path)


def test_celllab_round_trip_keeps_class(tmp_path):
    write_gray8(tmp_path / "y.png")
    (tmp_path / "y.txt").write_text("dead 1 1 5 5\n")
    back = load_coco_boxes(save_records_as_coco(load_celllab_folder(tmp_path), tmp_path / "c.json"))
    assert back[0]["annotations"][0]["celllab_class"] == "dead"


# ---------------------------------------------------------------------------------------------
# images only
# ---------------------------------------------------------------------------------------------
def test_load_image_folder(tmp_path):
    write_gray8(tmp_path / "a_img.png", 30, 31)
    write_mask(tmp_path / "a_masks.png", np.zeros((30, 31), np.int32))
    write_gray16(tmp_path / "b.tif", 32, 33)
    write_rgba(tmp_path / "c.png", 34, 35)
    cv2.imwrite(str(tmp_path / "d.jpg"), np.zeros((36, 37, 3), np.uint8))
    (tmp_path / "readme.txt").write_text("x")
    recs = load_image_folder(tmp_path)
    assert [r["image_id"] for r in recs] == ["a", "b", "c", "d"]
    assert [(r["height"], r["width"]) for r in recs] == [(30, 31), (32, 33), (34, 35), (36, 37)]
    assert all(r["annotations"] == [] and os.path.isabs(r["file_name"]) for r in recs)


def test_image_folder_errors(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="No images"):
        load_image_folder(tmp_path / "e")
    (tmp_path / "e" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image_folder(tmp_path / "e")
    write_gray8(tmp_path / "f_img.png")
    write_gray8(tmp_path / "f.png")
    with pytest.raises(ValueError, match="f_img.png"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def names():
    used = []
    yield used
    for n in used:
        unregister_sissi_dataset(n)


def test_register_is_lazy_idempotent_and_refuses_conflicts(cellpose_dir, tmp_path, names, monkeypatch):
    name = "test_ds_cellpose_reg"
    names.append(name)
    calls = []
    real = ds.load_cellpose_folder
    @functools.wraps(real)
    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setitem(registry._LOADERS, "cellpose", counting)
    assert register_sissi_dataset(name, "cellpose", cellpose_dir, min_area=5) == name
    assert not calls  # nothing read at registration
    recs = DatasetCatalog.get(name)
    assert len(calls) == 1 and [r["image_id"] for r in recs] == ["a", "b", "c"]
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cell"] and meta.evaluator_type == "coco"
    assert meta.sissi_kind == "cellpose" and meta.sissi_path == str(cellpose_dir)
    assert not hasattr(meta, "json_file")

    register_sissi_dataset(name, "cellpose", str(cellpose_dir), min_area=5)  # same: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_sissi_dataset(name, "cellpose", cellpose_dir, min_area=6)
    with pytest.raises(ValueError, match="already registered"):
        register_sissi_dataset(name, "images", cellpose_dir)
    assert DatasetCatalog.get(name) == recs

    unregister_sissi_dataset(name)
    register_sissi_dataset(name, "images", cellpose_dir)  # free again
    assert all(r["annotations"] == [] for r in DatasetCatalog.get(name))


def test_register_coco_sets_json_file(tmp_path, names):
    imgs, data = _coco_fixture(tmp_path)
    (imgs / "w.json").write_text(json.dumps(data))
    names.append("test_ds_coco_reg")
    register_sissi_dataset("test_ds_coco_reg", "coco", imgs / "w.json", image_root=imgs)
    meta = MetadataCatalog.get("test_ds_coco_reg")
    assert meta.json_file == str(imgs / "w.json") and meta.sissi_kind == "coco"
    assert len(DatasetCatalog.get("test_ds_coco_reg")) == 3


def test_register_celllab(tmp_path, names):
    write_gray8(tmp_path / "y.png")
    (tmp_path / "y.txt").write_text("alive 1 1 5 5\n")
    names.append("test_ds_celllab_reg")
    register_sissi_dataset("test_ds_celllab_reg", "celllab", tmp_path, label_dir=tmp_path)
    assert len(DatasetCatalog.get("test_ds_celllab_reg")[0]["annotations"]) == 1


def test_register_errors(tmp_path, names):
    with pytest.raises(ValueError) as err:
        register_sissi_dataset("test_ds_bad_kind", "yolo", tmp_path)
    for kind in ("cellpose", "coco", "celllab", "images"):
        assert kind in str(err.value)
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError) as err:
        register_sissi_dataset("test_ds_missing", "cellpose", missing)
    assert str(missing) in str(err.value) and "cellpose.org" in str(err.value)
    with pytest.raises(TypeError, match="image_root"):
        register_sissi_dataset("test_ds_bad_kw", "cellpose", tmp_path, image_root=tmp_path)
    assert "test_ds_bad_kind" not in DatasetCatalog.list()
    assert "test_ds_missing" not in DatasetCatalog.list()


def test_register_refuses_names_taken_by_other_code(tmp_path, names):
    names.append("test_ds_foreign")
    DatasetCatalog.register("test_ds_foreign", lambda: [])
    with pytest.raises(ValueError, match="other code"):
        register_sissi_dataset("test_ds_foreign", "images", tmp_path)


def test_nan_coordinates_in_loaded_json_are_dropped(tmp_path):
    write_gray8(tmp_path / "n.png", 20, 20)
    text = json.dumps({"images": [{"id": 1, "file_name": "n.png"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [math.nan, 1, 4, 4]}], "categories": []})
    (tmp_path / "n.json").write_text(text)  # json.dumps writes NaN, which Python's json reads back
    recs = load_coco_boxes(tmp_path / "n.json")
    np.testing.assert_allclose(boxes_of(recs[0]), [[1, 1, 5, 5]])
