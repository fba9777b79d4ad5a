#!/usr/bin/env python
"""What SISSI costs beyond plain Detectron2 training: prints a table, writes bench.json.

  python tools/benchmark.py --output output/bench            # full (minutes on a 2-core CPU)
  python tools/benchmark.py --output output/bench --quick    # small sizes, for a smoke run

Measured side by side in one run, same machine, same config (configs/demo/Base-Demo.yaml unless
--config-file), same data, warm-up steps excluded, medians of repeated steps:
1. trainer overhead: s/iter of SISSITrainer with cloning on vs a plain DefaultTrainer on the same
   mixed batches without cloning (goal <= 1.05);
2. pseudo-labelling: wall time of labelling the target set with T views vs T x one plain batched
   forward pass over the same images (goal <= 1.15), de-augmentation + WBF share apart;
3. data pipeline: share of data_time in iteration time with cloning and augmentation on (goal
   <= 5%), seamless-cloning ms per image at 512 and 1024 px with 60 boxes, and the target
   mapper's time for one 1024 px image's draws of an epoch, cloned once (its cache) or at each draw;
4./5. memory and scaling: peak RSS and wall time of one correction epoch (pseudo-labels +
   training) for several target-set sizes, each in a fresh process.

  python tools/benchmark.py --rows-at-once    # why tools/table1.py trains 2 rows at once on a CPU

--rows-at-once times a training step of the CPU recipe's model (configs/cpu/weak_only.yaml, a fixed
batch of 4 random 320 px images with 60 boxes each) in fresh processes: one process with every
thread, one with 1 thread, and as many 1-thread processes at once as there are threads; it prints
s per step and the steps per second of the whole machine against the first.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import sissi_d2  # noqa: E402,F401

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "Base-Demo.yaml")


def _data(root, n_target, seed=0):
    from sissi_d2.data.builtin import register_synthetic_datasets
    from sissi_d2.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root, n_source_train=max(8, n_target), n_source_val=2, n_target_train=n_target,
                            n_target_test=2, seed=seed)
    register_synthetic_datasets(root)


def _cfg(args, out_dir, *opts):
    from sissi_d2.config_builder import build_config

    base = ["SISSI.TARGET_DATASETS", "('synth_target_train_oracle',)", "SISSI.SOURCE_VAL_DATASETS", "()",
            "DATASETS.TEST", "()", "OUTPUT_DIR", out_dir, "MODEL.DEVICE", args.device, "SEED", "0",
            "SISSI.PSEUDO.SCALES", str(tuple(args.scales)), "SISSI.PSEUDO.FLIPS", str(tuple(args.flips))]
    return build_config(args.config_file, base + list(args.opts) + list(opts))


class _StepTimes:
    """Wraps a trainer's run_step and records wall time and data_time per step."""

    def __init__(self, trainer):
        from detectron2.utils.events import get_event_storage

        self.times, self.data = [], []
        inner = trainer._trainer
        orig = inner.run_step

        def timed():
            t0 = time.perf_counter()
            orig()
            self.times.append(time.perf_counter() - t0)
            self.data.append(get_event_storage().history("data_time").latest())

        inner.run_step = timed


