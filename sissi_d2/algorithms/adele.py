"""When to start correcting labels: ADELE-style memorisation detection on the AP50 curve.

SISSI (Elbatel et al., 2022) starts label correction when the detector stops *learning* the
weak labels and starts *memorising* them. Following ADELE (Liu et al., CVPR 2022), the curve of
training AP50 against the initial weak labels (one value per epoch) is fitted with

    f(x) = a * (1 - exp(-x**b / c)),   a, b in [0, 1], c >= 0,

and correction starts once the fitted slope has fallen by ``threshold`` (90%) relative to its
value at x = 1. The numbers below are those of docs/method.md ("When to start correcting"),
which reproduce the authors' code:

* x = linspace(0, N, N) for N values (spacing N/(N-1), as in ADELE with
  ``eval_interval = iters_per_epoch = 1``);
* ``curve_fit(method="trf", p0=(1, 1, 1), sigma=geomspace(1, 0.1, N), absolute_sigma=True,
  bounds=([0, 0, 0], [1, 1, inf]))`` -- the decreasing sigma trusts late epochs more;
* f'(x) = a*b/c * exp(-x**b/c) * x**(b-1), evaluated at x + 1e-6 (x**(b-1) is infinite at 0);
* for t = 1..horizon-1: r(t) = | |f'(t)| - |f'(1)| | / |f'(1)|, r > 1 set to 0;
  update_epoch = count(r <= threshold) + 1;
* fire when the current epoch >= update_epoch, re-estimated every epoch until it fires, then
  latched.

Why it fired: the estimated update epoch is at most ``horizon``; it equals ``horizon`` when the
fitted slope never fell by ``threshold`` within the horizon, so firing there is *forced by the
horizon*, not a detected deceleration. The detector records ``fired_by`` = "deceleration"
(update epoch < horizon) or "horizon" so that reports never call forcing a detection.

Beyond the paper (option, off by default): ``curve="running_max"`` fits the running maximum of
the AP50 values instead of the raw values. A from-scratch CPU detector's per-epoch AP50 is
noisy; a single dip (e.g. 9.5 % -> 4.9 %) bends the raw fit flat and fires on noise. The running
maximum ignores dips and only decelerates when the curve really stops rising.

``estimate_update_epoch`` fits whatever it is given (scipy's bounded "trf" solver accepts even
one or two points, and the method.md regression fixture lists update epochs for such prefixes);
the guard against trusting a fit on too few points (``min_points``) lives in the
``MemorisationDetector``, which never fires before it has ``min_points`` values.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = [
    "learning_curve",
    "learning_curve_slope",
    "fit_learning_curve",
    "estimate_update_epoch",
    "MemorisationDetector",
]

# Offset that keeps x**(b-1) finite at x = 0 (ADELE's choice, part of the regression fixture).
_SLOPE_EPS = 1e-6


def learning_curve(x, a, b, c):
    """ADELE's saturating learning curve f(x) = a * (1 - exp(-x**b / c))."""
    return a * (1.0 - np.exp(-(x**b) / c))


def learning_curve_slope(x, a, b, c):
    """Derivative of :func:`learning_curve`, evaluated at ``x + 1e-6`` as ADELE does."""
    x = np.asarray(x, dtype=np.float64) + _SLOPE_EPS
    return a * b / c * np.exp(-(x**b) / c) * x ** (b - 1.0)


