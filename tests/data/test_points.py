"""Point annotations: the four readers, the box-from-point rule, errors naming file and line,
duplicate clicks, and the ``points`` data kind."""
import json
import logging
import os

import cv2
import numpy as np
import pytest


@pytest.fixture
def images(tmp_path):
    """Two gray images in tmp_path/images: a.png 100x80 (WxH) and b.png 60x50."""
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((80, 100), 90, np.uint8))
    cv2.imwrite(str(folder / "b.png"), np.full((50, 60), 90, np.uint8))
    return folder


def _boxes(record):
    return np.asarray([a["bbox"] for a in record["annotations"]], np.float64).reshape(-1, 4)


def test_csv_with_classes_comments_and_semicolons(tmp_path, images):
    from sissi_d2.data.label_files import load_point_boxes, read_point_file

    path = tmp_path / "clicks.csv"
    path.write_text("# exported by hand\nimage;x;y;class\na.png;50;40;cell\na.png;2;3;cell\n\nb.png;30;25;artefact\n")
    pf = read_point_file(path)
    assert pf.format == "csv" and [c.where for c in pf.clicks] == ["clicks.csv, line 3", "clicks.csv, line 4",
                                                                   "clicks.csv, line 6"]
    records = load_point_boxes(path, images, cell_size="20x10")
    a, b = records
    assert a["file_name"].endswith("a.png") and (a["height"], a["width"]) == (80, 100) and a["image_id"] == "a"
    # centred on the click, clipped to the image at the border
    np.testing.assert_allclose(_boxes(a), [[40, 35, 60, 45], [0, 0, 12, 8]])
    assert a["annotations"][0]["point"] == [50.0, 40.0] and a["annotations"][0]["point_class"] == "cell"
    # an artefact click is a negative, not a cell
    assert b["annotations"] == [] and b["sissi_negatives"] == [[20.0, 20.0, 40.0, 30.0]]


def test_label_studio_export(tmp_path, images):
    from sissi_d2.data.points import point_boxes, BoxSizeRule

    def kp(rid, x, y, label="cell", **extra):
        return {"id": rid, "type": "keypointlabels", "original_width": 100, "original_height": 80,
                "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}, **extra}

    tasks = [
        {"id": 1, "data": {"image": "/data/upload/3/1a2b3c4d-a.png"},
         "annotations": [{"result": [kp("r1", 50.0, 50.0), {"id": "box", "type": "rectanglelabels", "value": {}}]},
                         {"was_cancelled": True, "result": [kp("r9", 10.0, 10.0)]}]},
        {"id": 2, "data": {"image": "b.png"}, "annotations": [{"result": []}]},
    ]
    path = tmp_path / "project.json"
    path.write_text(json.dumps(tasks, indent=2))
    records, info = point_boxes(path, images, rule=BoxSizeRule.make(cell_size=10))
    a, b = records
    # percentages of the image size; the upload prefix is ignored; the cancelled annotation skipped
    np.testing.assert_allclose(_boxes(a), [[45, 35, 55, 45]])
    assert b["annotations"] == [] and [i["clicks"] for i in info] == [1, 0]


def test_cvat_xml_and_coco_keypoints(tmp_path, images):
    from sissi_d2.data.points import load_point_boxes, read_point_file

    xml = tmp_path / "annotations.xml"
    xml.write_text('<?xml version="1.0"?>\n<annotations>\n  <version>1.1</version>\n'
                   '  <image id="0" name="frames/a.png" width="100" height="80">\n'
                   '    <points label="cell" occluded="0" points="10.00,20.00;30.5,40.5"/>\n'
                   '  </image>\n</annotations>\n')
    pf = read_point_file(xml)
    assert pf.format == "cvat_xml" and [(c.x, c.y, c.label) for c in pf.clicks] == [(10, 20, "cell"), (30.5, 40.5, "cell")]
    assert pf.clicks[0].where == "annotations.xml, line 5"
    assert len(load_point_boxes(xml, images, cell_size=4)[0]["annotations"]) == 2

    coco = tmp_path / "keypoints.json"
    coco.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "b.png", "width": 60, "height": 50}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "keypoints": [5, 6, 2, 0, 0, 0, 20, 30, 1]}],
    }))
    pf = read_point_file(coco)
    assert pf.format == "coco_keypoints" and [(c.x, c.y) for c in pf.clicks] == [(5, 6), (20, 30)]


