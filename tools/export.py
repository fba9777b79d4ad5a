#!/usr/bin/env python
"""Export a trained model to TorchScript, to run without sissi_d2 or Detectron2.

  python tools/export.py --config-file configs/cpu/sissi_s.yaml --weights output/cpu/model_final.pth \\
      --output model.ts [--sample-image cells.png] [KEY VALUE ...]

The model is traced with Detectron2's TracingAdapter on a sample image (--sample-image, default a
synthetic one of the test size), wrapped with the test-time resize of the config, and saved with
torch.jit.save. The saved module takes one image as a tensor, H x W x 3 in BGR order (as
cv2.imread gives) or H x W gray, values 0-255, of any size, and returns (boxes, scores, classes):
boxes N x 4 (x0, y0, x1, y1) in that image's pixels. Running it needs torch and torchvision
(whose import registers the NMS / RoIAlign operators the model uses), nothing else:

    import sys
    import cv2
    import torch
    import torchvision  # noqa: F401  (registers torchvision::nms and roi_align)

    model = torch.jit.load(sys.argv[1])
    image = torch.from_numpy(cv2.imread(sys.argv[2]))  # H x W x 3, BGR, 8 bit
    with torch.no_grad():
        boxes, scores, classes = model(image)
    print(f"{int((scores >= 0.5).sum())} cells")

The resize is bilinear with antialiasing (Detectron2 resizes with PIL): boxes agree with
tools/predict.py within a fraction of a pixel, exactly where no resize is needed. 16-bit images:
read them with sissi_d2.data.image_io.read_bgr8 (percentile scaling to 8 bit, as in training).
After saving, the tool checks that the saved model gives the boxes of the eager one.
KEY VALUE pairs override the config (as for tools/predict.py).
"""
import argparse
import logging
import os
import sys
import warnings
from typing import List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Torch / Detectron2 0.6 deprecation and tracer chatter is not for the user of this tool.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import sissi_d2  # noqa: E402,F401  (applies the Detectron2 compatibility patches first)

logger = logging.getLogger("sissi_d2.export")


def build_config(config_file: str, opts) -> "CfgNode":  # noqa: F821
    from detectron2.config import get_cfg

    from sissi_d2.config import add_sissi_config

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = get_cfg()
    add_sissi_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    # Tracing records the operators of one device; CPU models run everywhere.
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Output size of Detectron2's ResizeShortestEdge(min_size, max_size) (its v0.6 rounding)."""
    scale = min_size * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = float(min_size), scale * width
    else:
        new_h, new_w = scale * height, float(min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_for_detector(image: Tensor, new_h: int, new_w: int) -> Tensor:
    """H x W x 3 image -> the C x H x W float input of the detector, resized to (new_h, new_w)."""
    x = image.permute(2, 0, 1).float()
    if new_h != x.shape[1] or new_w != x.shape[2]:
        x = F.interpolate(x[None], size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True)[0]
        x = x.round().clamp(0, 255)  # the model was trained on 8-bit resized images
    return x


class ExportedDetector(nn.Module):
    """What tools/export.py saves: an image in, boxes in that image's pixels out.

    Wraps the traced detector (input: the resized C x H x W float image; outputs: Detectron2's
    flattened Instances) with the config's test-time resize and the rescaling of the boxes, the
    parts of Detectron2's predictor that live outside the model.
    """

    def __init__(self, traced_detector, min_size: int, max_size: int, output_index: List[int]):
        super().__init__()
        self.detector = traced_detector
        self.min_size = min_size
        self.max_size = max_size
        self.box_index, self.score_index, self.class_index = output_index

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if image.dim() == 2:
            image = image.unsqueeze(-1).expand(-1, -1, 3)
        height, width = image.shape[0], image.shape[1]
        new_h, new_w = resized_shape(height, width, self.min_size, self.max_size)
        outputs = self.detector(resize_for_detector(image, new_h, new_w))
        boxes = outputs[self.box_index] * torch.tensor(
            [width / new_w, height / new_h, width / new_w, height / new_h], dtype=torch.float32
        )
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1,
        )
        return boxes, outputs[self.score_index], outputs[self.class_index]


