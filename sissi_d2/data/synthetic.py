"""Synthetic microscopy images with instance labels, for demos, tests and CPU benchmarks.

Two domains that play the roles of the paper's data:

* ``source``: fluorescent-like nuclei (the labelled Cellpose / DSB2018 role): bright smooth
  ellipses of varied size and brightness on a dark background, some touching, some dim,
  blurred by the optics, with shot and read noise.
* ``target``: phase-contrast-like fibroblasts (the weakly labelled CellLab / Usiigaci role):
  elongated spindle-shaped gray bodies with a dark granular interior and a nucleus, bright
  halos around them, rounded bright (mitotic) cells, unlabelled debris specks and blobs with
  their own halos, uneven illumination (gradient + vignetting), background texture and shot
  noise; varied density with touching cells (which share one halo, as in real images).

Every object is drawn into the instance label image as one connected region (a new object is
painted under the ones already there and rejected if it would be cut in two or mostly hidden),
so the boxes from :func:`sissi_d2.data.datasets.boxes_from_label_image` are the drawn cells.
Everything is deterministic given the random generator; each written image has its own seed
derived from ``(seed, domain, split, index)``.

CLI: ``python -m sissi_d2.data.synthetic --root DIR [--n-target-train N ...]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

import cv2
import numpy as np

from ..utils.atomic import atomic_write_bytes, atomic_write_json

__all__ = ["generate_image", "write_synthetic_dataset", "DOMAINS", "SPLITS", "GENERATOR_VERSION", "main"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
DOMAINS = ("source", "target")
MANIFEST = "manifest.json"
# (domain, split, images folder, masks folder or None, oracle masks folder or None)
SPLITS = {
    "source_train": ("source", "source/train", "source/train", None),
    "source_val": ("source", "source/val", "source/val", None),
    "target_train": ("target", "target/train", None, "target/train_oracle_masks"),
    "target_test": ("target", "target/test", "target/test", None),
}
_SPLIT_CODE = {"source_train": 1, "source_val": 2, "target_train": 3, "target_test": 4}
_DOMAIN_CODE = {"source": 1, "target": 2}
_REF_AREA = 256.0 * 256.0


# ---------------------------------------------------------------------------------------------
# drawing helpers
# ---------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, low: float, high: float) -> float:
    """A uniform draw as a Python float (a NumPy float64 scalar would upcast float32 images)."""
    return float(rng.uniform(low, high))


def _smooth_noise(rng: np.random.Generator, shape, cell: int) -> np.ndarray:
    """Zero-mean, unit-ish amplitude smooth noise with features about ``cell`` pixels wide."""
    h, w = shape
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _place(labels: np.ndarray, shape, new_id: int, max_overlap: float, min_visible: float):
    """Paint one object under the existing ones; returns True if it was placed.

    ``shape`` is ``("polys", [Nx2 float arrays])`` (their union) or
    ``("ellipse", (cx, cy), (a, b), angle_degrees)``. The object is rejected when more than
    ``max_overlap`` of it is hidden under earlier objects, less than ``min_visible`` of it is
    visible, or its visible part would fall apart (so every label is one connected region).
    """
    h, w = labels.shape
    if shape[0] == "polys":
        allpts = np.concatenate(shape[1], 0)
        x0, y0 = np.floor(allpts.min(0)).astype(int) - 1
        x1, y1 = np.ceil(allpts.max(0)).astype(int) + 2
    else:
        _, (cx, cy), (a, b), _ang = shape
        r = max(a, b) + 2
        x0, y0, x1, y1 = int(cx - r), int(cy - r), int(math.ceil(cx + r)) + 1, int(math.ceil(cy + r)) + 1
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False
    shape_mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    if shape[0] == "polys":
        for pts in shape[1]:  # one call per polygon: overlapping polygons must not cancel out
            p = np.round((pts - (x0, y0)) * 4).astype(np.int32)  # 2 bits of sub-pixel precision
            cv2.fillPoly(shape_mask, [p], 1, lineType=cv2.LINE_8, shift=2)
    else:
        _, (cx, cy), (a, b), ang = shape
        cv2.ellipse(shape_mask, (int(round((cx - x0) * 4)), int(round((cy - y0) * 4))),
                    (int(round(a * 4)), int(round(b * 4))), ang, 0, 360, 1, -1, cv2.LINE_8, 2)
    area = int(shape_mask.sum())
    if area < 12:
        return False
    crop = labels[y0:y1, x0:x1]
    free = shape_mask.astype(bool) & (crop == 0)
    visible = int(free.sum())
    if visible < min_visible * area or (area - visible) > max_overlap * area:
        return False
    n, _ = cv2.connectedComponents(free.astype(np.uint8), connectivity=8)
    if n != 2:  # hidden in part, or cut by the image border, into several pieces
        return False
    crop[free] = new_id
    return True


def _center_near(rng, centers, radii, r_new, w, h, touch_prob):
    """A random center, or (with ``touch_prob``) one next to an existing object so they touch."""
    if centers and rng.random() < touch_prob:
        k = int(rng.integers(len(centers)))
        ang = _u(rng, 0, 2 * math.pi)
        dist = (radii[k] + r_new) * _u(rng, 0.65, 0.95)
        return centers[k][0] + dist * math.cos(ang), centers[k][1] + dist * math.sin(ang)
    return _u(rng, 0, w), _u(rng, 0, h)


def _occupied(labels: np.ndarray, x: float, y: float) -> bool:
    """Whether (x, y) lies on an object already drawn (a cheap early rejection)."""
    ix, iy = int(x), int(y)
    return 0 <= iy < labels.shape[0] and 0 <= ix < labels.shape[1] and labels[iy, ix] != 0


def _add_shot_noise(rng, img: np.ndarray, gain: float, read_sd: float) -> np.ndarray:
    """Poisson-like noise (Gaussian approximation, variance = signal / gain) plus read noise."""
    sd = np.sqrt(np.maximum(img, 0.0) / gain + read_sd * read_sd)
    return img + sd * rng.standard_normal(img.shape, dtype=np.float32)


def _illumination(rng, h, w, strength: float) -> np.ndarray:
    """Smooth multiplicative illumination: linear gradient + off-centre vignetting."""
    yy = (np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1)) - 0.5
    xx = (np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1)) - 0.5
    gx, gy = (float(v) * strength for v in rng.uniform(-1, 1, 2))
    cx, cy = (float(v) for v in rng.uniform(-0.3, 0.3, 2))
    vig = _u(rng, 0.2, 1.0) * strength * 1.6
    return (1.0 + gx * xx + gy * yy - vig * ((xx - cx) ** 2 + (yy - cy) ** 2)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# source domain: fluorescent nuclei
# ---------------------------------------------------------------------------------------------
def _source_image(rng: np.random.Generator, h: int, w: int):
    labels = np.zeros((h, w), np.int32)
    scale = h * w / _REF_AREA
    n_target = int(rng.integers(max(2, int(6 * scale)), max(3, int(40 * scale)) + 1))
    size_mu = _u(rng, 5.0, 10.0)  # typical nucleus radius of this image
    bright = [0.0]
    centers, radii = [], []
    attempts = 0
    while len(centers) < n_target and attempts < n_target * 6:
        attempts += 1
        a = float(np.clip(rng.normal(size_mu, size_mu * 0.25), 3.5, 18.0))
        b = a * _u(rng, 0.55, 1.0)
        cx, cy = _center_near(rng, centers, radii, a, w, h, touch_prob=0.3)
        if _occupied(labels, cx, cy):
            continue
        if not _place(labels, ("ellipse", (cx, cy), (a, b), _u(rng, 0, 180)), len(centers) + 1,
                      max_overlap=0.2, min_visible=0.8):
            continue
        centers.append((cx, cy))
        radii.append(a)
        # brightness: log-uniform, a few dim ones near the background
        bright.append(float(np.exp(rng.uniform(np.log(45), np.log(235)))))
    lut = np.asarray(bright, np.float32)
    signal = lut[labels]
    # chromatin texture and a brighter centre: smooth noise inside the nuclei
    texture = 1.0 + 0.18 * _smooth_noise(rng, (h, w), 6)
    signal *= texture
    sigma = _u(rng, 0.8, 1.6)
    signal = cv2.GaussianBlur(signal, (0, 0), sigma)
    background = _u(rng, 4, 28) * _illumination(rng, h, w, 0.3) + 2.0 * _smooth_noise(rng, (h, w), 32)
    img = background + signal
    img = _add_shot_noise(rng, img, gain=_u(rng, 0.8, 3.0), read_sd=_u(rng, 1.0, 4.0))
    return np.clip(img, 0, 255).astype(np.uint8), labels


# ---------------------------------------------------------------------------------------------
# target domain: phase-contrast fibroblasts
# ---------------------------------------------------------------------------------------------
_T20 = np.linspace(0.0, 1.0, 20)
_T5 = np.linspace(0.0, 1.0, 5)


def _spindle_polygon(rng, cx, cy, length, width, angle, half_only=False):
    """Spindle (tapered at both ends, slightly bent, asymmetric, smoothly wavy outline) as an Nx2
    polygon centred at (cx, cy) along ``angle``; ``half_only`` starts it at (cx, cy) instead (a
    process growing out of the body)."""
    t = _T20
    bend = _u(rng, -0.2, 0.2) * length
    skew = _u(rng, 0.1, 0.25) if half_only else _u(rng, 0.35, 0.65)  # where it is widest
    u = np.where(t < skew, t / skew * 0.5, 0.5 + (t - skew) / (1 - skew) * 0.5)
    prof = np.sin(np.pi * u) ** _u(rng, 0.7, 1.4)
    wave = np.interp(t, _T5, rng.uniform(0.8, 1.2, 5))  # smooth, not jagged
    half = 0.5 * width * np.maximum(prof, 0.06) * wave
    xs = t * length if half_only else (t - 0.5) * length
    ys = bend * ((t - 0.5) ** 2 * 4 - 1) / 2
    pts = np.concatenate([np.stack([xs, ys - half], 1), np.stack([xs, ys + half], 1)[::-1]], 0)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def _fibroblast(rng, cx, cy):
    """Polygons of one spread fibroblast: a spindle body plus 0-2 thinner processes."""
    length = _u(rng, 30, 90)
    width = _u(rng, 8, 18) * (0.75 + 0.25 * min(1.0, 40.0 / length))
    angle = _u(rng, 0, math.pi)
    polys = [_spindle_polygon(rng, cx, cy, length, width, angle)]
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        a2 = angle + rng.choice([-1, 1]) * _u(rng, 0.6, 2.2)
        polys.append(_spindle_polygon(rng, cx, cy, length * _u(rng, 0.35, 0.7),
                                      width * _u(rng, 0.5, 0.9), a2, half_only=True))
    return polys, length, width, angle


def _target_image(rng: np.random.Generator, h: int, w: int):
    labels = np.zeros((h, w), np.int32)
    scale = h * w / _REF_AREA
    density = _u(rng, 0.25, 1.0)  # sparse to crowded fields
    n_spread = int(round(density * _u(rng, 8, 26) * scale)) + 1
    n_round = int(rng.integers(0, max(1, int(5 * scale)) + 1))
    kinds = ["spread"] * n_spread + ["round"] * n_round
    rng.shuffle(kinds)

    centers, radii, round_ids, spread = [], [], [], []
    for kind in kinds:
        for _ in range(6):  # a few tries per cell
            new_id = len(centers) + 1
            if kind == "spread":
                cx, cy = _center_near(rng, centers, radii, 8.0, w, h, touch_prob=0.45)
                if _occupied(labels, cx, cy):
                    continue
                polys, length, width, angle = _fibroblast(rng, cx, cy)
                ok = _place(labels, ("polys", polys), new_id, max_overlap=0.25, min_visible=0.7)
                r = width / 2
            else:
                r = _u(rng, 4.5, 9.0)
                cx, cy = _center_near(rng, centers, radii, r, w, h, touch_prob=0.35)
                if _occupied(labels, cx, cy):
                    continue
                ok = _place(labels, ("ellipse", (cx, cy), (r, r * _u(rng, 0.85, 1.0)), _u(rng, 0, 180)),
                            new_id, max_overlap=0.15, min_visible=0.8)
            if not ok:
                continue
            centers.append((cx, cy))
            radii.append(r)
            if kind == "round":
                round_ids.append(new_id)
            else:
                spread.append((new_id, cx, cy, width, angle))
            break

    n = len(centers)
    # per-cell contrast: spread cells close to the medium (a bit darker), rounded cells bright
    contrast = np.zeros(n + 1, np.float32)
    contrast[1:] = -rng.uniform(3, 22, n)
    for i in round_ids:
        contrast[i] = _u(rng, 25, 60)
    body = contrast[labels]
    cell_mask = (labels > 0).astype(np.float32)
    round_mask = np.isin(labels, round_ids).astype(np.float32) if round_ids else np.zeros_like(cell_mask)
    spread_mask = cell_mask - round_mask

    # granular interior: smooth dark mottling, a lighter nucleus, dark granules around it
    gran = _smooth_noise(rng, (h, w), 4)
    body += spread_mask * (-7.0 * np.maximum(gran, 0))
    for lid, cx, cy, width, angle in spread:
        ccx, ccy = int(round(cx)), int(round(cy))
        a = width * _u(rng, 0.25, 0.4)
        if rng.random() < 0.85:
            cv2.ellipse(body, (ccx, ccy), (max(2, int(a * 1.6)), max(2, int(a))), math.degrees(angle),
                        0, 360, float(_u(rng, 0, 12)), -1)
        k = int(rng.integers(2, 14))
        pos = np.rint(rng.normal(0.0, width * 0.7, (k, 2)) + (cx, cy)).astype(int)
        rad = rng.integers(1, 3, k)
        val = -rng.uniform(25, 70, k)
        for (gx, gy), gr, gv in zip(pos.tolist(), rad.tolist(), val.tolist()):
            if 0 <= gx < w and 0 <= gy < h and labels[gy, gx] == lid:
                cv2.circle(body, (gx, gy), gr, gv, -1)
    for i in round_ids:  # a rounded (mitotic) cell: bright ring, dark centre
        cx, cy = centers[i - 1]
        cv2.circle(body, (int(round(cx)), int(round(cy))), max(1, int(radii[i - 1] * 0.45)),
                   float(-_u(rng, 40, 90)), -1)

    # debris: unlabelled specks and small blobs (dark or bright) and a few large faint ghosts,
    # all with halos: what classical pipelines fire on
    debris = np.zeros((h, w), np.float32)
    n_debris = int(rng.integers(int(4 * scale), int(40 * scale) + 2))
    for _ in range(n_debris):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        r = int(rng.integers(1, 3)) if rng.random() < 0.75 else int(rng.integers(3, 6))
        cv2.circle(debris, (x, y), r, float(rng.choice([-1.0, 1.0]) * _u(rng, 20, 70)), -1)
    for _ in range(int(rng.integers(0, 3))):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        cv2.ellipse(debris, (x, y), (int(_u(rng, 10, 35)), int(_u(rng, 6, 20))), _u(rng, 0, 180),
                    0, 360, float(_u(rng, -6, 6)), -1)
    debris_mask = (debris != 0).astype(np.float32)
    body = np.where(cell_mask > 0, body, debris)
    body = cv2.GaussianBlur(body, (0, 0), _u(rng, 0.5, 0.9))

    # halos: bright just outside the edges, dark rim just inside (blurred mask minus mask), plus a
    # directional relief. Touching cells share one mask, hence no halo between them.
    sig = _u(rng, 1.5, 2.8)
    union = np.clip(cell_mask + debris_mask, 0, 1)
    blurred = cv2.GaussianBlur(union, (0, 0), sig)
    halo = blurred - union
    light = _u(rng, 0, 2 * math.pi)
    relief = (math.cos(light) * cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
              + math.sin(light) * cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3))
    halo_r = np.maximum(cv2.GaussianBlur(round_mask, (0, 0), sig * 1.2) - round_mask, 0)
    halo_img = (_u(rng, 90, 150) * halo + _u(rng, 10, 35) * relief
                + _u(rng, 80, 140) * halo_r)

    bg = _u(rng, 95, 140)
    illum = _illumination(rng, h, w, _u(rng, 0.1, 0.5))
    img = (bg + 4.0 * _smooth_noise(rng, (h, w), 24) + body + halo_img) * illum
    img = cv2.GaussianBlur(img, (0, 0), _u(rng, 0.5, 0.8))  # optics
    img = _add_shot_noise(rng, img, gain=_u(rng, 2.0, 8.0), read_sd=_u(rng, 1.0, 3.0))
    return np.clip(img, 0, 255).astype(np.uint8), labels


def generate_image(domain: str, rng: np.random.Generator, size=(256, 256)):
    """One synthetic image and its instance labels: ``(uint8 HxW image, int32 HxW labels)``.

    ``domain`` is ``"source"`` (fluorescent nuclei) or ``"target"`` (phase-contrast
    fibroblasts); ``size`` is ``(height, width)`` (an int means square). Labels are 0 for
    background and 1..N, one connected region per cell; debris is not labelled.
    """
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"size {size} is too small; use at least 32x32.")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if domain == "source":
        return _source_image(rng, h, w)
    if domain == "target":
        return _target_image(rng, h, w)
    raise ValueError(f"Unknown domain {domain!r}; expected one of {DOMAINS}.")


# ---------------------------------------------------------------------------------------------
# writing a data set
# ---------------------------------------------------------------------------------------------
def _png_bytes(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    domain = SPLITS[split][0]
    return np.random.default_rng([int(seed), _DOMAIN_CODE[domain], _SPLIT_CODE[split], int(index)])


def _stem(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _expected_files(root: str, counts: dict) -> list:
    files = []
    for split, n in counts.items():
        _, img_dir, mask_dir, oracle_dir = SPLITS[split]
        for i in range(n):
            stem = _stem(split, i)
            files.append(os.path.join(root, img_dir, stem + "_img.png"))
            files.append(os.path.join(root, mask_dir or oracle_dir, stem + "_masks.png"))
    return files


def write_synthetic_dataset(
    root,
    n_source_train: int = 200,
    n_source_val: int = 40,
    n_target_train: int = 100,
    n_target_test: int = 20,
    size=(256, 256),
    seed: int = 0,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Write the synthetic layout under ``root`` and return its manifest::

        root/source/train/<stem>_img.png + <stem>_masks.png
        root/source/val/...
        root/target/train/<stem>_img.png                  (images only)
        root/target/train_oracle_masks/<stem>_masks.png   (true labels, oracle row only)
        root/target/test/<stem>_img.png + <stem>_masks.png
        root/manifest.json

    Idempotent: when ``manifest.json`` records the same parameters and every file exists, nothing
    is written. Other parameters regenerate the set (our old files, and a stale
    ``target_train_weak.json`` made from the old images, are removed first). A ``root`` that holds
    other files in these folders but no manifest is refused (FileExistsError).
    """
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = [int(size[0]), int(size[1])]
    root = os.path.abspath(os.fspath(root))
    counts = {"source_train": int(n_source_train), "source_val": int(n_source_val),
              "target_train": int(n_target_train), "target_test": int(n_target_test)}
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"image counts must be >= 0, got {counts}")
    params = {"generator_version": GENERATOR_VERSION, "counts": counts, "size": size, "seed": int(seed)}
    manifest_path = os.path.join(root, MANIFEST)
    old = None
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {"params": None, "complete": False}
    if (not force and old is not None and old.get("complete") and old.get("params") == params
            and all(os.path.isfile(p) for p in _expected_files(root, counts))):
        logger.info(f"Synthetic data set in {root} is up to date; nothing to do.")
        return old

    folders = sorted({os.path.join(root, d) for v in SPLITS.values() for d in v[1:] if d})
    if old is None:
        foreign = [d for d in folders if os.path.isdir(d) and os.listdir(d)]
        if foreign:
            raise FileExistsError(
                f"{foreign[0]} already holds files but {manifest_path} is missing: this is not a "
                "synthetic set written here. Choose an empty --root or remove those folders."
            )
    else:
        # ours, with other parameters or incomplete: remove our old images and the stale weak labels
        for d in folders:
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if name.endswith(("_img.png", "_masks.png")) and name.split("_")[0] in ("source", "target"):
                        os.remove(os.path.join(d, name))
        weak = os.path.join(root, "target_train_weak.json")
        if os.path.isfile(weak):
            logger.warning(f"Removing {weak}: its images are being regenerated; make the weak labels again.")
            os.remove(weak)
    for d in folders:
        os.makedirs(d, exist_ok=True)
    atomic_write_json(manifest_path, {"params": params, "complete": False})

    jobs = [(split, i) for split, n in counts.items() for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic -> {root}", unit="img")
    t0 = time.perf_counter()
    n_cells = {k: 0 for k in counts}
    for split, i in jobs:
        domain, img_dir, mask_dir, oracle_dir = SPLITS[split]
        image, labels = generate_image(domain, _image_rng(seed, split, i), size)
        stem = _stem(split, i)
        atomic_write_bytes(os.path.join(root, img_dir, stem + "_img.png"), _png_bytes(image))
        atomic_write_bytes(os.path.join(root, mask_dir or oracle_dir, stem + "_masks.png"),
                           _png_bytes(labels.astype(np.uint16)))
        n_cells[split] += int(labels.max())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    manifest = {"params": params, "complete": True, "cells": n_cells,
                "seconds": round(elapsed, 2)}
    atomic_write_json(manifest_path, manifest)
    logger.info(f"Wrote {len(jobs)} synthetic images to {root} in {elapsed:.1f} s.")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sissi_d2.data.synthetic",
        description="Write a synthetic source (fluorescent nuclei) / target (phase-contrast "
                    "fibroblasts) data set in the Cellpose layout.",
    )
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--n-source-train", type=int, default=200)
    parser.add_argument("--n-source-val", type=int, default=40)
    parser.add_argument("--n-target-train", type=int, default=100)
    parser.add_argument("--n-target-test", type=int, default=20)
    parser.add_argument("--size", type=int, nargs="+", default=[256], metavar="PX",
                        help="image size: one value (square) or HEIGHT WIDTH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error("--size takes one value or two (HEIGHT WIDTH)")
    size = (args.size[0], args.size[-1])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = write_synthetic_dataset(
        args.root, args.n_source_train, args.n_source_val, args.n_target_train, args.n_target_test,
        size=size, seed=args.seed, progress=True, force=args.force,
    )
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
