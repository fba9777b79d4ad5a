"""The one module of label files: image keys, the image lister, COCO json in and out."""
import json

import cv2
import numpy as np
import pytest


def test_image_key_stem_and_lister(tmp_path):
    from sissi_d2.data.label_files import image_key, image_stem, list_image_files

    assert image_key("a/b/c_img.png") == image_key({"file_name": "x\\c_img.png"}) == "c_img.png"
    assert image_stem("/d/c_img.tif") == "c"
    for name in ("a_img.png", "a_masks.png", "b.jpg", "b_flows.tif", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.split("/")[-1] for p in list_image_files(tmp_path)] == ["a_img.png", "b.jpg"]
    assert [p.split("/")[-1] for p in list_image_files(tmp_path, cellpose_first=True)] == ["a_img.png"]


def test_coco_round_trip_and_detections(tmp_path):
    from detectron2.structures import BoxMode

    from sissi_d2.data.label_files import (detections_to_coco, load_coco_boxes, read_coco_json, read_label_json,
                                           save_records_as_coco, write_coco_json)

    cv2.imwrite(str(tmp_path / "im.png"), np.zeros((20, 30), np.uint8))
    rec = {"file_name": str(tmp_path / "im.png"), "height": 20, "width": 30, "image_id": "im",
           "annotations": [{"bbox": [1.0, 2.0, 11.0, 12.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "score": 0.5}]}
    path = save_records_as_coco([rec], tmp_path / "labels.json")
    back = load_coco_boxes(path)
    assert back[0]["annotations"][0]["bbox"] == [1.0, 2.0, 11.0, 12.0] and back[0]["annotations"][0]["score"] == 0.5
    boxes, scores = read_label_json(path)["im.png"]
    np.testing.assert_allclose(boxes, [[1, 2, 11, 12]]) and np.testing.assert_allclose(scores, [0.5])
    coco = detections_to_coco([{"file_name": "im.png", "height": 20, "width": 30, "boxes": [[0, 0, 1.234, 2]],
                                "scores": [0.123456], "pipeline": "phase"}], {"x": 1})
    assert coco["images"][0]["pipeline"] == "phase" and coco["annotations"][0]["bbox"] == [0, 0, 1.23, 2]
    assert coco["annotations"][0]["score"] == 0.12346
    write_coco_json(tmp_path / "d.json", coco)
    assert read_coco_json(tmp_path / "d.json")["info"] == {"x": 1}
    (tmp_path / "bare.json").write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(ValueError, match="bare list"):
        read_coco_json(tmp_path / "bare.json")
