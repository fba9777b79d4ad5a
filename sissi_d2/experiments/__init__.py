"""Experiments on top of the engine: rows that share their past, their specs, and the report.

``rows``: ``run_rows`` trains a trunk and branches every other row from it where its start rule
fires. ``specs``: the rows of the paper's Table 1, declared once (``RowSpec``). ``report``: label
quality, figures and markdown tables shared by ``tools/demo.py`` and ``tools/table1.py``.
"""
from .rows import past_differences, run_rows, same_past, signal_mismatch

__all__ = ["run_rows", "past_differences", "same_past", "signal_mismatch"]
