"""Table 1 over several seeds: how far apart runs of the same settings land, and whether a row's
difference from another survives that spread.

A single run of a row moves by 1-6 AP50 with the float summation order alone (another CPU type, or
another thread count for the last epochs: docs/results.md), so a difference between two rows of
one table says little until the same comparison is repeated. This module reads the outputs of
``tools/table1.py`` run with different ``SEED`` values (one folder per seed) and writes what they
agree on: each row's numbers per seed with their mean and standard deviation, the paired
differences the paper's claims rest on (a row against another *of the same seed*, since rows of
one seed share their trunk), and the quality of every row's first and last pseudo-labels.
Nothing here trains or reads truth: it only reads ``results.json`` and the trunks' recorded settings.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass

from .report import METRICS, fmt, markdown_table
from .rows import never_touches_weights
from .specs import PAPER_ROWS, TRUNK

__all__ = ["SeedRun", "COMPARISONS", "load_seed_runs", "settings_differences", "mean_sd", "row_table", "comparisons",
           "comparison_table", "label_quality_table", "seed_figure", "label_curve_figure", "write_seed_report"]

# (row, minus row, what the difference measures): the paper's claims and the cloning question,
# each as a difference between rows of the same seed.
COMPARISONS = (
    ("A+SISSI(S)", "Weak-only", "the method against training on the weak labels (paper: > 0)"),
    ("A+SISSI(S)", "Baseline", "ADELE + cloning against the source-validation baseline (paper: >= 15 AP)"),
    ("Plain A", "Weak-only", "correction from ADELE's epoch, no cloning"),
    ("A+SISSI(S)", "Plain A", "cloning (strong blur), ADELE rows"),
    ("SISSI(S)", "Baseline", "cloning (strong blur), source-validation rows"),
    ("Baseline", "Weak-only", "correction from the source-validation epoch, no cloning"),
)
# Settings that may differ between the runs compared besides the seed and those no weight depends
# on (rows.never_touches_weights): which device ran them, where data sets were registered from.
_ALSO_ALLOWED = ("MODEL.DEVICE", "SISSI.REGISTER")


@dataclass
class SeedRun:
    folder: str
    seed: int
    rows: dict  # row name -> {"AP50": ..., "AP75": ..., "AP": ..., "AR": ...}
    label_quality: dict  # results.json's "label_quality"
    settings: dict  # the trunk's row_settings.json (flat)


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): "
                         "run tools/table1.py on that folder again to rewrite it") from e


def load_seed_runs(folders) -> list:
    """One ``SeedRun`` per output folder of ``tools/table1.py``, sorted by seed. The seed is the one
    the trunk recorded (``<folder>/weak_only/sissi/row_settings.json``), so a folder trained with the
    configs' own seed needs no label. Two folders of the same seed are an error: they would count
    one run twice."""
    runs = []
    for folder in folders:
        results = _read_json(os.path.join(folder, "results.json"),
                             "not a finished tools/table1.py output folder (run tools/table1.py with that --output "
                             "again: finished rows are reused, the others resume)")
        settings = _read_json(os.path.join(folder, TRUNK, "sissi", "row_settings.json"),
                              f"the trunk ({TRUNK}) of this table recorded no settings; a table1 output folder "
                              "has it once its trunk has started")
        runs.append(SeedRun(folder, int(settings.get("SEED", -1)), results.get("rows", {}),
                            results.get("label_quality", {}), settings))
    seeds = [r.seed for r in runs]
    if any(s < 0 for s in seeds):
        raise ValueError("a run with SEED -1 (a random seed each time) cannot be repeated: "
                         f"{[r.folder for r in runs if r.seed < 0]}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed(s) {repeated} appear in more than one folder "
                         f"({[r.folder for r in runs if r.seed in repeated]}): give each seed once")
    return sorted(runs, key=lambda r: r.seed)


def settings_differences(runs: list) -> list:
    """Settings (sorted keys) in which the runs differ other than SEED and where they write: a
    spread over such runs is not a seed spread, so the report names them."""
    keys = set().union(*(r.settings for r in runs)) if runs else set()
    eval_periods = [r.settings.get("TEST.EVAL_PERIOD", -1) for r in runs]
    return sorted(k for k in keys if k != "SEED" and k not in _ALSO_ALLOWED
                  and not never_touches_weights(k, *eval_periods)
                  and len({json.dumps(r.settings.get(k), sort_keys=True) for r in runs}) > 1)


def mean_sd(values) -> tuple:
    """(mean, sample standard deviation) of the values that are not None; sd is None below 2."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) >= 2 else None)


def _pm(m, sd) -> str:
    return fmt(m) if sd is None else f"{fmt(m)} ± {sd:.1f}"


def _row_names(runs: list) -> list:
    """Rows in the paper's order, then any other row; the weak labels as detections first."""
    seen = []
    for r in runs:
        for name in r.rows:
            if name not in seen:
                seen.append(name)
    order = ["Weak labels"] + [s.name for s in PAPER_ROWS]
    return [n for n in order if n in seen] + [n for n in seen if n not in order]


