#!/usr/bin/env bash
# Idempotent install of sissi_d2 into a project virtualenv (.venv by default).
#   torch 2.14.1 + torchvision 0.29.1, Detectron2 0.6 (Python only, from the PyPI sdist
#   pb1-detectron2 with its C++ extension disabled), then sissi_d2 itself in editable mode.
# A second run checks what is there and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SISSI_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
case "$VPY" in /*) ;; *) VPY="$(pwd)/$VPY" ;; esac
PIP="$VPY -m pip --disable-pip-version-check"

have() { "$VPY" - "$@" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
for spec in sys.argv[1:]:
    name, _, ver = spec.partition("==")
    got = md.version(name)
    if ver and got != ver:
        sys.exit(1)
PYEOF
}

if ! have torch==2.14.1 torchvision==0.29.1; then
  echo "[install] torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
fi

if ! have pb1-detectron2==0.6; then
  echo "[install] detectron2 0.6 (Python only, no C++ extension)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  $PIP download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp" "pb1-detectron2==0.6"
  tar -xzf "$tmp"/pb1[-_]detectron2-0.6.tar.gz -C "$tmp"
  src=$(ls -d "$tmp"/pb1[-_]detectron2-0.6)
  # The sdist has no csrc/ and always tries to compile detectron2._C: build no extension.
  "$VPY" - "$src/setup.py" <<'PYEOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
new, n = re.subn(r"ext_modules\s*=\s*get_extensions\(\)", "ext_modules=[]", text)
if n != 1:
    sys.exit("install.sh: could not disable the C++ extension in " + path)
open(path, "w").write(new)
PYEOF
  $PIP install -q setuptools wheel
  $PIP install -q --no-build-isolation "$src"
fi

here=$(pwd)
if ! (cd / && "$VPY" -c "import os, sissi_d2; assert os.path.dirname(os.path.dirname(os.path.abspath(sissi_d2.__file__))) == '$here'" 2>/dev/null) \
   || ! have sissi-d2 pytest hypothesis shapely; then
  echo "[install] sissi_d2 (editable) and its dependencies"
  # compat mode: a .pth pointing at this folder, so new subpackages need no reinstall
  $PIP install -q --no-build-isolation --config-settings editable_mode=compat -e ".[test]"
fi
echo "[install] ok: $("$VPY" -c 'import torch, detectron2, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "detectron2", detectron2.__version__)')"
