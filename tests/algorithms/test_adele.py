"""ADELE memorisation detection: the method.md regression fixture, failures, latching, state."""
import json
import math

import numpy as np
import pytest

from sissi_d2.algorithms.adele import (
    MemorisationDetector,
    _update_epoch_from_params,
    estimate_update_epoch,
    fit_learning_curve,
    learning_curve,
    learning_curve_slope,
)

# A real AP50 curve (one value per epoch) and ADELE's update epochs for its prefixes, n_epoch 31
# (docs/method.md, regression fixture).
AP50 = [float(v) for v in (
    "0.0591 0.1666 0.2074 0.1634 0.1848 0.1980 0.2287 0.2323 0.2290 0.2263 0.2157 0.2244 0.2350 "
    "0.2422 0.2322 0.2301 0.2387 0.2425 0.2459 0.2413 0.2476 0.2457 0.2403 0.2491 0.2472 0.2504 "
    "0.2501 0.2492 0.2467 0.2473 0.2468 0.2477 0.2485 0.2491 0.2513"
).split()]
EXPECTED_UPDATE_EPOCHS = [4, 21, 21, 11, 11, 14, 23, 22, 18, 9, 5, 6, 9, 15, 9, 7, 8, 10, 14, 11,
                          13, 11, 9, 10, 9, 10, 10, 10, 9, 8, 8, 8, 8, 8, 8]
HORIZON = 31


def test_fixture_update_epochs_for_every_prefix():
    # ADELE fits from the first value on, so the fixture needs min_points=1 (the detector's
    # default guard of 4 points is tested separately).
    got = [estimate_update_epoch(AP50[: e + 1], HORIZON, 0.9, min_points=1)
           for e in range(len(AP50))]
    assert got == EXPECTED_UPDATE_EPOCHS


def test_detector_fires_first_at_epoch_9_and_latches():
    detector = MemorisationDetector(horizon=HORIZON, threshold=0.9, min_points=4)
    fired = [detector.observe(epoch, value) for epoch, value in enumerate(AP50)]
    assert fired.index(True) == 9
    assert detector.fired_epoch == 9
    assert all(fired[9:])  # latched, although later estimates (e.g. 15 at epoch 13) are larger
    assert detector.update_epochs[:3] == [None, None, None]  # below min_points
    assert detector.update_epochs[3:10] == EXPECTED_UPDATE_EPOCHS[3:10]
    assert len(detector.ap50) == len(detector.update_epochs) == len(detector.fit_params) == 35


def test_detector_respects_min_points():
    # With a single point ADELE's estimate is 4 already; a detector needing 6 points must not
    # fire at epoch 4 even though 4 >= that estimate, and must use its own estimate later.
    detector = MemorisationDetector(horizon=HORIZON, min_points=6)
    for epoch in range(5):
        assert not detector.observe(epoch, AP50[epoch])
    assert detector.update_epochs == [None] * 5
    assert detector.fit_params == [None] * 5
    detector.observe(5, AP50[5])
    assert detector.update_epochs[5] == EXPECTED_UPDATE_EPOCHS[5]


def test_fit_recovers_known_curve_parameters():
    n = 20
    x = np.linspace(0, n, n)
    truth = (0.6, 0.7, 2.5)
    params = fit_learning_curve(learning_curve(x, *truth))
    assert params is not None
    assert np.allclose(params, truth, rtol=1e-3)
    assert all(type(p) is float for p in params)


def test_slope_is_the_derivative_of_the_curve():
    params = (0.8, 0.6, 3.0)
    x = np.array([0.5, 1.0, 2.0, 7.0])
    h = 1e-5
    x_eval = x + 1e-6
    numeric = (learning_curve(x_eval + h, *params) - learning_curve(x_eval - h, *params)) / (2 * h)
    assert np.allclose(learning_curve_slope(x, *params), numeric, rtol=1e-5)
    assert math.isfinite(float(learning_curve_slope(0.0, *params)))  # 1e-6 offset at x = 0


@pytest.mark.parametrize("values", [
    [0.1, float("nan"), 0.2, 0.3],
    [0.1, 0.2, float("inf"), 0.3, 0.3],
    [],
])
def test_unusable_values_give_no_fit(values):
    assert fit_learning_curve(values) is None
    assert estimate_update_epoch(values, HORIZON, min_points=1) is None


def test_flat_zero_curve_does_not_fire():
    # Nothing learnt: the fit is flat (huge c), its slope never "falls", so the estimate is the
    # end of the horizon and the detector stays quiet.
    assert estimate_update_epoch([0.0] * 8, HORIZON) == HORIZON
    detector = MemorisationDetector(horizon=HORIZON)
    assert not any(detector.observe(e, 0.0) for e in range(8))