def _metric(run: SeedRun, row: str, metric: str):
    return (run.rows.get(row) or {}).get(metric)


def row_table(runs: list) -> str:
    """Each row's AP50 per seed (marked when the row is another row's training: its start rule
    never fired), then mean ± sd of the four metrics over every seed."""
    body = []
    for row in _row_names(runs):
        per_seed = [fmt(_metric(r, row, "AP50"), "-")
                    + (f" (= {_trained_as(r, row)})" if _trained_as(r, row) != row else "") for r in runs]
        stats = [_pm(*mean_sd(_metric(r, row, m) for r in runs)) for m in METRICS]
        body.append([row] + per_seed + stats)
    headers = ["row"] + [f"AP50 seed {r.seed}" for r in runs] + [f"{m} mean ± sd" for m in METRICS]
    return markdown_table(body, headers)


def _trained_as(run: SeedRun, row: str) -> str:
    """The row whose training this row's numbers are: itself, or the row it equals when its start
    rule never fired (``same_as`` in results.json)."""
    return (run.rows.get(row) or {}).get("same_as") or row


def comparisons(runs: list) -> list:
    """Per comparison of ``COMPARISONS`` whose two rows every run has: the AP50 / AP / AR
    differences per seed (row minus row of the same seed), and how many seeds gave a positive one.
    A seed in which both rows are one training (a start rule that never fired) measured nothing:
    its difference is None and it is left out of the counts."""
    out = []
    for a, b, meaning in COMPARISONS:
        if not all(a in r.rows and b in r.rows for r in runs):
            continue
        same = [_trained_as(r, a) == _trained_as(r, b) for r in runs]
        diffs = {m: [None if s else _metric(r, a, m) - _metric(r, b, m) for r, s in zip(runs, same)]
                 for m in ("AP50", "AP", "AR")}
        out.append({"row": a, "minus": b, "meaning": meaning, "seeds": [r.seed for r in runs],
                    "differences": diffs, "same_training": same,
                    "measured": sum(not s for s in same),
                    "positive_AP50": sum(d is not None and d > 0 for d in diffs["AP50"])})
    return out


def comparison_table(runs: list) -> str:
    body = []
    for c in comparisons(runs):
        d = c["differences"]
        body.append([f"{c['row']} − {c['minus']}", c["meaning"]]
                    + ["same run" if x is None else f"{x:+.1f}" for x in d["AP50"]]
                    + [_pm(*mean_sd(d["AP50"])), _pm(*mean_sd(d["AP"])), _pm(*mean_sd(d["AR"])),
                       f"{c['positive_AP50']} of {c['measured']}"])
    headers = (["difference", "what it measures"] + [f"AP50 seed {r.seed}" for r in runs]
               + ["AP50 mean ± sd", "AP mean ± sd", "AR mean ± sd", "seeds with AP50 > 0"])
    return markdown_table(body, headers)


def _rounds(run: SeedRun, row: str) -> list:
    return sorted((run.label_quality.get("pseudo_labels") or {}).get(row) or [], key=lambda q: q["epoch"])


def label_quality_table(runs: list, metric: str = "F1_50") -> str:
    """F1@0.5 against the training truth of the weak labels, of the trunk's final model as a labeller,
    and of each correcting row's first, best and last pseudo-labels: mean ± sd over the seeds."""
    def stat(values):
        return _pm(*mean_sd(values))

    weak = [(r.label_quality.get("weak_labels") or {}).get(metric) for r in runs]
    trunk = [(r.label_quality.get("trunk_final_pseudo_labels") or {}).get(metric) for r in runs]
    body = [["weak labels", stat(weak), "", "", "", ""],
            ["Weak-only final model (TTA + WBF, not trained on)", "", "", "", stat(trunk), ""]]
    for row in _row_names(runs):
        per_run = [_rounds(r, row) for r in runs]
        if not any(per_run):
            continue
        first = [q[0][metric] if q else None for q in per_run]
        best = [max(x[metric] for x in q) if q else None for q in per_run]
        last = [q[-1][metric] if q else None for q in per_run]
        above = [sum(x[metric] > w for x in q) if q and w is not None else None for q, w in zip(per_run, weak)]
        rounds = [len(q) for q in per_run]
        n = sum(bool(q) for q in per_run)
        name = f"{row} pseudo-labels" + (f" ({n} of {len(runs)} seeds corrected)" if n < len(runs) else "")
        body.append([name, "", stat(first), stat(best), stat(last),
                     ", ".join(f"seed {r.seed}: {a}/{k}" for r, a, k in zip(runs, above, rounds) if a is not None)])
    return markdown_table(body, ["labels", "weak labels", "first round", "best round", "last round",
                                 "rounds above the weak labels, per seed"])


