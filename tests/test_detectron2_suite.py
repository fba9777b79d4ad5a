"""Detectron2 v0.6's own test suite on this install (tools/check_detectron2.py), and the way the
check sorts outcomes into passed / expected failures / problems."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TOOL = os.path.join(ROOT, "tools", "check_detectron2.py")


def load_check():
    spec = importlib.util.spec_from_file_location("_tool_check_detectron2", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check = load_check()

ZOO_ID = "tests/test_model_zoo.py::TestModelZoo::test_get_returns_model"
C_ID = "tests/modeling/test_rpn.py::RPNTest::test_rrpn"
ZOO_REPORT = "RuntimeError: Model-zoo config 'Misc/x.yaml' is not available: this detectron2 ..."
C_REPORT = "NotImplementedError: detectron2._C.box_iou_rotated is a compiled operator"
EXPECTED = {ZOO_ID: ["needs-model-zoo"], C_ID: ["needs-c-extension"]}


def outcome(result, report=""):
    return {"outcome": result, "report": report}


def test_expected_failures_with_their_evidence_pass_the_check():
    outcomes = {ZOO_ID: outcome("failed", ZOO_REPORT), C_ID: outcome("failed", C_REPORT),
                "tests/test_a.py::test_ok": outcome("passed"), "tests/test_a.py::test_gpu": outcome("skipped")}
    result = check.compare(outcomes, ["needs-model-zoo", "needs-c-extension"], EXPECTED, {})
    assert result.ok, result.problems
    assert result.summary() == {
        "ok": True, "passed": 1, "skipped": 1, "problems": [],
        "expected_failures": {"needs-c-extension": 1, "needs-model-zoo": 1},
    }


def test_unexpected_failure_fails_the_check():
    outcomes = {ZOO_ID: outcome("failed", ZOO_REPORT), C_ID: outcome("failed", C_REPORT),
                "tests/test_a.py::test_new": outcome("failed", "AssertionError: 0 != 12")}
    result = check.compare(outcomes, ["needs-model-zoo", "needs-c-extension"], EXPECTED, {})
    assert not result.ok
    assert len(result.problems) == 1 and "test_new: unexpected failure" in result.problems[0]
    assert "0 != 12" in result.problems[0]


def test_expected_failure_that_passes_fails_the_check():
    outcomes = {ZOO_ID: outcome("passed"), C_ID: outcome("failed", C_REPORT)}
    result = check.compare(outcomes, ["needs-model-zoo", "needs-c-extension"], EXPECTED, {})
    assert len(result.problems) == 1 and "expected to fail (needs-model-zoo) but passes" in result.problems[0]


def test_expected_failure_for_another_reason_fails_the_check():
    outcomes = {ZOO_ID: outcome("failed", "TypeError: something else broke"), C_ID: outcome("failed", C_REPORT)}
    result = check.compare(outcomes, ["needs-model-zoo", "needs-c-extension"], EXPECTED, {})
    assert len(result.problems) == 1 and "fails for another reason" in result.problems[0]


def test_listed_test_must_pass_where_its_reason_does_not_hold():
    # An official build has _C: the rotated-box tests are then ordinary tests.
    outcomes = {ZOO_ID: outcome("failed", ZOO_REPORT), C_ID: outcome("failed", C_REPORT)}
    result = check.compare(outcomes, ["needs-model-zoo"], EXPECTED, {})
    assert len(result.problems) == 1
    assert "unexpected failure (listed for needs-c-extension, which does not hold here)" in result.problems[0]
    assert check.compare({ZOO_ID: outcome("failed", ZOO_REPORT), C_ID: outcome("passed")},
                         ["needs-model-zoo"], EXPECTED, {}).ok


def test_listed_test_missing_from_the_suite_fails_the_check():
    result = check.compare({ZOO_ID: outcome("failed", ZOO_REPORT)}, ["needs-model-zoo"], EXPECTED, {})
    assert len(result.problems) == 1 and "the suite has no such test" in result.problems[0]


def test_every_expected_failure_names_known_reasons():
    for test_id, reasons in check.EXPECTED_FAILURES.items():
        assert test_id.startswith("tests/") and "::" in test_id, test_id
        assert reasons and set(reasons) <= set(check.REASONS), (test_id, reasons)
    assert set(check.EVIDENCE_OVERRIDES) <= set(check.EXPECTED_FAILURES)


def test_detectron2_v06_suite_on_this_install(tmp_path):
    suite = os.environ.get("SISSI_DETECTRON2_TESTS") or check.DEFAULT_SUITE
    if not os.path.isdir(os.path.join(suite, "tests")):
        pytest.skip(
            f"Detectron2 v0.6 test suite not found at {os.path.normpath(suite)}: ../shared is absent "
            "(set SISSI_DETECTRON2_TESTS to its folder to run this check)"
        )
    summary_file = tmp_path / "summary.json"
    # One OpenMP thread: on a shared 2-core machine competing threads make the suite slower.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, TOOL, "--suite", suite, "--json", str(summary_file)],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert summary["ok"] and summary["passed"] > 150, summary