def test_class_sizes_and_an_unsized_class(tmp_path, images):
    from sissi_d2.data.points import PointFileError, load_point_boxes

    path = tmp_path / "c.csv"
    path.write_text("image,x,y,class\na.png,50,40,rbc\na.png,20,20,wbc\n")
    records = load_point_boxes(path, images, class_sizes="rbc=10,wbc=20x30")
    np.testing.assert_allclose(_boxes(records[0]), [[45, 35, 55, 45], [10, 5, 30, 35]])
    with pytest.raises(PointFileError, match=r"c\.csv, line 3: class 'wbc' has no size"):
        load_point_boxes(path, images, class_sizes={"rbc": 10})
    # cell_size sizes the classes class_sizes does not list
    assert len(load_point_boxes(path, images, class_sizes={"rbc": 10}, cell_size=8)[0]["annotations"]) == 2


def test_cell_size_estimated_from_the_weak_label_components():
    from sissi_d2.data.points import estimate_cell_size

    weak = np.array([[0, 0, 10, 20], [20, 0, 32, 18], [40, 0, 80, 40], [90, 90, 130, 130]], float)
    # the last component holds no click (debris, or a cell nobody clicked): the first three count
    clicks = [(5, 5), (25, 5), (50, 10), (60, 30)]
    assert estimate_cell_size(weak, clicks) == (12.0, 20.0)
    # fewer clicked components than MIN_COMPONENTS (3): no estimate of its own for this image
    assert estimate_cell_size(weak, [(50, 10), (60, 30)]) is None
    assert estimate_cell_size(weak, [(50, 10)], min_components=1) == (40.0, 40.0)
    assert estimate_cell_size(np.zeros((0, 4)), clicks) is None


def test_weak_label_rule_per_image_with_fallback(tmp_path, images, monkeypatch):
    import sissi_d2.weak_labels as weak_labels
    from sissi_d2.data.points import BoxSizeRule, point_boxes

    def fake_pipeline(image, pipeline, cell_size, **kwargs):
        # a.png (80 px high): three 16x12 components, one around each click, and a speck; b.png: one
        # 30x30 component around its click, too few for an estimate of its own
        assert pipeline == "phase" and kwargs == {"texture_k": 2.5}
        if image.shape[0] == 80:
            boxes = [[42, 34, 58, 46], [2, 4, 18, 16], [72, 64, 88, 76], [90, 5, 92, 7]]
        else:
            boxes = [[15, 10, 45, 40]]
        return np.asarray(boxes, np.float32), np.ones(len(boxes), np.float32)

    monkeypatch.setattr(weak_labels, "make_weak_labels", fake_pipeline)
    path = tmp_path / "w.csv"
    path.write_text("image,x,y\na.png,50,40\na.png,10,10\na.png,80,70\nb.png,30,25\n")
    rule = BoxSizeRule.make(pipeline="phase", pipeline_kwargs={"texture_k": 2.5})
    assert rule.size_from == "weak_labels"
    records, info = point_boxes(path, images, rule=rule)
    np.testing.assert_allclose(_boxes(records[0])[0], [42, 34, 58, 46])  # the speck holds no click: not counted
    # b.png: the median of the clicked components of all images (16, 16, 16, 30 x 12, 12, 12, 30)
    np.testing.assert_allclose(_boxes(records[1]), [[22, 19, 38, 31]])
    assert [i["size_from"] for i in info] == ["weak_labels", "weak_labels, all images"]


@pytest.mark.parametrize("content, message", [
    ("image,x,y\na.png,50,40\na.png,120,10\n", r"bad\.csv, line 3: the point \(120, 10\) is outside image a\.png \(100x80 px\)"),
    ("image,x,y\na.png,50,40\nnope.png,1,1\n", r"bad\.csv, line 3: image 'nope\.png' is not in .*images"),
    ("image,x,y\na.png,50\n", r"bad\.csv, line 2: 2 columns but the header has 3"),
    ("image,x,y\na.png,fifty,4\n", r"bad\.csv, line 2: x 'fifty' is not a number"),
    ("image,x,y\na.png,nan,4\n", r"bad\.csv, line 2: x is 'nan'"),
    ("img,col,row\na.png,1,1\n", r"bad\.csv, line 1: the header .* lacks the column\(s\) \['image', 'x', 'y'\]"),
    ("\n# nothing\n", r"bad\.csv: the file is empty"),
])
def test_bad_csv_errors_name_file_and_line(tmp_path, images, content, message):
    from sissi_d2.data.points import PointFileError, load_point_boxes

    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(PointFileError, match=message):
        load_point_boxes(path, images, cell_size=10)


