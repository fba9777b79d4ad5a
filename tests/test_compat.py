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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


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
