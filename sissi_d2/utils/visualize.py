"""Figures of the demo and the reports: boxes over images, image grids, the memorisation curve.

Pure functions on NumPy images (``uint8``, HxW gray or HxWx3 BGR as OpenCV reads them); only
:func:`plot_memorisation_curve` needs matplotlib, which it runs on the non-interactive Agg
backend so that it works without a display.

* :func:`draw_boxes`: XYXY boxes (optionally with scores) drawn over an image.
* :func:`side_by_side`: a row (or grid) of images with a title above each, ready to save.
* :func:`plot_memorisation_curve`: AP50 against the weak labels per epoch, the fitted ADELE
  learning curve and the firing epoch, from ``OUTPUT_DIR/sissi/memorisation.json`` (the paper's
  Fig. 7).
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import cv2
import numpy as np

__all__ = ["COLORS", "to_bgr", "draw_boxes", "side_by_side", "plot_memorisation_curve", "plot_label_quality",
           "save_png"]

#: BGR colours by name (OpenCV order).
COLORS = {
    "green": (60, 200, 60),
    "red": (50, 50, 230),
    "blue": (230, 120, 30),
    "yellow": (0, 215, 255),
    "magenta": (200, 60, 200),
    "cyan": (220, 200, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "orange": (0, 140, 255),
}


def _color(color) -> tuple:
    if isinstance(color, str):
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; use a BGR tuple or one of {sorted(COLORS)}")
        return COLORS[color]
    c = tuple(int(v) for v in color)
    if len(c) != 3:
        raise ValueError(f"colour must be a name or a (B, G, R) tuple, got {color!r}")
    return c


def to_bgr(image: np.ndarray) -> np.ndarray:
    """A contiguous HxWx3 uint8 copy of a gray, HxWx1, BGR or BGRA image (any numeric dtype)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        from ..data.image_io import to_uint8

        image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image).copy()
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")


