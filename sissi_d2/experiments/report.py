"""What an experiment reports besides its table: the quality of the labels the rows trained on,
the rows' test predictions, figures and markdown tables (shared by ``tools/demo.py`` and
``tools/table1.py``). Truth (oracle masks, test boxes) is read here only, never by training."""
from __future__ import annotations

import math
import os

import numpy as np

from ..data.label_files import read_label_json
from ..evaluation.label_quality import label_set_quality, pseudo_label_quality, snapshot_paths

__all__ = ["METRICS", "four", "fmt", "markdown_table", "dataset_truth", "row_predictions", "training_label_quality",
           "spread", "pseudo_label_panels", "test_prediction_panels", "memorisation_figure"]

METRICS = ("AP50", "AP75", "AP", "AR")


def four(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in METRICS}


def fmt(value, missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown_table(body: list, headers: list) -> str:
    from tabulate import tabulate

    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def dataset_truth(name: str) -> dict:
    """image key -> true XYXY boxes of a registered data set."""
    from detectron2.data import DatasetCatalog

    from ..evaluation.evaluator import records_ground_truth

    return records_ground_truth(DatasetCatalog.get(name))


def row_predictions(output_dir: str, test_set: str) -> dict:
    """image key -> (boxes, scores) a trained row predicted on ``test_set`` (its evaluation's
    ``inference/<test_set>/predictions.json``); empty when the row has not been evaluated."""
    import json

    path = os.path.join(output_dir, "inference", test_set, "predictions.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        preds = json.load(f)
    return {p["file"]: (np.asarray(p["boxes"], np.float32).reshape(-1, 4), np.asarray(p["scores"], np.float32))
            for p in preds}


def training_label_quality(truth: dict, weak_labels, row_dirs: dict, max_dets: int = 400) -> dict:
    """The labels the rows trained on against ``truth``: the weak labels (a json path or image
    key -> (boxes, scores)), then every pseudo-label snapshot of each row in ``row_dirs``
    (name -> output folder). {"weak_labels": metrics, "pseudo_labels": {name: [{"epoch", metrics...}]}}."""
    weak = read_label_json(weak_labels) if isinstance(weak_labels, str) else weak_labels
    return {"weak_labels": label_set_quality(truth, weak, max_dets=max_dets),
            "pseudo_labels": {name: pseudo_label_quality(truth, d, max_dets=max_dets, weak_labels=weak)
                              for name, d in row_dirs.items()}}


def spread(items: list, most: int) -> list:
    """At most ``most`` of ``items``: the first, the last and evenly in between."""
    if len(items) <= most:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, most).round().astype(int)))]


def pseudo_label_panels(image, key: str, truth, weak, output_dir: str, most: int, label: str = "pseudo ep",
                        thickness: int = 1):
    """One training image (paper Fig. 8): truth (green), weak labels (yellow) and the pseudo-labels
    (red) of up to ``most`` correction epochs of the run in ``output_dir``. Returns (panels,
    titles, [(epoch, boxes)])."""
    from ..utils.visualize import draw_boxes

    snaps = [(epoch, read_label_json(path).get(key, (np.zeros((0, 4)), None))[0])
             for epoch, path in spread(snapshot_paths(output_dir), most)]
    panels = [draw_boxes(image, truth, "green", thickness=thickness), draw_boxes(image, weak, "yellow", thickness=thickness)]
    titles = [f"truth ({len(truth)})", f"weak labels ({len(weak)})"]
    for epoch, boxes in snaps:
        panels.append(draw_boxes(image, boxes, "red", thickness=thickness))
        titles.append(f"{label} {epoch} ({len(boxes)})")
    return panels, titles, snaps


def test_prediction_panels(image, truth, predictions: dict, weak=None, thickness: int = 1):
    """A test image with its truth (green), optionally the weak labels (yellow), and for each row
    (name -> (boxes, scores)) its top-k boxes (red), k the number of true cells, so that rows
    with different score calibration compare."""
    from ..utils.visualize import draw_boxes

    base = draw_boxes(image, truth, "green", thickness=thickness)
    if weak is None:
        panels, titles = [base], [f"truth ({len(truth)} cells)"]
    else:
        panels, titles = [draw_boxes(base, weak, "yellow", thickness=thickness)], [f"weak labels ({len(weak)}), truth ({len(truth)})"]
    for name, (boxes, scores) in predictions.items():
        top = np.argsort(-np.asarray(scores))[: len(truth)]
        panels.append(draw_boxes(base, np.asarray(boxes).reshape(-1, 4)[top], "red", thickness=thickness))
        titles.append(f"{name}, top {len(top)}")
    return panels, titles


def memorisation_figure(trunk_dir: str, out_png: str, title: str):
    """The trunk's AP50-vs-weak-labels curve with the ADELE fit (paper Fig. 7); None when the
    trunk did not record it."""
    from ..utils.visualize import plot_memorisation_curve

    path = os.path.join(trunk_dir, "sissi", "memorisation.json")
    return plot_memorisation_curve(path, out_png, title=title) if os.path.isfile(path) else None
