# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch goes first, pinned to the local CPU wheel: a looser requirement would pull GBs of CUDA packages.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import torch, prefect, onnxruntime, great_expectations, interp_audit" \
	  || { echo "install failed: see the pip output above"; exit 1; }
	@! $(PY) -m pip show -q onnxruntime 2>/dev/null \
	  || { echo "both onnxruntime and onnxruntime-gpu are installed; uninstall onnxruntime"; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/interp-audit demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf reports demo-models .pytest_cache

# Benchmark-only: Lucent for benchmarks/actmax_bench.py. --no-deps because Lucent requires torchvision, which has
# no CPU build here; benchmarks/shims stands in for the two names Lucent imports from torchvision and IPython.
.PHONY: bench-deps
bench-deps: $(STAMP)
	$(PY) -m pip install -q --no-deps torch-lucent==0.1.8 kornia==0.4.1
	$(PY) -m pip install -q decorator