def draw_boxes(image: np.ndarray, boxes, color="green", thickness: int = 1, scores=None,
               min_score: float | None = None, show_scores: bool = False) -> np.ndarray:
    """Draw Nx4 XYXY ``boxes`` (absolute pixels) over a copy of ``image``; returns BGR uint8.

    ``color`` is a name of :data:`COLORS` or a BGR tuple. With ``scores`` and ``min_score`` the
    boxes below ``min_score`` are skipped; ``show_scores`` writes each score above its box.
    Non-finite and empty boxes are skipped; the input image is never changed.
    """
    out = to_bgr(image)
    col = _color(color)
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if boxes is not None else np.zeros((0, 4))
    sc = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc is not None and len(sc) != len(arr):
        raise ValueError(f"{len(arr)} boxes but {len(sc)} scores")
    h, w = out.shape[:2]
    for i, (x0, y0, x1, y1) in enumerate(arr):
        if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            continue
        if sc is not None and min_score is not None and sc[i] < min_score:
            continue
        p0 = (int(np.clip(round(x0), 0, w - 1)), int(np.clip(round(y0), 0, h - 1)))
        p1 = (int(np.clip(round(x1) - 1, 0, w - 1)), int(np.clip(round(y1) - 1, 0, h - 1)))
        cv2.rectangle(out, p0, p1, col, int(thickness), cv2.LINE_AA if thickness > 1 else cv2.LINE_8)
        if show_scores and sc is not None:
            cv2.putText(out, f"{sc[i]:.2f}", (p0[0], max(8, p0[1] - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, col, 1,
                        cv2.LINE_AA)
    return out


def _title_bar(text: str, width: int, height: int, scale: float) -> np.ndarray:
    bar = np.full((height, width, 3), 255, np.uint8)
    if text:
        # shrink the text until it fits the image width
        s = scale
        while s > 0.25:
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, s, 1)
            if tw <= width - 4:
                break
            s -= 0.05
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, s, 1)
        org = (max(2, (width - tw) // 2), (height + th) // 2)
        cv2.putText(bar, text, org, cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int | None = None,
                 pad: int = 4, title_height: int = 18, height: int | None = None,
                 font_scale: float = 0.45) -> np.ndarray:
    """The images in one row (or a grid of ``ncols`` columns), each with its title above.

    Images are converted to BGR and resized to a common height (``height``, default the largest
    input height) keeping their aspect ratio; cells are separated by ``pad`` white pixels.
    Returns one BGR uint8 image.
    """
    imgs = [to_bgr(im) for im in images]
    if not imgs:
        raise ValueError("side_by_side needs at least one image")
    titles = list(titles) if titles is not None else [""] * len(imgs)
    if len(titles) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(titles)} titles")
    target_h = int(height or max(im.shape[0] for im in imgs))
    resized = []
    for im in imgs:
        if im.shape[0] != target_h:
            new_w = max(1, int(round(im.shape[1] * target_h / im.shape[0])))
            im = cv2.resize(im, (new_w, target_h), interpolation=cv2.INTER_AREA if im.shape[0] > target_h
                            else cv2.INTER_NEAREST)
        resized.append(im)
    cell_w = max(im.shape[1] for im in resized)
    th = int(title_height) if any(titles) else 0
    cells = []
    for im, title in zip(resized, titles):
        cell = np.full((target_h + th, cell_w, 3), 255, np.uint8)
        if th:
            cell[:th] = _title_bar(title, cell_w, th, font_scale)
        x0 = (cell_w - im.shape[1]) // 2
        cell[th:, x0:x0 + im.shape[1]] = im
        cells.append(cell)
    n = len(cells)
    ncols = n if not ncols else max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    ch, cw = cells[0].shape[:2]
    canvas = np.full((nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        canvas[y:y + ch, x:x + cw] = cell
    return canvas


def save_png(path: str, image: np.ndarray) -> str:
    """Write a BGR (or gray) uint8 image as PNG, creating the folder; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")
    return path


def _last_fit(report: dict):
    """(epoch, params, number of points) of the last successful fit in a memorisation report."""
    params = report.get("fit_params") or []
    epochs = report.get("epochs") or list(range(len(report.get("ap50", []))))
    for i in range(len(params) - 1, -1, -1):
        if params[i] is not None:
            return epochs[i], params[i], i + 1
    return None, None, 0


def _new_axes():
    """A headless matplotlib figure of the size every curve here uses."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.0, 3.8), dpi=110)


def _finish_plot(fig, ax, out_png: str, xlabel: str, ylabel: str, title: str, legend_loc: str, legend_size: int) -> str:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=legend_size, loc=legend_loc)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def plot_memorisation_curve(memorisation_json, out_png: str, title: str | None = None) -> str:
    """Plot AP50 vs the weak labels per epoch with the fitted ADELE curve (paper Fig. 7).

    ``memorisation_json`` is the path of ``sissi/memorisation.json`` (written by
    ``MemorisationHook``) or its loaded dict. The curve drawn is the last successful fit (the one
    that fired, if it did): ADELE fits ``f(x) = a (1 - exp(-x^b / c))`` with the N points at
    ``x = linspace(0, N, N)``, so epoch ``e`` sits at ``x = e N / (N - 1)``. The firing epoch (when
    memorisation was detected; label correction starts one epoch later) is a vertical line.
    Returns ``out_png``.
    """
    from ..algorithms.adele import learning_curve

    if isinstance(memorisation_json, (str, os.PathLike)):
        with open(memorisation_json, encoding="utf-8") as f:
            report = json.load(f)
    else:
        report = dict(memorisation_json)
    ap50 = [float(v) for v in report.get("ap50", [])]
    epochs = [int(e) for e in report.get("epochs", range(len(ap50)))]
    fired = report.get("fired_epoch")

    fig, ax = _new_axes()
    ax.plot(epochs, [100 * v for v in ap50], "o", color="tab:blue", label="AP50 vs initial weak labels")
    fit_epoch, params, n = _last_fit(report)
    if params is not None and n >= 2:
        e_max = max(epochs[-1], fit_epoch, fired if fired is not None else 0) + 1
        e = np.linspace(0.0, e_max, 200)
        x = e * n / (n - 1)
        with np.errstate(all="ignore"):
            y = learning_curve(x, *params)
        a, b, c = params
        ax.plot(e, 100 * y, "-", color="tab:orange",
                label=f"ADELE fit at epoch {fit_epoch}: a={a:.2f} b={b:.2f} c={c:.2f}")
    if fired is not None:
        ax.axvline(fired, color="tab:red", ls="--", label=f"memorisation detected (epoch {fired})")
    return _finish_plot(fig, ax, out_png, "epoch", "AP50 (%)", title or "Early learning -> memorisation (ADELE rule)",
                        "lower right", 8)


def plot_label_quality(series: dict, out_png: str, reference: float | None = None,
                       reference_label: str = "weak labels", metric: str = "AP50", title: str | None = None) -> str:
    """Quality of the training labels per correction epoch, one line per run.

    ``series``: run name -> [(epoch, value in percent)], e.g. the AP50 of each pseudo-label
    snapshot against the true boxes (``evaluation.label_quality.pseudo_label_quality``);
    ``reference``: the value of the labels they replaced (a horizontal line). Returns ``out_png``.
    """
    fig, ax = _new_axes()
    for name, points in series.items():
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, "o-", ms=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="black", ls="--", lw=1, label=f"{reference_label} ({reference:.1f})")
    return _finish_plot(fig, ax, out_png, "epoch (labels trained on during that epoch)", f"{metric} vs true boxes (%)",
                        title or "Training labels against the truth", "best", 7)


def plot_metric_bars(groups: dict, metrics, out_png: str, title: str, ylabel: str = "test set (%)") -> str:
    """Grouped bars: one group per name of ``groups`` (name -> {metric: value}), one bar per metric,
    its value written above it; a missing value leaves a gap. Returns ``out_png``."""
    fig, ax = _new_axes()
    fig.set_size_inches(7.5, 3.8)
    width = 0.8 / max(len(metrics), 1)
    for j, metric in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(groups))]
        values = [groups[name].get(metric) for name in groups]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        if shown:
            bars = ax.bar([x for x, _ in shown], [v for _, v in shown], width * 0.95, label=metric, color=f"C{j}")
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), rotation=15, ha="right", fontsize=7)
    top = max((v for g in groups.values() for m, v in g.items() if m in metrics and v is not None), default=1.0)
    ax.set_ylim(top=1.45 * top)  # room above the bars for the legend
    fig.tight_layout()
    return _finish_plot(fig, ax, out_png, "", ylabel, title, "upper left", 7)
