"""Each compatibility patch of sissi_d2._compat, and that a real detectron2._C is left alone."""
import subprocess
import sys

import numpy as np
import pytest

import sissi_d2
from sissi_d2 import _compat


def test_standin_installed_without_real_extension():
    import detectron2._C as C

    assert getattr(C, "is_sissi_standin", False)
    assert "detectron2._C stand-in" in _compat.applied()
    assert isinstance(C.get_compiler_version(), str) and C.has_cuda() is False
    with pytest.raises(AttributeError):
        C.__wrapped__
    with pytest.raises(NotImplementedError, match="without its C\\+\\+ extension"):
        C.deform_conv_forward


def test_modeling_and_collect_env_import():
    import detectron2.modeling  # noqa: F401  (imports detectron2.layers, which imports _C)
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def _run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter (patches apply at import) and expect it to print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_real_extension_is_left_alone():
    # A compiled _C (simulated by a module without the stand-in marker) must not be replaced.
    code = (
        "import sys, types, detectron2\n"
        "real = types.ModuleType('detectron2._C'); sys.modules['detectron2._C'] = real\n"
        "import sissi_d2\n"
        "from sissi_d2 import _compat\n"
        "assert sys.modules['detectron2._C'] is real\n"
        "assert 'detectron2._C stand-in' not in _compat.applied(), _compat.applied()\n"
        "print('ok')\n"
    )
    _run_fresh(code)


def test_pillow_linear_alias():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    import detectron2.data.transforms  # noqa: F401  (uses Image.LINEAR as a default argument)


def test_class_histogram_range_check_runs():
    import detectron2.data.build as build

    records = [{"file_name": "a.png", "annotations": [{"category_id": 0}, {"category_id": 0}]}]
    build.print_instances_class_histogram(records, ["cell"])  # valid: no error
    bad = [{"file_name": "b.png", "annotations": [{"category_id": 3}]}]
    with pytest.raises(ValueError, match="b.png"):
        build.print_instances_class_histogram(bad, ["cell"])


def test_map_dataset_retries_on_python311():
    from detectron2.data.common import MapDataset

    calls = []

    def mapper(x):
        calls.append(x)
        return None if x == 0 else x * 10

    ds = MapDataset([0, 1, 2], mapper)
    assert ds[1] == 10  # a success makes 1 a fallback candidate
    assert ds[0] in (10, 20)  # sample 0 is rejected: a candidate is used instead
    ds_all_bad = MapDataset([0], lambda x: None)
    with pytest.raises(RuntimeError, match="returned None"):
        ds_all_bad[0]


def test_patches_idempotent():
    before = _compat.applied()
    assert _compat.apply_all() == before
    assert np.__version__  # numpy 2 is what makes the histogram patch necessary


def test_patches_left_alone_where_not_needed():
    # An install that has pkg_resources and caffe2 (simulated by modules registered before
    # sissi_d2 is imported) gets neither the model_zoo nor the export fix.
    code = (
        "import sys, types\n"
        "sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')\n"
        "sys.modules['caffe2'] = types.ModuleType('caffe2')\n"
        "import sissi_d2\n"
        "from sissi_d2 import _compat\n"
        "names = _compat.applied()\n"
        "assert 'model_zoo without pkg_resources' not in names, names\n"
        "assert 'detectron2.export without caffe2' not in names, names\n"
        "assert not any(getattr(f, 'fullname', '') == 'detectron2.export.api' for f in sys.meta_path)\n"
        "print('ok')\n"
    )
    _run_fresh(code)


