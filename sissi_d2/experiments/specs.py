"""The rows of the paper's Table 1, declared once: key, display name, config, trunk, test sets.

``tools/table1.py`` trains all of them from ``configs/cpu/`` (or ``configs/``); ``tools/demo.py``
trains three of them from ``configs/demo/``. A row's ``trunk`` is the row whose past it shares
(``experiments.rows.run_rows`` branches it from there); None for the trunk itself and for rows
that share nothing (the Oracle trains on other labels).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

__all__ = ["RowSpec", "PAPER_ROWS", "TRUNK", "select_rows", "row_configs"]

TRUNK = "weak_only"


@dataclass(frozen=True)
class RowSpec:
    key: str  # folder name and results key, e.g. "adele_sissi_s"
    name: str  # name in the paper's table, e.g. "A+SISSI(S)"
    config: str  # config file name inside the experiment's config folder
    trunk: str | None = TRUNK
    test_sets: tuple = ()  # DATASETS.TEST of the row; () = those of its config


PAPER_ROWS = (
    RowSpec("weak_only", "Weak-only", "weak_only.yaml", trunk=None),
    RowSpec("baseline", "Baseline", "baseline.yaml"),
    RowSpec("sissi_w", "SISSI(W)", "sissi_w.yaml"),
    RowSpec("sissi_s", "SISSI(S)", "sissi_s.yaml"),
    RowSpec("plain_adele", "Plain A", "plain_adele.yaml"),
    RowSpec("adele_sissi_w", "A+SISSI(W)", "adele_sissi_w.yaml"),
    RowSpec("adele_sissi_s", "A+SISSI(S)", "adele_sissi_s.yaml"),
    RowSpec("oracle", "Oracle", "oracle.yaml", trunk=None),
)


def select_rows(keys: Sequence[str] | None, rows: Sequence[RowSpec] = PAPER_ROWS) -> list:
    """The rows named by ``keys`` (all when None), in table order, with the trunk they need."""
    known = [r.key for r in rows]
    unknown = [k for k in (keys or []) if k not in known]
    if unknown:
        raise KeyError(f"unknown row(s) {unknown}; rows are {known}")
    wanted = set(known if keys is None else keys)
    wanted |= {r.trunk for r in rows if r.key in wanted and r.trunk}
    return [r for r in rows if r.key in wanted]


def row_configs(rows: Sequence[RowSpec], config_dir: str, output: str, opts: Sequence[str] = (),
                trunk_opts: Sequence[str] = ()) -> dict:
    """key -> frozen config of each row: its config file, its test sets, ``trunk_opts`` (KEY VALUE
    overrides for the trunk, ``TRUNK``, alone), ``opts`` (KEY VALUE overrides for every row,
    applied last) and ``OUTPUT_DIR`` = ``output/<key>``."""
    from ..config_builder import build_config

    cfgs = {}
    for row in rows:
        extra = ["DATASETS.TEST", str(tuple(row.test_sets))] if row.test_sets else []
        if row.key == TRUNK:
            extra += list(trunk_opts)
        cfgs[row.key] = build_config(os.path.join(config_dir, row.config),
                                     extra + list(opts) + ["OUTPUT_DIR", os.path.join(output, row.key)])
    return cfgs
