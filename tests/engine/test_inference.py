"""RecordPredictor: batching across views and images must not change any box."""
import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from sissi_d2.data.image_io import read_bgr8
from sissi_d2.engine.inference import IDENTITY_VIEW, RecordPredictor, inference_mode, image_key
from sissi_d2.engine.trainer import SISSITrainer

from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model_and_cfg(tiny_datasets, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("inference"))
    return SISSITrainer.build_model(cfg), cfg


def _assert_same(per_view_a, per_view_b):
    assert len(per_view_a) == len(per_view_b)
    for (b1, s1), (b2, s2) in zip(per_view_a, per_view_b):
        np.testing.assert_allclose(b1, b2, atol=1e-3)
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_tta_views_do_not_depend_on_batch_size(model_and_cfg):
    """GroupNorm sees padding: views of other sizes must not share a forward pass."""
    model, cfg = model_and_cfg
    image = read_bgr8(DatasetCatalog.get("tiny_target")[0]["file_name"])
    with inference_mode(model) as net:
        one = RecordPredictor(cfg, batch_size=1).predict_views(net, image)
        many = RecordPredictor(cfg, batch_size=8).predict_views(net, image)
    assert len(one) == 4 and sum(len(b) for b, _ in one) > 0  # boxes to compare, not empty lists
    _assert_same(one, many)


def test_same_view_of_several_images_batched_exactly(model_and_cfg):
    """Images taken batch_size at a time (the pseudo-labelling speed fix): every image's views
    equal those of the image run alone, also with images of another size in the same group, and
    the results come back tagged, in input order."""
    model, cfg = model_and_cfg
    images = [read_bgr8(r["file_name"]) for r in DatasetCatalog.get("tiny_target")]
    images.insert(2, cv2.resize(images[0], (80, 96)))  # another size among equal-size images
    tagged = [(f"img{i}", img) for i, img in enumerate(images)]
    with inference_mode(model) as net:
        alone = [RecordPredictor(cfg, batch_size=1).predict_views(net, img) for img in images]
        for batch_size in (3, 8):
            out = list(RecordPredictor(cfg, batch_size=batch_size).predict_images(net, tagged))
            assert [t for t, *_ in out] == [t for t, _ in tagged]
            for (tag, height, width, per_view), img, ref in zip(out, images, alone):
                assert (height, width) == img.shape[:2]
                _assert_same(per_view, ref)


def test_pseudo_labels_equal_fused_boxes_of_each_image(model_and_cfg):
    """The trainer's path (records, batched across images) gives each image's fused_boxes."""
    model, cfg = model_and_cfg
    records = DatasetCatalog.get("tiny_target")
    predictor = RecordPredictor(cfg, batch_size=4)
    labels = predictor.pseudo_labels(model, records)
    plain = predictor.plain_predictions(model, records)
    assert set(labels) == set(plain) == {image_key(r) for r in records}
    with inference_mode(model) as net:
        for record in records:
            image = read_bgr8(record["file_name"])
            boxes, scores = RecordPredictor(cfg, batch_size=1).fused_boxes(net, image)
            np.testing.assert_allclose(labels[image_key(record)][0], np.asarray(boxes).reshape(-1, 4), atol=1e-3)
            np.testing.assert_allclose(labels[image_key(record)][1], np.asarray(scores).reshape(-1), atol=1e-5)
            ref_boxes, ref_scores = RecordPredictor(cfg, batch_size=1).predict_views(net, image, [IDENTITY_VIEW])[0]
            np.testing.assert_allclose(plain[image_key(record)][0], ref_boxes, atol=1e-3)
            np.testing.assert_allclose(plain[image_key(record)][1], ref_scores, atol=1e-5)
