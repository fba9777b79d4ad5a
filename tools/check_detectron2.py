#!/usr/bin/env python
"""Check the installed Detectron2 with Detectron2 v0.6's own unit tests.

  python tools/check_detectron2.py [--suite DIR] [--json FILE] [--keep DIR]

Runs the test suite of the Detectron2 v0.6 release (``tests/`` of the v0.6 tag, kept unchanged in
``../shared/third_party/detectron2-v0.6-tests``) against the detectron2 of this interpreter, after
``import sissi_d2`` (so with the compatibility patches of ``sissi_d2._compat``, as users of
sissi_d2 get them). Every test must pass, be skipped by the suite itself (no GPU, no mmdet, ...),
or fail for a reason listed below in EXPECTED_FAILURES *that holds on this machine*:

  needs-c-extension   detectron2 was installed without its compiled ``detectron2._C``
  needs-model-zoo     the model-zoo config files are not installed (the PyPI sdist has none)
  needs-network       the test downloads (weights, images) and the network is unreachable
  needs-coco-sample   COCO sample files that Detectron2's CI downloads before testing
  needs-caffe2        the test exports to Caffe2, which PyTorch 2 no longer ships

So on an official Detectron2 build (with ``_C`` and the configs) the rotated-box and model-zoo
tests must pass. The check fails (exit status 1) on an unexpected failure, on an expected failure
that now passes (remove it from the list), on one that fails for another reason than its own, and
on a listed test that the suite no longer has. It takes 40-80 s on 2 shared CPU cores.

Environment: SISSI_DETECTRON2_TESTS overrides the suite folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional

# Torch's deprecation notices on Detectron2 0.6's import are not for the user of this tool.
warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # this checkout's sissi_d2, also where it is not installed
DEFAULT_SUITE = os.path.join(ROOT, "..", "shared", "third_party", "detectron2-v0.6-tests")
# What Detectron2's own CI downloads before its tests (datasets/prepare_for_tests.sh).
COCO_SAMPLE = os.path.join("coco", "annotations", "instances_val2017_100.json")


# ---------------------------------------------------------------------------------------------
# Reasons a test may fail, each with the check that it holds here and the evidence it leaves
# ---------------------------------------------------------------------------------------------
def _missing_c_extension() -> bool:
    import sissi_d2  # noqa: F401  (registers the stand-in where there is no compiled _C)
    from sissi_d2._compat import has_real_c_extension

    return not has_real_c_extension()


def _missing_model_zoo_configs() -> bool:
    from sissi_d2._compat import model_zoo_configs_dir

    return not os.path.isdir(model_zoo_configs_dir())


def _network_unreachable() -> bool:
    try:
        socket.create_connection(("dl.fbaipublicfiles.com", 443), timeout=3).close()
        return False
    except OSError:
        return True


def _missing_coco_sample(run_dir: str) -> bool:
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return not os.path.isfile(os.path.join(run_dir, root, COCO_SAMPLE))


def _missing_caffe2() -> bool:
    import importlib.util

    return importlib.util.find_spec("caffe2") is None


@dataclasses.dataclass(frozen=True)
class Reason:
    description: str
    holds: Callable[[str], bool]  # run_dir -> whether the reason applies on this machine
    evidence: str  # regex that the failure report of such a test contains


REASONS: Dict[str, Reason] = {
    "needs-c-extension": Reason(
        "needs the compiled detectron2._C (rotated boxes, rotated NMS, RoIAlignRotated, fast "
        "COCOeval); the PyPI sdist has no C++ sources",
        lambda run_dir: _missing_c_extension(),
        r"detectron2\._C|without its C\+\+ extension|has no attribute 'nms_rotated'|"
        r"no attribute nms_rotated",
    ),
    "needs-model-zoo": Reason(
        "needs the model-zoo config files, which the PyPI sdist does not install",
        lambda run_dir: _missing_model_zoo_configs(),
        r"Model-zoo config .* is not available|not available in Model Zoo",
    ),
    "needs-network": Reason(
        "downloads weights or images at test time, and the network is unreachable",
        lambda run_dir: _network_unreachable(),
        r"URLError|urlopen error|Name or service not known|Temporary failure in name resolution|"
        r"Network is unreachable",
    ),
    "needs-coco-sample": Reason(
        f"needs datasets/{COCO_SAMPLE}, which Detectron2's CI downloads before testing",
        _missing_coco_sample,
        re.escape("instances_val2017_100.json"),
    ),
    "needs-caffe2": Reason(
        "exports to Caffe2, which PyTorch 2 no longer ships",
        lambda run_dir: _missing_caffe2(),
        r"caffe2",
    ),
}

# Measured on the project's install path (Python 3.11, torch 2.14.1 CPU, pb1-detectron2 0.6
# without its C++ extension, no network). A test listed under several reasons is expected to fail
# while any of them holds. The ids are pytest's, relative to the suite folder.
_C = "needs-c-extension"
_ZOO = "needs-model-zoo"
_NET = "needs-network"
_COCO = "needs-coco-sample"
_CAFFE2 = "needs-caffe2"

EXPECTED_FAILURES: Dict[str, List[str]] = {
    # detectron2._C
    "tests/data/test_coco_evaluation.py::TestCOCOeval::test_fast_eval": [_C],
    **{f"tests/layers/test_nms_rotated.py::TestNMSRotated::{name}": [_C] for name in (
        "test_batched_nms_rotated_0_degree_cpu", "test_nms_rotated_0_degree_cpu",
        "test_nms_rotated_180_degrees_cpu", "test_nms_rotated_90_degrees_cpu",
    )},
    "tests/layers/test_nms_rotated.py::TestScriptable::test_scriptable_cpu": [_C],
    **{f"tests/layers/test_roi_align_rotated.py::ROIAlignRotatedTest::{name}": [_C] for name in (
        "test_empty_box", "test_forward_output_0_90_180_270", "test_resize",
        "test_roi_align_rotated_gradcheck_cpu",
    )},
    "tests/modeling/test_roi_heads.py::ROIHeadsTest::test_rroi_heads": [_C],
    "tests/modeling/test_roi_pooler.py::TestROIPooler::test_roialignv2_roialignrotated_match_cpu": [_C],
    "tests/modeling/test_rpn.py::RPNTest::test_rrpn": [_C],
    **{f"tests/structures/test_rotated_boxes.py::TestRotatedBoxesLayer::{name}": [_C] for name in (
        "test_iou_0_dim_cpu", "test_iou_extreme", "test_iou_half_overlap_cpu", "test_iou_issue_2154",
        "test_iou_issue_2167", "test_iou_precision",
    )},
    **{f"tests/structures/test_rotated_boxes.py::TestRotatedBoxesStructure::{name}": [_C] for name in (
        "test_pairwise_iou_0_degree", "test_pairwise_iou_45_degrees", "test_pairwise_iou_issue1207",
        "test_pairwise_iou_issue1207_simplified", "test_pairwise_iou_large_close_boxes",
        "test_pairwise_iou_many_boxes", "test_pairwise_iou_orthogonal",
    )},
    # model-zoo config files
    "tests/config/test_yacs_config.py::TestConfigurable::testOmegaConf": [_ZOO],
    "tests/data/test_dataset.py::TestDataLoader::test_build_dataloader_train": [_ZOO],
    "tests/data/test_dataset.py::TestDataLoader::test_build_iterable_dataloader_train": [_ZOO],
    "tests/modeling/test_backbone.py::TestBackBone::test_fpn_scriptability": [_ZOO],
    **{f"tests/modeling/test_model_e2e.py::{name}": [_ZOO] for name in (
        "MaskRCNNE2ETest::test_empty_data", "MaskRCNNE2ETest::test_half_empty_data",
        "MaskRCNNE2ETest::test_roiheads_inf_nan_data", "RetinaNetE2ETest::test_empty_data",
        "RetinaNetE2ETest::test_inf_nan_data", "SemSegE2ETest::test_forward",
    )},
    "tests/modeling/test_roi_heads.py::ROIHeadsTest::test_PointRend_mask_head_tracing": [_ZOO],
    "tests/test_engine.py::TestTrainer::test_setup_config": [_ZOO],
    **{f"tests/test_model_analysis.py::{name}": [_ZOO] for name in (
        "RetinaNetTest::test_flop", "RetinaNetTest::test_param_count",
        "FasterRCNNTest::test_flop", "FasterRCNNTest::test_param_count",
    )},
    **{f"tests/test_model_zoo.py::TestModelZoo::{name}": [_ZOO] for name in (
        "test_get_returns_model", "test_mask_rcnn_c4", "test_mask_rcnn_fpn", "test_panoptic_fpn",
        "test_schedule",
    )},
    # model-zoo configs, then the trained weights and a COCO image from the network
    **{f"tests/test_export_torchscript.py::{name}": [_ZOO, _NET] for name in (
        "TestScripting::testMaskRCNNC4", "TestScripting::testMaskRCNNFPN", "TestScripting::testRetinaNet",
        "TestTracing::testMaskRCNNC4", "TestTracing::testMaskRCNNFPN", "TestTracing::testRetinaNet",
    )},
    "tests/test_export_caffe2.py::TestCaffe2Export::testMaskRCNN": [_ZOO, _NET, _CAFFE2],
    "tests/test_export_caffe2.py::TestCaffe2Export::testRetinaNet": [_ZOO, _NET, _CAFFE2],
    # network
    "tests/data/test_detection_utils.py::TestTransformAnnotations::test_opencv_exif_orientation": [_NET],
    "tests/data/test_detection_utils.py::TestTransformAnnotations::test_read_exif_orientation": [_NET],
    # COCO sample files
    "tests/data/test_coco_evaluation.py::TestCOCOeval::test_unknown_category": [_COCO],
    "tests/test_engine.py::TestTrainer::test_default_trainer": [_COCO],
}

# The fast COCOeval's _C error is caught by the test itself, which then fails looking up the
# results that the fast path never wrote.
EVIDENCE_OVERRIDES: Dict[str, str] = {
    "tests/data/test_coco_evaluation.py::TestCOCOeval::test_fast_eval": r"KeyError: 'precision'",
}


# ---------------------------------------------------------------------------------------------
# Running the suite
# ---------------------------------------------------------------------------------------------
# Placed beside the copied tests/: applies sissi_d2's patches first (as the suite's README says),
# and records each test's outcome by pytest id, whatever phase (collection, setup, call,
# teardown) decided it.
_CONFTEST = '''\
import json
import os

import sissi_d2  # noqa: F401  (the compatibility patches, as users of sissi_d2 get them)

_OUTCOMES = {}


def _record(report):
    entry = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "report": ""})
    if report.failed:
        entry["outcome"] = "failed"
        entry["report"] += report.longreprtext[-6000:]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["report"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""


def pytest_collectreport(report):
    if report.failed:
        _record(report)


def pytest_runtest_logreport(report):
    _record(report)


def pytest_sessionfinish(session):
    with open(os.environ["SISSI_D2_SUITE_OUTCOMES"], "w") as f:
        json.dump(_OUTCOMES, f, indent=1)
'''


def run_suite(suite_dir: str, run_dir: str, timeout: float = 1800) -> tuple[dict, str, float]:
    """Copy the suite's tests/ into run_dir, run it with pytest; (outcomes by id, log, seconds)."""
    shutil.copytree(os.path.join(suite_dir, "tests"), os.path.join(run_dir, "tests"))
    with open(os.path.join(run_dir, "conftest.py"), "w") as f:
        f.write(_CONFTEST)
    outcomes_file = os.path.join(run_dir, "outcomes.json")
    env = dict(os.environ)
    env["SISSI_D2_SUITE_OUTCOMES"] = outcomes_file
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    # v0.6 skips its Caffe2 test when $CI is set: without it, the result is the same in CI and here.
    env.pop("CI", None)
    # One OpenMP thread: on a shared 2-core machine competing threads make the suite slower
    # (measured 36 s with one, 47-70 s with the default).
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "tests"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if not os.path.isfile(outcomes_file):
        raise RuntimeError(f"The Detectron2 test suite did not run (exit status {proc.returncode}):\n{log[-5000:]}")
    with open(outcomes_file) as f:
        return json.load(f), log, seconds