def fit_learning_curve(values: Sequence[float]) -> Optional[tuple[float, float, float]]:
    """Fit (a, b, c) of :func:`learning_curve` to per-epoch values; None if it cannot be done.

    None is returned for an empty input, non-finite values, a solver failure, or non-finite
    parameters: the caller treats all of these as "not yet".
    """
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    n = y.size
    if n == 0 or not np.all(np.isfinite(y)):
        return None
    x = np.linspace(0, n, n)
    try:
        with warnings.catch_warnings():
            # A covariance that cannot be estimated (few points) is irrelevant here: only the
            # parameters are used.
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = curve_fit(
                learning_curve,
                x,
                y,
                method="trf",
                p0=(1.0, 1.0, 1.0),
                sigma=np.geomspace(1, 0.1, n),
                absolute_sigma=True,
                bounds=([0.0, 0.0, 0.0], [1.0, 1.0, np.inf]),
            )
    except (RuntimeError, ValueError, FloatingPointError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    a, b, c = (float(p) for p in params)
    return a, b, c


def _update_epoch_from_params(params, horizon: int, threshold: float) -> Optional[int]:
    with np.errstate(all="ignore"):
        slope_at_one = abs(float(learning_curve_slope(1.0, *params)))
        if not math.isfinite(slope_at_one) or slope_at_one == 0.0:
            # A flat fit (e.g. a = 0: nothing learnt yet) has no deceleration to measure;
            # ADELE's formula would divide by zero and fire at once.
            return None
        t = np.arange(1, horizon, dtype=np.float64)
        ratio = np.abs(np.abs(learning_curve_slope(t, *params)) - slope_at_one) / slope_at_one
    ratio[ratio > 1] = 0.0
    return int(np.count_nonzero(ratio <= threshold)) + 1


def estimate_update_epoch(
    values: Sequence[float], horizon: int, threshold: float = 0.9, min_points: int = 4
) -> Optional[int]:
    """Epoch from which labels should be corrected, estimated from the values seen so far.

    Args:
        values: one AP50 value per epoch, epoch 0 first.
        horizon: ADELE's ``n_epoch``; the slope is examined at t = 1..horizon-1.
        threshold: relative slope drop that marks memorisation (0.9 = slope fell by 90%).
        min_points: fewer values than this give None. Use 1 to reproduce ADELE exactly,
            which fits from the very first value.

    Returns:
        The update epoch (>= 1), or None when there are too few values or the fit failed.
    """
    if horizon < 2:
        raise ValueError(f"horizon must be >= 2, got {horizon}")
    if len(values) < max(1, int(min_points)):
        return None
    params = fit_learning_curve(values)
    if params is None:
        return None
    return _update_epoch_from_params(params, horizon, threshold)


@dataclass
class MemorisationDetector:
    """Per-epoch memorisation detector; fires once and then stays fired (latched).

    Call :meth:`observe` once per epoch, in increasing epoch order, with the training AP50
    against the initial weak labels. ``state_dict`` holds only JSON-native values so that it
    can be stored in a checkpoint or a JSON file and restored on resume.
    """

    horizon: int
    threshold: float = 0.9
    min_points: int = 4
    ap50: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    update_epochs: list = field(default_factory=list)
    fit_params: list = field(default_factory=list)
    fired_epoch: Optional[int] = None
    curve: str = "raw"
    fired_by: Optional[str] = None

    CURVES = ("raw", "running_max")

    def __post_init__(self):
        if int(self.horizon) < 2:
            raise ValueError(f"horizon must be >= 2, got {self.horizon}")
        if self.curve not in self.CURVES:
            raise ValueError(f"curve must be one of {self.CURVES}, got {self.curve!r}")

    def fitted_values(self) -> list:
        """The values the curve is fitted to: the AP50 values, or their running maximum."""
        if self.curve == "running_max" and self.ap50:
            return [float(v) for v in np.maximum.accumulate(np.asarray(self.ap50, dtype=np.float64))]
        return list(self.ap50)

    @property
    def fired(self) -> bool:
        return self.fired_epoch is not None

    def observe(self, epoch: int, ap50: float) -> bool:
        """Record the AP50 of ``epoch``; return True if correction should run from now on."""
        epoch = int(epoch)
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(
                f"epochs must increase: got {epoch} after {self.epochs[-1]} "
                "(restore the detector with load_state_dict instead of re-observing)"
            )
        self.epochs.append(epoch)
        self.ap50.append(float(ap50))
        if self.fired:
            # Latched: the estimate is no longer needed; keep the lists aligned.
            self.update_epochs.append(None)
            self.fit_params.append(None)
            return True
        params = fit_learning_curve(self.fitted_values()) if len(self.ap50) >= self.min_points else None
        update_epoch = (
            None if params is None
            else _update_epoch_from_params(params, int(self.horizon), float(self.threshold))
        )
        self.fit_params.append(None if params is None else [float(p) for p in params])
        self.update_epochs.append(update_epoch)
        if update_epoch is not None and epoch >= update_epoch:
            self.fired_epoch = epoch
            self.fired_by = "deceleration" if update_epoch < int(self.horizon) else "horizon"
        return self.fired

    def state_dict(self) -> dict:
        """JSON-native snapshot (python ints/floats/None/lists only)."""
        return {
            "horizon": int(self.horizon),
            "threshold": float(self.threshold),
            "min_points": int(self.min_points),
            "ap50": [float(v) for v in self.ap50],
            "epochs": [int(e) for e in self.epochs],
            "update_epochs": [None if u is None else int(u) for u in self.update_epochs],
            "fit_params": [None if p is None else [float(v) for v in p] for p in self.fit_params],
            "fired_epoch": None if self.fired_epoch is None else int(self.fired_epoch),
            "fired_by": self.fired_by,
            "curve": self.curve,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot made by :meth:`state_dict` (configuration included)."""
        self.horizon = int(state["horizon"])
        self.threshold = float(state["threshold"])
        self.min_points = int(state["min_points"])
        self.ap50 = [float(v) for v in state["ap50"]]
        self.epochs = [int(e) for e in state["epochs"]]
        self.update_epochs = [None if u is None else int(u) for u in state["update_epochs"]]
        self.fit_params = [
            None if p is None else [float(v) for v in p] for p in state["fit_params"]
        ]
        fired = state["fired_epoch"]
        self.fired_epoch = None if fired is None else int(fired)
        self.curve = state.get("curve", "raw")  # snapshots from before the option existed
        self.fired_by = state.get("fired_by")
        if self.fired_epoch is not None and self.fired_by is None:
            update = self.update_epochs[self.epochs.index(self.fired_epoch)]
            self.fired_by = "deceleration" if update is not None and update < self.horizon else "horizon"
