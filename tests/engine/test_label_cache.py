"""The first pseudo-labels' cache: its key follows every input of the labels, and entries round-trip exactly."""
import json

import numpy as np
import torch

from tests.conftest import tiny_config


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def _records(tmp_path, n=2):
    out = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x" * (10 + i))
        out.append({"file_name": str(path), "image_id": i, "annotations": []})
    return out


def test_the_key_follows_weights_settings_images_and_voting_weak_boxes(tmp_path):
    from sissi_d2.engine.label_cache import labeller_key

    cfg, records = tiny_config(tmp_path), _records(tmp_path)
    model = _model()
    key = labeller_key(model, cfg, records)
    assert key == labeller_key(_model(), cfg, records)  # same weights, another object
    reloaded = _model(1)
    reloaded.load_state_dict(model.state_dict())
    assert labeller_key(reloaded, cfg, records) == key
    # one weight, one buffer, one setting that reaches a box, one image, a voting weak box: another key
    other = _model()
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] += 1e-6
    assert labeller_key(other, cfg, records) != key
    other = _model()
    other[1].running_mean += 1
    assert labeller_key(other, cfg, records) != key
    for opts in (("SISSI.PSEUDO.SCORE_THRESH", "0.5"), ("INPUT.MIN_SIZE_TEST", "128"),
                 ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.3"), ("SISSI.PSEUDO.TEACHER", "ema"),
                 ("TEST.DETECTIONS_PER_IMAGE", "7")):
        assert labeller_key(model, tiny_config(tmp_path, *opts), records) != key, opts
    assert labeller_key(model, cfg, records[:1]) != key
    assert labeller_key(model, cfg, records, {"img0.png": np.ones((1, 4))}) != key
    # the cache's own folder, the output folder, the start rule and the number of rounds after the
    # first do not reach the first round's boxes
    for opts in (("SISSI.PSEUDO.CACHE_DIR", str(tmp_path / "c")), ("SISSI.START_RULE", "adele"),
                 ("TEST.EVAL_PERIOD", "3"), ("SISSI.PSEUDO.ROUNDS", "1")):
        assert labeller_key(model, tiny_config(tmp_path, *opts), records) == key, opts
    assert labeller_key(model, tiny_config(tmp_path / "elsewhere"), records) == key


def test_an_entry_round_trips_exactly_and_a_bad_one_is_made_again(tmp_path, caplog):
    from sissi_d2.engine.label_cache import read_cached_labels, write_cached_labels

    rng = np.random.default_rng(0)
    fused = {"a.png": (rng.random((3, 4)).astype(np.float32) * 500, rng.random(3).astype(np.float32)),
             "b.png": (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))}
    key = "f" * 64
    assert read_cached_labels(str(tmp_path), key) is None
    path = write_cached_labels(str(tmp_path / "cache"), key, fused)
    back = read_cached_labels(str(tmp_path / "cache"), key)
    assert set(back) == set(fused)
    for k, (boxes, scores) in fused.items():
        assert back[k][0].dtype == np.float32 and np.array_equal(back[k][0], boxes)
        assert np.array_equal(back[k][1], scores) and back[k][0].shape == boxes.shape
    entry = json.load(open(path))
    json.dump({**entry, "key": "0" * 64}, open(path, "w"))
    assert read_cached_labels(str(tmp_path / "cache"), key) is None
    open(path, "w").write("{trunc")
    assert read_cached_labels(str(tmp_path / "cache"), key) is None
    assert "Ignoring the pseudo-label cache entry" in caplog.text and path in caplog.text
