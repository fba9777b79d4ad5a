"""Progress bars for long loops (tqdm on a terminal, periodic log lines otherwise)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable, desc: str = "", total=None, disable: bool = False):
    """tqdm with an ETA; in a non-interactive log it prints a line about every 10%."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    interactive = sys.stderr.isatty()
    miniters = None if interactive or not total else max(1, total // 10)
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True,
                miniters=miniters, mininterval=0.5 if interactive else 5.0, leave=interactive)