# ---------------------------------------------------------------------------------------------
# Comparing with the expected failures
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    passed: List[str] = dataclasses.field(default_factory=list)
    skipped: List[str] = dataclasses.field(default_factory=list)
    expected: Dict[str, List[str]] = dataclasses.field(default_factory=dict)  # reason -> ids
    problems: List[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        return {
            "ok": self.ok,
            "passed": len(self.passed),
            "skipped": len(self.skipped),
            "expected_failures": {reason: len(ids) for reason, ids in self.expected.items()},
            "problems": list(self.problems),
        }


def compare(
    outcomes: Dict[str, dict],
    active_reasons: List[str],
    expected: Optional[Dict[str, List[str]]] = None,
    evidence_overrides: Optional[Dict[str, str]] = None,
) -> Result:
    """Sort the suite's outcomes into passed / skipped / expected failures (by reason) / problems.

    ``active_reasons`` are the keys of REASONS that hold here; a listed test whose reasons all do
    not hold must pass like any other.
    """
    expected = EXPECTED_FAILURES if expected is None else expected
    evidence_overrides = EVIDENCE_OVERRIDES if evidence_overrides is None else evidence_overrides
    result = Result()
    for test_id in sorted(set(expected) - set(outcomes)):
        result.problems.append(f"{test_id}: listed as an expected failure, but the suite has no such test")
    for test_id, entry in sorted(outcomes.items()):
        outcome, report = entry["outcome"], entry.get("report", "")
        reasons = [r for r in expected.get(test_id, ()) if r in active_reasons]
        if outcome == "skipped":
            result.skipped.append(test_id)
        elif outcome == "passed":
            if reasons:
                result.problems.append(
                    f"{test_id}: expected to fail ({', '.join(reasons)}) but passes: remove it from "
                    "EXPECTED_FAILURES in tools/check_detectron2.py"
                )
            else:
                result.passed.append(test_id)
        elif not reasons:
            listed = expected.get(test_id)
            why = f" (listed for {', '.join(listed)}, which does not hold here)" if listed else ""
            result.problems.append(f"{test_id}: unexpected failure{why}:\n{_last_lines(report)}")
        else:
            patterns = [evidence_overrides[test_id]] if test_id in evidence_overrides else [
                REASONS[r].evidence for r in reasons
            ]
            if any(re.search(p, report) for p in patterns):
                result.expected.setdefault(reasons[0], []).append(test_id)
            else:
                result.problems.append(
                    f"{test_id}: expected to fail ({', '.join(reasons)}) but fails for another "
                    f"reason:\n{_last_lines(report)}"
                )
    return result


def _last_lines(text: str, n: int = 12) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


def active_reasons(run_dir: str) -> List[str]:
    return [key for key, reason in REASONS.items() if reason.holds(run_dir)]


def format_report(result: Result, seconds: float, active: List[str]) -> str:
    s = result.summary()
    lines = [
        f"Detectron2 v0.6 test suite on this install ({seconds:.0f} s): {s['passed']} passed, "
        f"{sum(s['expected_failures'].values())} expected failures, {s['skipped']} skipped by the suite",
    ]
    for reason, n in s["expected_failures"].items():
        lines.append(f"  {n:3d} {reason}: {REASONS[reason].description}")
    inactive = [r for r in REASONS if r not in active]
    if inactive:
        lines.append(f"  (not applicable here, so those tests must pass: {', '.join(inactive)})")
    if result.problems:
        lines.append(f"FAILED: {len(result.problems)} problem(s):")
        lines.extend("- " + p for p in result.problems)
    else:
        lines.append("OK")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=os.environ.get("SISSI_DETECTRON2_TESTS") or DEFAULT_SUITE,
                   help="folder holding the v0.6 tests/ (default ../shared/third_party/detectron2-v0.6-tests)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--keep", metavar="DIR", help="run in DIR (created) and keep it, with outcomes.json")
    p.add_argument("--log", action="store_true", help="print pytest's own output too")
    args = p.parse_args(argv)

    suite = os.path.abspath(args.suite)
    if not os.path.isdir(os.path.join(suite, "tests")):
        print(f"No Detectron2 test suite at {suite} (expected its tests/ folder): pass --suite.", file=sys.stderr)
        return 2
    run_dir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="detectron2_suite_")
    os.makedirs(run_dir, exist_ok=True)
    try:
        outcomes, log, seconds = run_suite(suite, run_dir)
        active = active_reasons(run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    result = compare(outcomes, active)
    if args.log:
        print(log)
    print(format_report(result, seconds, active))
    if args.json:
        summary = dict(result.summary(), seconds=round(seconds, 1), active_reasons=active)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
