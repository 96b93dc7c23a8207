# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo examples test test-faults test-assets lint browser postgres fleet fleet-down clean

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

# The [ray] extra (prefect-ray, ray: tens of MB) for the Ray runner's tests; `make demo` runs without it.
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,ray]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import ray, prefect_ray" || { echo "install of the [ray] extra failed: see the pip output above"; exit 1; }
	@touch $(RAY_STAMP)

demo: $(STAMP)
	$(VENV)/bin/interp-audit demo

# Seeded weights of the ResNet-50 and ViT-B/16 examples (deployments/specs/resnet50-example.yaml, vit-b16-example.yaml):
# about 100 and 350 MB in demo-models/, written once.
examples: $(STAMP)
	$(PY) -m interp_ops.reference_models demo-models

# Two workers (pytest-xdist), each test file on one of them (module fixtures stay shared): much of the suite waits
# on servers, subprocesses and leases rather than on the CPU. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(STAMP) $(RAY_STAMP) browser postgres lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 -m "not faults"

# The fault tests (tests marked `faults`: killed fleet and Ray workers, restarted servers, a full disk, an audit killed
# midway on S3): minutes each, as crash detection waits for heartbeats to stop; CI runs them after `make test`.
test-faults: $(STAMP) $(RAY_STAMP) postgres
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 -m faults

# The trained demo models the tests audit (tests/assets/shipped_models.py); a test says when they are stale
test-assets: $(STAMP)
	$(PY) tests/assets/shipped_models.py

# ruff (line length 120, rules in pyproject.toml): lint and formatting are checked before the tests run
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# `interp-audit fleet` runs Debian's PostgreSQL (the fleet's tests too): installed when absent, as root or with sudo.
postgres:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "no PostgreSQL, and neither root nor sudo to install it: run 'apt-get install postgresql' as root"; exit 1; fi; \
	echo "installing Debian's postgresql (for interp-audit fleet)"; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null \
	  || { echo "could not install postgresql with apt-get"; exit 1; }

# PostgreSQL, a Prefect server on it, the `interp-audit` process work pool with two workers (README, "A fleet")
fleet: $(STAMP) postgres
	$(VENV)/bin/interp-audit fleet up --workers 2

fleet-down: $(STAMP)
	$(VENV)/bin/interp-audit fleet down

# The HTML report's tests open it in Debian's Chromium (driven by playwright, whose own browser downloads are never
# used); without it they are skipped, or fail where INTERP_AUDIT_REQUIRE_BROWSER=1 (CI). `make demo` needs no browser.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "no $(CHROMIUM), and neither root nor sudo to install it: run 'apt-get install chromium' as root," \
	  "or the HTML report's browser tests are skipped"; exit 0; fi; \
	echo "installing Debian's chromium (for the HTML report tests)"; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "could not install chromium with apt-get: the HTML report's browser tests will be skipped (or fail" \
	    "where INTERP_AUDIT_REQUIRE_BROWSER=1)"

clean:
	rm -rf reports demo-models .pytest_cache

# Benchmark-only: Lucent for benchmarks/actmax_bench.py. --no-deps because Lucent requires torchvision, which has
# no CPU build here; benchmarks/shims stands in for the two names Lucent imports from torchvision and IPython.
.PHONY: bench-deps
bench-deps: $(STAMP)
	$(PY) -m pip install -q --no-deps torch-lucent==0.1.8 kornia==0.4.1
	$(PY) -m pip install -q decorator
