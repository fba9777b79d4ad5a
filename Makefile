# One entry point. Every target installs first (idempotent: seconds when already installed).
PY := .venv/bin/python

.PHONY: install demo test table bench clean

install:
	bash scripts/install.sh

demo: install
	$(PY) tools/demo.py --output output/demo

test: install
	$(PY) -m pytest -q tests

table: install
	$(PY) tools/table1.py --output output/table1

bench: install
	$(PY) tools/benchmark.py --output output/bench

clean:
	rm -rf output