def test_zero_slope_at_one_gives_no_estimate():
    # a = 0 makes f' identically 0; ADELE's ratio would be 0/0 and fire at once.
    assert _update_epoch_from_params((0.0, 0.5, 1.0), HORIZON, 0.9) is None
    assert _update_epoch_from_params((0.5, 0.5, 1.0), HORIZON, 0.9) is not None


def test_too_few_points_and_bad_arguments():
    assert estimate_update_epoch(AP50[:3], HORIZON) is None  # default min_points=4
    assert estimate_update_epoch(AP50[:4], HORIZON) == EXPECTED_UPDATE_EPOCHS[3]
    with pytest.raises(ValueError, match="horizon"):
        estimate_update_epoch(AP50, 1)
    with pytest.raises(ValueError, match="horizon"):
        MemorisationDetector(horizon=0)
    detector = MemorisationDetector(horizon=HORIZON)
    detector.observe(0, 0.1)
    with pytest.raises(ValueError, match="increase"):
        detector.observe(0, 0.2)


def test_nan_epoch_means_not_yet():
    detector = MemorisationDetector(horizon=HORIZON, min_points=1)
    assert not detector.observe(0, float("nan"))
    assert detector.update_epochs == [None]
    assert detector.fit_params == [None]


def test_state_round_trip_through_json():
    detector = MemorisationDetector(horizon=HORIZON)
    for epoch in range(7):
        detector.observe(epoch, np.float32(AP50[epoch]))  # numpy input must not leak into state
    text = json.dumps(detector.state_dict())  # raises on numpy scalars
    restored = MemorisationDetector(horizon=5, threshold=0.5, min_points=2)
    restored.load_state_dict(json.loads(text))
    assert restored.state_dict() == detector.state_dict()
    assert (restored.horizon, restored.threshold, restored.min_points) == (HORIZON, 0.9, 4)

    # Resuming continues exactly as an uninterrupted run.
    fired_restored = [restored.observe(e, AP50[e]) for e in range(7, len(AP50))]
    fired_original = [detector.observe(e, AP50[e]) for e in range(7, len(AP50))]
    assert fired_restored == fired_original
    assert restored.fired_epoch == detector.fired_epoch == 9
    state = json.loads(json.dumps(restored.state_dict()))
    assert state["fired_epoch"] == 9
    assert state["update_epochs"][9] == 9


def test_fired_by_deceleration_on_the_paper_fixture():
    detector = MemorisationDetector(horizon=HORIZON, threshold=0.9, min_points=4)
    for epoch, value in enumerate(AP50[:10]):
        detector.observe(epoch, value)
    assert detector.fired_epoch == 9
    assert detector.update_epochs[9] < HORIZON
    assert detector.fired_by == "deceleration"
    assert detector.state_dict()["fired_by"] == "deceleration"


def test_fired_by_horizon_when_the_curve_never_decelerates():
    # A straight rising line never loses 90 % of its slope: the update epoch is the horizon
    # itself, and firing there is forced, not detected.
    detector = MemorisationDetector(horizon=8, min_points=4)
    fired = [detector.observe(e, 0.02 + 0.03 * e) for e in range(12)]
    assert detector.update_epochs[4] == 8
    assert fired.index(True) == 8
    assert detector.fired_by == "horizon"


def test_running_max_curve_ignores_a_noisy_dip():
    # The 320 px probe (shared/docs/probes.md): a still-rising curve with one dip at epoch 6
    # fires the raw rule there; its running maximum does not decelerate.
    noisy = [0.005, 0.005, 0.039, 0.041, 0.065, 0.095, 0.049]
    raw = MemorisationDetector(horizon=60, min_points=6)
    robust = MemorisationDetector(horizon=60, min_points=6, curve="running_max")
    for epoch, value in enumerate(noisy):
        raw.observe(epoch, value)
        robust.observe(epoch, value)
    assert raw.fired_epoch == 6 and raw.fired_by == "deceleration"
    assert robust.fired_epoch is None
    assert robust.fitted_values()[-1] == 0.095


def test_running_max_equals_raw_on_a_monotone_curve():
    mono = list(np.maximum.accumulate(AP50))
    a = MemorisationDetector(horizon=HORIZON)
    b = MemorisationDetector(horizon=HORIZON, curve="running_max")
    for epoch, value in enumerate(mono):
        a.observe(epoch, value)
        b.observe(epoch, value)
    assert a.update_epochs == b.update_epochs and a.fired_epoch == b.fired_epoch


def test_unknown_curve_and_old_state_without_fired_by():
    with pytest.raises(ValueError, match="curve"):
        MemorisationDetector(horizon=HORIZON, curve="smooth")
    detector = MemorisationDetector(horizon=HORIZON)
    for epoch, value in enumerate(AP50[:10]):
        detector.observe(epoch, value)
    state = detector.state_dict()
    del state["fired_by"], state["curve"]  # a snapshot written before the option existed
    restored = MemorisationDetector(horizon=2)
    restored.load_state_dict(state)
    assert restored.fired_by == "deceleration" and restored.curve == "raw"
