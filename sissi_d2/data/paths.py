"""Where data lives: the shared real data, the cache of conversions and generated labels."""
from __future__ import annotations

import os

__all__ = ["shared_data_root", "cache_dir", "require_dir", "GET_DATA_HELP"]

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GET_DATA_HELP = (
    "Get the data first: the shared benchmark data lives in <repo>/../shared/data (or set "
    "SISSI_SHARED_DATA); the Cellpose data set is downloaded from https://www.cellpose.org/dataset "
    "and unzipped; a synthetic set is written by `python -m sissi_d2.data.synthetic --root DIR`. "
    "See datasets/README.md."
)


def shared_data_root() -> str:
    """Root of the shared real data: env ``SISSI_SHARED_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("SISSI_SHARED_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.normpath(os.path.join(_REPO_ROOT, "..", "shared", "data"))


def cache_dir() -> str:
    """Cache of converted data and generated labels: env ``SISSI_CACHE_DIR``, else
    ``<repo root>/datasets/generated`` (git-ignored)."""
    env = os.environ.get("SISSI_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(_REPO_ROOT, "datasets", "generated")


def require_dir(path, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path} does not exist or is not a folder. {GET_DATA_HELP}")
    return path
