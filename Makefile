# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv and install the CPU dependencies pinned in constraints.txt (torch==2.13.0, CPU wheel).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ssmcompress.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	$(PY) benchmarks/bench_reduce.py
	$(PY) benchmarks/lapack_floor.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_conv.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_hankel.py

clean:
	rm -rf $(VENV) demo_run .pytest_cache .hypothesis