def seed_figure(runs: list, out_png: str, metric: str = "AP50") -> str:
    """Each row's ``metric`` per seed (dots) and their mean (bar), the weak labels as a line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [n for n in _row_names(runs) if n != "Weak labels"]
    fig, ax = plt.subplots(figsize=(8.5, 3.8), dpi=110)
    for i, row in enumerate(rows):
        values = [_metric(r, row, metric) for r in runs]
        m, _ = mean_sd(values)
        if m is not None:
            ax.bar(i, m, color="tab:blue", alpha=0.35, width=0.6)
        for j, (r, v) in enumerate(zip(runs, values)):
            if v is not None:
                ax.plot(i + (j - (len(runs) - 1) / 2) * 0.12, v, "o", ms=4, color=f"C{(j + 1) % 10}",
                        label=f"seed {r.seed}" if i == 0 else None)
    weak, _ = mean_sd(_metric(r, "Weak labels", metric) for r in runs)
    if weak is not None:
        ax.axhline(weak, color="black", ls="--", lw=1, label=f"weak labels as detections ({weak:.1f})")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(rows, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} on the test set (%)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Table 1 over {len(runs)} seeds: each seed (dots) and the mean (bars)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the bars fill the axes
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def label_curve_figure(runs: list, out_png: str, metric: str = "F1_50") -> str | None:
    """F1@0.5 of every correcting row's labels per epoch: a colour per row, a marker per seed (one
    colour per row and seed would repeat colours past ten lines), the weak labels as a line (their
    F1 is the same in every seed: the same pipeline on the same images). None when no row corrected."""
    from ..utils.visualize import _finish_plot, _new_axes

    rows = [row for row in _row_names(runs) if any(_rounds(r, row) for r in runs)]
    if not rows:
        return None
    markers = "osD^v<>ph*"
    fig, ax = _new_axes()
    for i, row in enumerate(rows):
        for j, r in enumerate(runs):
            q = _rounds(r, row)
            if q:
                first_of_row = not any(_rounds(p, row) for p in runs[:j])  # one legend entry per row
                ax.plot([x["epoch"] for x in q], [x[metric] for x in q], "-", marker=markers[j % len(markers)],
                        ms=3, lw=1, color=f"C{i % 10}", label=row if first_of_row else None)
    for j, r in enumerate(runs):  # the markers' key, drawn outside the data
        ax.plot([], [], markers[j % len(markers)], color="gray", ms=3, label=f"seed {r.seed}")
    weak, _ = mean_sd((r.label_quality.get("weak_labels") or {}).get(metric) for r in runs)
    if weak is not None:
        ax.axhline(weak, color="black", ls="--", lw=1, label=f"weak labels ({weak:.1f})")
    return _finish_plot(fig, ax, out_png, "epoch (labels trained on during that epoch)", "F1@0.5 vs true boxes (%)",
                        f"Training labels against the truth, {len(runs)} seeds", "lower left", 6)


def write_seed_report(folders, output: str) -> dict:
    """Read the table1 folders, write ``seeds.md``, ``seeds.json``, ``seeds_ap50.png`` and (when a
    row corrected) ``seeds_label_f1.png`` under ``output``; returns what ``seeds.json`` holds."""
    from ..utils.atomic import atomic_open, atomic_write_json

    runs = load_seed_runs(folders)
    if len(runs) < 2:
        raise ValueError(f"{len(runs)} table1 folder(s) given: a spread needs at least two seeds")
    os.makedirs(output, exist_ok=True)
    differing = settings_differences(runs)
    figure = seed_figure(runs, os.path.join(output, "seeds_ap50.png"))
    curves = label_curve_figure(runs, os.path.join(output, "seeds_label_f1.png"))
    lines = [f"# Table 1 over {len(runs)} seeds", "",
             "Runs: " + ", ".join(f"seed {r.seed} (`{r.folder}`)" for r in runs) + ".", ""]
    if differing:
        lines += [f"**The runs also differ in {len(differing)} setting(s) other than the seed** "
                  f"({', '.join(differing[:8])}{' ...' if len(differing) > 8 else ''}): the spread below is "
                  "not a seed spread alone.", ""]
    lines += ["## Rows on the test set", "", row_table(runs), "",
              "Standard deviations are of the sample (n − 1); with this few seeds they are rough. "
              "\"(= row)\": that seed's start rule never fired, so the row is that row's training.", "",
              f"![AP50 per seed]({os.path.basename(figure)})", "",
              "## Differences between rows of the same seed", "", comparison_table(runs), "",
              "\"same run\": in that seed both rows are one training (a start rule never fired); it is left "
              "out of the mean and the counts.", "",
              "## Labels trained on, against the training truth (F1@0.5)", "", label_quality_table(runs), ""]
    if curves:
        lines += [f"![label F1 per round and seed]({os.path.basename(curves)})", ""]
    summary = {"folders": [r.folder for r in runs], "seeds": [r.seed for r in runs],
               "settings_differing": differing,
               "rows": {row: {m: dict(zip(("mean", "sd"), mean_sd(_metric(r, row, m) for r in runs)))
                              for m in METRICS} for row in _row_names(runs)},
               "comparisons": comparisons(runs), "figures": [os.path.basename(f) for f in (figure, curves) if f]}
    with atomic_open(os.path.join(output, "seeds.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    atomic_write_json(os.path.join(output, "seeds.json"), summary)
    return summary