def test_bad_json_and_xml_errors_name_the_line(tmp_path, images):
    from sissi_d2.data.points import PointFileError, load_point_boxes

    task = {"id": 4, "data": {"image": "a.png"}, "annotations": [{"result": [
        {"id": "far", "type": "keypointlabels", "value": {"x": 150.0, "y": 10.0, "keypointlabels": ["cell"]}}]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task], indent=2))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if '"far"' in ln)
    with pytest.raises(PointFileError, match=rf"ls\.json, line {line} \(task 4, result far\): the point \(150, 8\) is outside"):
        load_point_boxes(path, images, cell_size=10)
    task["annotations"][0]["result"][0].update(value={"x": 10, "y": 10}, original_width=640, original_height=480)
    path.write_text(json.dumps([task], indent=2))
    with pytest.raises(PointFileError, match=r"says image 'a\.png' is 640x480 .* but .*a\.png is 100x80"):
        load_point_boxes(path, images, cell_size=10)

    xml = tmp_path / "bad.xml"
    xml.write_text('<annotations>\n<image id="0" name="a.png" width="100" height="80">\n<points points="1,2;3"/>\n'
                   '</image>\n</annotations>\n')
    with pytest.raises(PointFileError, match=r"bad\.xml, line 3: points='1,2;3' is not a list of x,y pairs"):
        load_point_boxes(xml, images, cell_size=10)
    xml.write_text('<annotations>\n<track id="0" label="cell">\n</track>\n</annotations>\n')
    with pytest.raises(PointFileError, match=r"bad\.xml, line 2: <track> .* 'CVAT for images 1\.1'"):
        load_point_boxes(xml, images, cell_size=10)
    boxes_json = tmp_path / "boxes.json"
    boxes_json.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(PointFileError, match="COCO json of boxes, not of points: register it with kind 'coco'"):
        load_point_boxes(boxes_json, images, cell_size=10)


def test_duplicate_clicks_merge_with_a_warning(tmp_path, images, caplog):
    from sissi_d2.data.points import load_point_boxes

    path = tmp_path / "dup.csv"
    path.write_text("image,x,y\na.png,50,40\na.png,20,20\na.png,51,40\na.png,50,40\n")
    with caplog.at_level(logging.WARNING, logger="sissi_d2.data.points"):
        records = load_point_boxes(path, images, cell_size=10)
    np.testing.assert_allclose(_boxes(records[0]), [[50.333 - 5, 35, 50.333 + 5, 45], [15, 15, 25, 25]], atol=1e-3)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "2 duplicate click(s)" in warning and "dup.csv, line 2 + dup.csv, line 4 + dup.csv, line 5" in warning


def test_points_data_kind_and_size_option_errors(tmp_path, images):
    from detectron2.data import DatasetCatalog

    from sissi_d2.data.datasets import register_sissi_dataset, unregister_sissi_dataset
    from sissi_d2.data.points import BoxSizeRule, parse_size, write_points_csv

    path = write_points_csv(tmp_path / "w.csv", {"a.png": [(10, 10), (30, 30, "cell")]})
    assert open(path).read().splitlines() == ["image,x,y,class", "a.png,10.00,10.00,", "a.png,30.00,30.00,cell"]
    try:
        register_sissi_dataset("test_points_kind", "points", path, image_root=str(images), cell_size=6)
        records = DatasetCatalog.get("test_points_kind")
        assert len(records) == 1 and len(records[0]["annotations"]) == 2
        records[0]["annotations"].clear()  # callers get copies: the cache stays intact
        assert len(DatasetCatalog.get("test_points_kind")[0]["annotations"]) == 2
    finally:
        unregister_sissi_dataset("test_points_kind")
    assert parse_size("40x30") == (40.0, 30.0) and parse_size(12) == (12.0, 12.0)
    for bad in ("0", "40x", "ax3", -2, None):
        with pytest.raises(ValueError, match="positive size in pixels"):
            parse_size(bad)
    with pytest.raises(ValueError, match="size_from='fixed' needs cell_size"):
        BoxSizeRule.make(size_from="fixed")
    with pytest.raises(ValueError, match="pipeline='nope'"):
        BoxSizeRule.make(pipeline="nope")
    assert os.path.isfile(path)