def _inference(model, inputs):
    # Boxes of the resized input: the wrapper rescales them (no post-processing in the trace).
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def output_index() -> List[int]:
    """Where pred_boxes, scores and pred_classes are in the traced detector's flat outputs."""
    from detectron2.export.flatten import flatten_to_tuple
    from detectron2.structures import Boxes, Instances

    markers = {"pred_boxes": torch.zeros(1, 4), "scores": torch.zeros(1), "pred_classes": torch.zeros(1)}
    flat, _ = flatten_to_tuple([{"instances": Instances(
        (1, 1), pred_boxes=Boxes(markers["pred_boxes"]), scores=markers["scores"],
        pred_classes=markers["pred_classes"],
    )}])
    return [next(i for i, t in enumerate(flat) if t is markers[k]) for k in ("pred_boxes", "scores", "pred_classes")]


def synthetic_sample(size: int) -> np.ndarray:
    """A gray image with bright blobs: something for the detector to find while tracing."""
    import cv2

    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(60, 6, (size, size)), 0, 255).astype(np.uint8)
    for _ in range(8):
        r = int(rng.integers(max(3, size // 40), max(4, size // 12)))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        cv2.circle(image, (cx, cy), r, 200, -1)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def export(cfg, weights: str, output: str, sample: np.ndarray) -> "torch.jit.ScriptModule":
    from detectron2.export import TracingAdapter
    from detectron2.modeling import build_model

    from sissi_d2.engine.checkpoint import load_weights

    model = build_model(cfg).eval()
    load_weights(model, weights)
    min_size, max_size = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    h, w = resized_shape(sample.shape[0], sample.shape[1], min_size, max_size)
    wrapper_input = torch.from_numpy(np.ascontiguousarray(sample))
    resized = resize_for_detector(wrapper_input, h, w)
    adapter = TracingAdapter(model, [{"image": resized}], _inference)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on Detectron2's shape checks
        traced = torch.jit.trace(adapter, (resized,))
    exported = torch.jit.script(ExportedDetector(traced, min_size, max_size, output_index()))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.jit.save(exported, output)

    # The saved file, not the module in memory, must give the eager model's boxes.
    loaded = torch.jit.load(output)
    with torch.no_grad():
        boxes, scores, _ = loaded(wrapper_input)
        eager = model([{"image": resized, "height": sample.shape[0], "width": sample.shape[1]}])[0]["instances"]
    if boxes.shape != eager.pred_boxes.tensor.shape or not torch.allclose(boxes, eager.pred_boxes.tensor, atol=1e-3):
        raise RuntimeError(
            f"The exported model's boxes differ from the eager model's on the sample image "
            f"({len(boxes)} vs {len(eager)} boxes): the trace does not fit this model."
        )
    logger.info("Saved %s: %d boxes on the %dx%d sample, the same as the eager model",
                output, len(boxes), sample.shape[1], sample.shape[0])
    return loaded


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    p.add_argument("--weights", default=None, metavar="PTH",
                   help="checkpoint (e.g. OUTPUT_DIR/model_final.pth); default MODEL.WEIGHTS of the config")
    p.add_argument("--output", required=True, metavar="FILE", help="TorchScript file to write (e.g. model.ts)")
    p.add_argument("--sample-image", default=None, metavar="IMAGE",
                   help="image to trace with (default: a synthetic one of the test size)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = build_config(args.config_file, [o for o in args.opts if o != "--"])
    weights = args.weights or cfg.MODEL.WEIGHTS
    if args.sample_image:
        from sissi_d2.data.image_io import read_bgr8

        sample = read_bgr8(args.sample_image)
    else:
        sample = synthetic_sample(int(cfg.INPUT.MIN_SIZE_TEST))
    export(cfg, weights, args.output, sample)
    print(f"Wrote {args.output}: run it with torch.jit.load (see python tools/export.py --help)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