def test_model_zoo_imports_without_pkg_resources():
    import importlib.util

    from detectron2 import model_zoo

    if importlib.util.find_spec("pkg_resources") is None:
        assert "model_zoo without pkg_resources" in _compat.applied()
        assert "pkg_resources" not in sys.modules  # the substitute was there for that import only
    url = model_zoo.get_checkpoint_url("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    assert url.startswith("https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/")


def test_model_zoo_absent_config_is_a_clear_error():
    import os

    from detectron2 import model_zoo

    if os.path.isdir(_compat.model_zoo_configs_dir()):
        pytest.skip("this detectron2 has its model-zoo configs")
    with pytest.raises(RuntimeError, match="official Detectron2 build"):
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    with pytest.raises(RuntimeError, match="without the model-zoo config files"):
        model_zoo.get("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")


def test_model_zoo_error_unchanged_when_configs_installed(tmp_path, monkeypatch):
    def get_config_file(path):
        raise RuntimeError(f"{path} not available in Model Zoo!")

    monkeypatch.setattr(_compat, "model_zoo_configs_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="^Invalid/config.yaml not available in Model Zoo!$"):
        _compat._clear_missing_config_error(get_config_file)("Invalid/config.yaml")


def test_export_imports_without_caffe2():
    import detectron2.export as export
    from detectron2.config import get_cfg
    from detectron2.utils.analysis import flop_count_operators  # noqa: F401  (imports detectron2.export)

    assert callable(export.TracingAdapter) and callable(export.scripting_with_instances)
    if "detectron2.export without caffe2" in _compat.applied():
        with pytest.raises(ImportError, match="caffe2.*TorchScript"):
            export.Caffe2Tracer(get_cfg(), None, None)
    cfg = export.add_export_config(get_cfg())
    assert cfg.EXPORT_CAFFE2.USE_HEATMAP_MAX_KEYPOINT is False


@pytest.fixture(scope="module")
def tiny_faster_rcnn(tmp_path_factory):
    import torch
    from detectron2.modeling import build_model

    from tests.conftest import tiny_config

    # An untrained model scores low: keep all its boxes so there is something to compare.
    cfg = tiny_config(tmp_path_factory.mktemp("export"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _eager_boxes(model, image):
    import torch

    with torch.no_grad():
        return model.inference([{"image": image}], do_postprocess=False)[0].pred_boxes.tensor


def test_traced_faster_rcnn_gives_eager_boxes(tiny_faster_rcnn):
    import torch
    from detectron2.export import TracingAdapter

    model = tiny_faster_rcnn
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255

    def inference(model, inputs):
        return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    adapter = TracingAdapter(model, [{"image": image}], inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,))
    other = torch.rand(3, 80, 112, generator=torch.Generator().manual_seed(2)) * 255
    for x in (image, other):  # also an image of another size than the traced one
        eager = _eager_boxes(model, x)
        with torch.no_grad():
            outputs = adapter.outputs_schema(traced(x))
        assert len(eager) > 0
        torch.testing.assert_close(outputs[0]["instances"].pred_boxes.tensor, eager)


def test_scripted_faster_rcnn_gives_eager_boxes(tiny_faster_rcnn):
    import torch
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
              "scores": torch.Tensor, "pred_classes": torch.Tensor}
    scripted = scripting_with_instances(tiny_faster_rcnn, fields)
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        boxes = scripted.inference([{"image": image}], do_postprocess=False)[0].pred_boxes.tensor
    torch.testing.assert_close(boxes, _eager_boxes(tiny_faster_rcnn, image))


def _simple_model():
    import torch

    class Simple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return {"loss": self.linear(x).sum()}

    return Simple()


def test_torch2_scheduler_state_saved_and_resumed(tmp_path):
    # Detectron2 v0.6's tests/test_engine.py::TestTrainer::test_checkpoint_resume, on a torch 2
    # scheduler (StepLR is no longer an _LRScheduler).
    import itertools

    import torch
    from detectron2.engine import SimpleTrainer, hooks
    from fvcore.common.checkpoint import Checkpointer

    model = _simple_model()
    data = itertools.repeat(torch.ones(4, 3))
    opt = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 3)
    trainer = SimpleTrainer(model, data, opt)
    checkpointer = Checkpointer(model, str(tmp_path), opt=opt, trainer=trainer)
    trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler), hooks.PeriodicCheckpointer(checkpointer, 10)])
    trainer.train(0, 12)
    assert scheduler.last_epoch == 12 and opt.param_groups[0]["lr"] == pytest.approx(1e-5)

    opt = torch.optim.SGD(model.parameters(), 999)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 3)
    trainer = SimpleTrainer(model, data, opt)
    trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler)])
    Checkpointer(model, str(tmp_path), opt=opt, trainer=trainer).resume_or_load("non_exist.pth")
    assert trainer.iter == 11
    assert scheduler.last_epoch == 12 and opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_sissi_trainer_resume_keeps_torch2_scheduler(tiny_datasets, tmp_path):
    # SISSITrainer's own schedule (Detectron2's LRMultiplier) is an _LRScheduler and was always
    # saved; a subclass with one of torch's schedulers must resume exactly as well.
    import torch

    from sissi_d2.engine import SISSITrainer
    from tests.conftest import tiny_config

    class StepTrainer(SISSITrainer):
        @classmethod
        def build_lr_scheduler(cls, cfg, optimizer):
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    trainer = StepTrainer(tiny_config(tmp_path, "SISSI.EPOCHS", "1", "SOLVER.BASE_LR", "0.01"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.scheduler.last_epoch == 2

    resumed = StepTrainer(tiny_config(tmp_path, "SISSI.EPOCHS", "2", "SOLVER.BASE_LR", "0.01"))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert resumed.scheduler.last_epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)


def test_polygon_crop_keeps_the_first_vertex():
    from fvcore.transforms.transform import CropTransform

    square = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])
    inside = CropTransform(5, 5, 40, 40).apply_polygons([square])
    assert len(inside) == 1
    np.testing.assert_allclose(inside[0], square - 5)  # unchanged, only shifted by the crop
    # Cut by the crop window: the surviving first vertex still comes first, the area is right.
    cut = CropTransform(0, 0, 20, 40).apply_polygons([square])
    assert len(cut) == 1 and len(cut[0]) == 4
    np.testing.assert_allclose(cut[0][0], [10.0, 10.0])
    x, y = cut[0][:, 0], cut[0][:, 1]
    assert abs(0.5 * np.sum(x * np.roll(y, 1) - np.roll(x, 1) * y)) == pytest.approx(200.0)