def bench_trainer(args, out):
    """Items 1 and 3: s/iter with cloning vs plain, and the data_time share."""
    from detectron2.engine import DefaultTrainer

    from sissi_d2.data.mappers import build_mapper
    from sissi_d2.data.two_source import TwoSourceLoader
    from sissi_d2.engine import SISSITrainer

    steps = args.steps
    sissi_cfg = _cfg(args, os.path.join(out, "trainer_sissi"), "SISSI.CLONING.MODE", "always",
                     "SISSI.START_RULE", "never", "SISSI.EPOCHS", "100")
    sissi = SISSITrainer(sissi_cfg)
    sissi.max_iter = steps
    sissi_times = _StepTimes(sissi)
    sissi.train()

    class PlainTrainer(DefaultTrainer):
        """Detectron2's trainer on the same mixed batches (same seed), no cloning."""

        @classmethod
        def build_train_loader(cls, cfg):
            def batches():
                epoch = 0
                while True:
                    yield from TwoSourceLoader.for_epoch(
                        sissi.source_records, sissi.initial_target_records, build_mapper(cfg, "source"),
                        build_mapper(cfg, "target", cloning=False),
                        source_batch_total=cfg.SISSI.IMS_PER_BATCH_SOURCE,
                        target_batch_total=cfg.SISSI.IMS_PER_BATCH_TARGET, seed=0, epoch=epoch,
                        num_workers=cfg.DATALOADER.NUM_WORKERS)
                    epoch += 1
            return batches()

    plain_cfg = sissi_cfg.clone()
    plain_cfg.defrost()
    plain_cfg.OUTPUT_DIR = os.path.join(out, "trainer_plain")
    plain_cfg.SOLVER.MAX_ITER = steps
    plain_cfg.SOLVER.IMS_PER_BATCH = sissi_cfg.SOLVER.IMS_PER_BATCH
    plain_cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    plain = PlainTrainer(plain_cfg)
    plain_times = _StepTimes(plain)
    plain.train()

    warm = min(args.warmup, steps - 1)
    s, p = statistics.median(sissi_times.times[warm:]), statistics.median(plain_times.times[warm:])
    data_share = statistics.median(np.asarray(sissi_times.data[warm:]) / np.asarray(sissi_times.times[warm:]))
    return {"sissi_s_per_iter": s, "plain_s_per_iter": p, "overhead_ratio": s / p,
            "data_time_share": float(data_share), "workers": sissi_cfg.DATALOADER.NUM_WORKERS, "steps": steps,
            "warmup": warm}, sissi


def bench_pseudo_labels(args, trainer):
    """Item 2: TTA + WBF labelling vs T x one plain batched forward pass."""
    from sissi_d2.data.image_io import read_bgr8
    from sissi_d2.engine.inference import IDENTITY_VIEW, RecordPredictor, inference_mode

    predictor = RecordPredictor(trainer.cfg)
    records = trainer.initial_target_records
    images = [read_bgr8(r["file_name"]) for r in records]
    n_views = len(predictor.views)
    with inference_mode(trainer.model) as net:
        inputs = [next(predictor._view_inputs(img, [IDENTITY_VIEW])) for img in images]
        net(inputs[: predictor.batch_size])  # warm-up
        floor = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(inputs), predictor.batch_size):
                net(inputs[i : i + predictor.batch_size])
            floor.append(time.perf_counter() - t0)
        total, fuse = [], []
        for _ in range(args.repeats):  # the trainer's path: RecordPredictor.pseudo_labels
            t0 = time.perf_counter()
            per_image = list(predictor.predict_images(net, enumerate(images)))
            t1 = time.perf_counter()
            for _, height, width, views in per_image:
                predictor.fuse(views, height, width)
            t2 = time.perf_counter()
            total.append(t2 - t0)
            fuse.append(t2 - t1)
    floor_s = statistics.median(floor) * n_views
    total_s = statistics.median(total)
    return {"views": n_views, "images": len(images), "pseudo_label_s": total_s, "floor_s": floor_s,
            "ratio": total_s / floor_s, "wbf_s": statistics.median(fuse),
            "wbf_share": statistics.median(fuse) / total_s}


