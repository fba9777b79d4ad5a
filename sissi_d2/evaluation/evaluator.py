"""COCO box evaluation for crowded cell images, against one or several readers.

Detectron2 0.6's ``COCOEvaluator`` needs the compiled ``_C`` for its fast path, caps detections
at 100, prints no AR and caches converted ground truth in ``MetadataCatalog.json_file`` (stale
once labels change). This evaluator keeps the predictions in memory, gathers them across
processes and scores them with ``box_metrics.coco_box_metrics`` (pycocotools) against the
dataset's own annotations and any extra reader annotation sets for the same images.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..data.label_files import image_key, load_coco_boxes
from ..utils.atomic import atomic_write_json
from .box_metrics import METRIC_KEYS, coco_box_metrics

__all__ = ["CellBoxEvaluator", "reader_ground_truth", "records_ground_truth"]

logger = logging.getLogger(__name__)


def records_ground_truth(records) -> dict:
    """file basename -> Nx4 XYXY boxes of a list of dataset dicts (crowd regions left out: they
    are not labels, see ``MODEL.MISSING_LABELS.IGNORE_CROWD``)."""
    return {
        image_key(r): np.asarray([a["bbox"] for a in r.get("annotations", []) if not a.get("iscrowd", 0)],
                                 dtype=np.float64).reshape(-1, 4)
        for r in records
    }


def reader_ground_truth(json_path: str) -> dict:
    """file basename -> boxes of one reader's COCO json."""
    return records_ground_truth(load_coco_boxes(json_path))


class CellBoxEvaluator(DatasetEvaluator):
    """AP50 / AP75 / AP / AR (maxDets ``max_dets``) per reader and their mean.

    Args:
        dataset_name: registered dataset whose annotations are the first reader.
        reader_jsons: extra COCO jsons with other readers' boxes for the same images.
        max_dets: detections per image scored (cells: hundreds per image).
        output_dir: where ``predictions.json`` and ``metrics.json`` are written (rank 0).
    """

    def __init__(self, dataset_name: str, reader_jsons=(), max_dets: int = 400, output_dir=None,
                 distributed: bool = True):
        self.dataset_name = dataset_name
        self.reader_jsons = list(reader_jsons)
        self.max_dets = int(max_dets)
        self.output_dir = output_dir
        self.distributed = distributed
        self._predictions: list = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            order = inst.scores.argsort(descending=True)[: self.max_dets]
            self._predictions.append(
                {
                    "file": os.path.basename(inp["file_name"]),
                    "boxes": inst.pred_boxes.tensor[order].numpy().tolist(),
                    "scores": inst.scores[order].numpy().tolist(),
                }
            )

    def evaluate(self):
        predictions = self._predictions
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        pred = {p["file"]: (np.asarray(p["boxes"]).reshape(-1, 4), np.asarray(p["scores"])) for p in predictions}
        readers = [("dataset", records_ground_truth(DatasetCatalog.get(self.dataset_name)))]
        for path in self.reader_jsons:
            readers.append((os.path.splitext(os.path.basename(path))[0], reader_ground_truth(path)))

        rows, results = [], OrderedDict()
        for name, gt in readers:
            missing = set(gt) - set(pred)
            if missing:
                logger.warning("%d test images have no prediction (e.g. %s)", len(missing), sorted(missing)[:3])
            metrics = coco_box_metrics(gt, pred, max_dets=self.max_dets)
            results[f"bbox/{name}"] = {k: metrics[k] for k in METRIC_KEYS}
            rows.append([name, metrics["num_gt"]] + [metrics[k] for k in METRIC_KEYS])
        mean = {k: float(np.nanmean([results[f"bbox/{n}"][k] for n, _ in readers])) for k in METRIC_KEYS}
        results["bbox"] = mean
        if len(readers) > 1:
            rows.append(["mean", ""] + [mean[k] for k in METRIC_KEYS])
        table = tabulate(rows, headers=["reader", "#boxes"] + list(METRIC_KEYS), floatfmt=".1f", tablefmt="pipe")
        logger.info(
            "Evaluation of %s (%d images, maxDets %d):\n%s", self.dataset_name, len(pred), self.max_dets, table
        )
        if self.output_dir:
            atomic_write_json(os.path.join(self.output_dir, "predictions.json"), predictions, indent=None)
            atomic_write_json(
                os.path.join(self.output_dir, "metrics.json"),
                {k: {m: (None if math.isnan(v) else v) for m, v in d.items()} for k, d in results.items()},
            )
        return results


def format_results(results) -> str:
    """The results of ``CellBoxEvaluator`` (one or several datasets) as a text table."""
    rows = []
    for dataset, res in (results.items() if "bbox" not in results else [("", results)]):
        for key, metrics in res.items():
            if isinstance(metrics, dict) and key.startswith("bbox"):
                reader = key.split("/", 1)[1] if "/" in key else "mean of readers"
                rows.append([dataset, reader] + [metrics.get(k, float("nan")) for k in METRIC_KEYS])
    return tabulate(rows, headers=["dataset", "reader"] + list(METRIC_KEYS), floatfmt=".1f", tablefmt="pipe")