def bench_cloning(args, out):
    """Seamless cloning per image, and what the target mapper spends on one image's draws of an
    epoch (SISSI.TARGET_REPEATS of them) with its cloning cache and without (CACHE_MB 0)."""
    import cv2
    from detectron2.structures import BoxMode

    from sissi_d2.algorithms.cloning import make_synthetic_like
    from sissi_d2.config import BLUR_PRESETS
    from sissi_d2.data.mappers import build_mapper

    rng = np.random.default_rng(0)
    res = {}
    for size in (512, 1024):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        xy = rng.uniform(0, size - 40, (60, 2))
        boxes = np.hstack([xy, xy + rng.uniform(15, 40, (60, 2))])
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            make_synthetic_like(image, boxes, *BLUR_PRESETS["strong"])
            times.append(time.perf_counter() - t0)
        res[f"cloning_ms_{size}"] = 1000 * statistics.median(times[1:])
    path = os.path.join(out, "cloning_1024.png")
    cv2.imwrite(path, image)
    record = {"file_name": path, "height": size, "width": size, "image_id": 0,
              "annotations": [{"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]}
    for name, cache in (("cached", []), ("uncached", ["SISSI.CLONING.CACHE_MB", "0"])):
        cfg = _cfg(args, os.path.join(out, "cloning"), *cache)
        repeats = max(1, int(cfg.SISSI.TARGET_REPEATS))
        times = []
        for _ in range(args.repeats):
            mapper = build_mapper(cfg, "target", True, cloning=True)  # one epoch's mapper
            t0 = time.perf_counter()
            for _ in range(repeats):
                mapper(dict(record))
            times.append(time.perf_counter() - t0)
        res[f"epoch_draws_s_{name}"] = statistics.median(times)
        res["draws_per_epoch"] = repeats
    return res


def one_correction_epoch(args, n_target, out):
    """Run in a fresh process: one correction epoch (pseudo-labels + training) on n_target images."""
    from sissi_d2.engine import SISSITrainer

    _data(os.path.join(out, f"data_{n_target}"), n_target)
    cfg = _cfg(args, os.path.join(out, f"epoch_{n_target}"), "SISSI.START_RULE", "epoch:0",
               "SISSI.CLONING.MODE", "on_correction", "SISSI.EPOCHS", "1")
    trainer = SISSITrainer(cfg)
    rss_before = _current_rss_mb()
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    # the peak of the whole process, and what the epoch itself added to the resident memory
    print(json.dumps({"n_target": n_target, "epoch_s": wall, "iters": trainer.iters_per_epoch,
                      "peak_rss_mb": peak_mb, "rss_growth_mb": _current_rss_mb() - rss_before}))


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


RECIPE_CONFIG = os.path.join(ROOT, "configs", "cpu", "weak_only.yaml")


def _train_input(cfg):
    """Side and image count of one training step's input: the crop if the config crops, else the
    shortest-side training size, as a square; SISSI's source + target images per step."""
    crop = cfg.INPUT.CROP
    side = int(crop.SIZE[0]) if crop.ENABLED and crop.TYPE == "absolute" else int(cfg.INPUT.MIN_SIZE_TRAIN[0])
    return side, cfg.SISSI.IMS_PER_BATCH_SOURCE + cfg.SISSI.IMS_PER_BATCH_TARGET


def _random_batch(side: int, n_images: int, n_boxes: int = 60):
    """Random images of ``side`` px with ``n_boxes`` random cell-sized boxes each (fixed seed)."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n_images):
        inst = Instances((side, side))
        xy = torch.rand(n_boxes, 2, generator=g) * (side - 40)
        wh = 20 + torch.rand(n_boxes, 2, generator=g) * 25
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=side - 1)], 1))
        inst.gt_classes = torch.zeros(n_boxes, dtype=torch.long)
        batch.append({"image": torch.rand(3, side, side, generator=g) * 255, "instances": inst,
                      "height": side, "width": side})
    return batch


def _training_step(cfg):
    """A closure running one SGD step of ``cfg``'s model on a fixed random training batch."""
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    batch = _random_batch(*_train_input(cfg))

    def step():
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, batch, step


def _timed(step, n: int) -> list:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def step_probe(threads: int, steps: int) -> dict:
    """Median wall time of a training step of the CPU recipe's model on a fixed random batch."""
    import torch
    from detectron2.utils.events import EventStorage

    from sissi_d2.config_builder import build_config

    torch.set_num_threads(threads)
    _, _, step = _training_step(build_config(RECIPE_CONFIG, ["MODEL.DEVICE", "cpu"]))
    with EventStorage(0):
        times = _timed(step, steps + 2)  # 2 warm-up steps
    return {"threads": threads, "s_per_step": statistics.median(times[2:])}


# The parts of a Detectron2 R-CNN whose multiply-adds --model-cost lists (prefixes of module names).
_PARTS = ["backbone.bottom_up.stem", "backbone.bottom_up.res2", "backbone.bottom_up.res3", "backbone.bottom_up.res4",
          "backbone.bottom_up.res5", "backbone.fpn_lateral", "backbone.fpn_output", "proposal_generator",
          "roi_heads"]


def multiply_adds_by_part(model, batch) -> dict:
    """Multiply-adds (fvcore's flop count: one per multiply-add) of a training forward pass of
    ``model`` on the first image of ``batch``, summed by part of the detector, and the total."""
    from detectron2.utils.analysis import FlopCountAnalysis
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        counter = FlopCountAnalysis(model, batch[:1])
        counter.unsupported_ops_warnings(False)
        counter.uncalled_modules_warnings(False)
        by_module = counter.by_module()
        total = counter.total()
    modules = {name: n for name, n in by_module.items() if name.count(".") >= 1}
    parts = {}
    for part in _PARTS:
        # FlopCountAnalysis names modules from the traced wrapper ("model.<name>"); FPN layers are
        # one module per level (fpn_output2 ...), so a part sums every direct child that starts with it.
        prefix = "model." + part
        parts[part] = sum(n for name, n in modules.items() if name.startswith(prefix)
                          and "." not in name[len(prefix):].lstrip("0123456789"))
    parts["total"] = total
    return parts


def model_cost(args) -> None:
    """Multiply-adds by part and training-step time of a config's model, and, when overrides are
    given, of the model without them, steps interleaved so that both see the same load."""
    import torch
    from detectron2.utils.events import EventStorage

    from sissi_d2.config_builder import build_config

    config = args.config_file
    variants = [("with the overrides", list(args.opts))] if args.opts else []
    variants.insert(0, ("config as is", []))
    built = []
    for name, opts in variants:
        cfg = build_config(config, ["MODEL.DEVICE", args.device] + opts)
        built.append((name, cfg, *_training_step(cfg)))
    side, n_images = _train_input(built[0][1])
    print(f"{os.path.relpath(config, ROOT)}: training input {n_images} x {side}x{side} px, "
          f"{torch.get_num_threads()} thread(s)" + (f"; overrides: {' '.join(args.opts)}" if args.opts else ""))
    costs = [multiply_adds_by_part(model, batch) for _, _, model, batch, _ in built]
    print("| part | " + " | ".join(f"GMAC per image, {name}" for name, *_ in built) + " |")
    print("|---|" + "---|" * len(built))
    for part in _PARTS + ["total"]:
        print(f"| {part} | " + " | ".join(f"{c[part] / 1e9:.3f} ({100 * c[part] / c['total']:.0f} %)"
                                         for c in costs) + " |")
    times = {name: [] for name, *_ in built}
    with EventStorage(0):
        for _, _, _, _, step in built:
            _timed(step, 2)  # warm-up
        for _ in range(args.steps):
            for name, _, _, _, step in built:
                times[name] += _timed(step, 1)
    ref = statistics.median(times[built[0][0]])
    print(f"Training step ({args.steps} per model, interleaved), median s: " + ", ".join(
        f"{name} {statistics.median(t):.2f} ({ref / statistics.median(t):.2f}x)" for name, t in times.items()))


def rows_at_once(args) -> None:
    import torch

    cores = torch.get_num_threads()

    def probes(threads_each: list) -> list:
        cmd = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--step-probe"]
        procs = [subprocess.Popen(cmd + [str(t)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for t in threads_each]
        out = []
        for p in procs:
            stdout, stderr = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"step probe failed:\n{stderr[-3000:]}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    print(f"Training steps of the CPU recipe's model, {args.steps} timed steps per process, {cores} threads here")
    rows = [("1 process, %d threads" % cores, probes([cores])), ("1 process, 1 thread", probes([1])),
            ("%d processes at once, 1 thread each" % cores, probes([1] * cores))]
    base = 1 / rows[0][1][0]["s_per_step"]
    print("| what | s per step (per process) | steps per s, whole machine | ratio |\n|---|---|---|---|")
    for name, runs in rows:
        rate = sum(1 / r["s_per_step"] for r in runs)
        per_process = " / ".join(f"{r['s_per_step']:.2f}" for r in runs)
        print(f"| {name} | {per_process} | {rate:.3f} | {rate / base:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/bench")
    parser.add_argument("--config-file", default=None,
                        help="default: the demo config; configs/cpu/weak_only.yaml for --model-cost")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 250])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--flips", nargs="+", default=["none", "h", "v", "hv"])
    parser.add_argument("--one-epoch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows-at-once", action="store_true",
                        help="only time training steps: 1 process with every thread vs processes at 1 thread each")
    parser.add_argument("--model-cost", action="store_true",
                        help="multiply-adds by part and training-step time of the config's model, against the "
                             "model without the overrides if any are given")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    args.config_file = args.config_file or (RECIPE_CONFIG if args.model_cost else DEMO_CONFIG)
    if args.step_probe is not None:
        print(json.dumps(step_probe(args.step_probe, args.steps)))
        return None
    if args.rows_at_once:
        args.steps = 10 if args.steps == 30 else args.steps
        return rows_at_once(args)
    if args.model_cost:
        args.steps = 10 if args.steps == 30 else args.steps
        return model_cost(args)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.sizes = 8, 2, 1, [8, 16, 32]
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    if args.one_epoch is not None:
        return one_correction_epoch(args, args.one_epoch, out)

    _data(os.path.join(out, "data"), 12 if args.quick else 25)
    results = {"machine": {"cpus": os.cpu_count(), "device": args.device, "config": args.config_file}}
    print("1/4 trainer overhead and data pipeline ...", flush=True)
    results["trainer"], trainer = bench_trainer(args, out)
    print("2/4 pseudo-labelling ...", flush=True)
    results["pseudo_labels"] = bench_pseudo_labels(args, trainer)
    print("3/4 seamless cloning ...", flush=True)
    results["cloning"] = bench_cloning(args, out)
    print("4/4 one correction epoch per target-set size (fresh processes) ...", flush=True)
    scaling = []
    for n in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--output", out, "--config-file", args.config_file,
               "--device", args.device, "--one-epoch", str(n), "--scales", *map(str, args.scales),
               "--flips", *args.flips] + list(args.opts)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"one-epoch run for {n} images failed:\n{proc.stderr[-3000:]}")
        scaling.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    per_image = [s["epoch_s"] / s["n_target"] for s in scaling]
    results["scaling"] = {"runs": scaling, "s_per_target_image": per_image,
                          "linearity": per_image[-1] / per_image[0]}

    t, p, c = results["trainer"], results["pseudo_labels"], results["cloning"]
    lines = [
        "| measure | value | goal |",
        "|---|---|---|",
        f"| SISSI s/iter (cloning on) | {t['sissi_s_per_iter']:.3f} | |",
        f"| plain Detectron2 s/iter | {t['plain_s_per_iter']:.3f} | |",
        f"| trainer overhead ratio | {t['overhead_ratio']:.3f} | <= 1.05 |",
        f"| pseudo-labelling, {p['views']} views x {p['images']} images | {p['pseudo_label_s']:.2f} s | |",
        f"| floor: {p['views']} x plain batched forward | {p['floor_s']:.2f} s | |",
        f"| pseudo-labelling ratio | {p['ratio']:.3f} | <= 1.15 |",
        f"| de-augmentation + WBF share | {100 * p['wbf_share']:.1f} % | |",
        f"| data_time share ({t['workers']} workers) | {100 * t['data_time_share']:.1f} % | <= 5 % |",
        f"| seamless cloning 512 px, 60 boxes | {c['cloning_ms_512']:.0f} ms | |",
        f"| seamless cloning 1024 px, 60 boxes | {c['cloning_ms_1024']:.0f} ms | |",
        f"| target mapper, one 1024 px image's {c['draws_per_epoch']} draws of an epoch: cloned once / at "
        f"every draw | {c['epoch_draws_s_cached']:.2f} s / {c['epoch_draws_s_uncached']:.2f} s "
        f"({c['epoch_draws_s_uncached'] / c['epoch_draws_s_cached']:.2f}x) | |",
    ]
    for s in scaling:
        lines.append(f"| correction epoch, {s['n_target']} target images | {s['epoch_s']:.1f} s, "
                     f"peak RSS {s['peak_rss_mb']:.0f} MB, growth during the epoch "
                     f"{s.get('rss_growth_mb', float('nan')):+.0f} MB | linear |")
    lines.append(f"| s per target image, largest / smallest set | {results['scaling']['linearity']:.2f} | ~1 |")
    table = "\n".join(lines)
    print(table)
    from sissi_d2.utils.atomic import atomic_write_json

    atomic_write_json(os.path.join(out, "bench.json"), results)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
