# qexport: `make test` and `make build` create/refresh .venv only when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The provided CIFAR-10 copy when it sits beside the checkout; otherwise ./data (downloaded on first use).
QEXPORT_DATA_DIR ?= $(if $(wildcard ../shared/datasets/cifar10/cifar10.npz),../shared/datasets/cifar10,./data)
export QEXPORT_DATA_DIR

# IPEX 2.8.0 needs torch 2.8.*: it gets its own environment (about 4 GB downloaded, ~2.5 min here).
IPEX_VENV   ?= .venv-ipex
IPEX_STAMP  := $(IPEX_VENV)/.installed-stamp
IPEX_FAILED := $(IPEX_VENV).setup-failed

.PHONY: venv setup-ipex try-setup-ipex test test-fast build bench info clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,openvino,signing,loadgen,timm,executorch]'
	touch $(STAMP)

setup-ipex: $(IPEX_STAMP)

$(IPEX_STAMP): runtimes/requirements-ipex.txt
	rm -rf $(IPEX_VENV) $(IPEX_FAILED)
	$(PYTHON) -m venv $(IPEX_VENV)
	$(IPEX_VENV)/bin/python -m pip install --quiet -r runtimes/requirements-ipex.txt 2> $(IPEX_VENV).log \
	  || { grep -v '^WARNING' $(IPEX_VENV).log | grep . | tail -n 1 > $(IPEX_FAILED); cat $(IPEX_VENV).log; rm -rf $(IPEX_VENV); exit 1; }
	$(IPEX_VENV)/bin/python -c "import intel_extension_for_pytorch" 2> $(IPEX_VENV).log \
	  || { tail -n 1 $(IPEX_VENV).log > $(IPEX_FAILED); rm -rf $(IPEX_VENV); exit 1; }
	$(IPEX_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# `make test` tries the IPEX environment; where it cannot be created, the IPEX tests skip
# with the recorded reason (never silently).
try-setup-ipex:
	@$(MAKE) --no-print-directory setup-ipex || echo "IPEX environment not created ($$(cat $(IPEX_FAILED) 2>/dev/null)); IPEX tests will skip."

test: venv try-setup-ipex
	$(PY) -m pytest -q

# Unit tests only: no real data, no session build of every family.
test-fast: venv
	$(PY) -m pytest -q -m "not integration and not builds and not e2e"

build: venv try-setup-ipex
	$(VENV)/bin/qexport build --all

bench: venv
	$(VENV)/bin/qexport bench artifacts/

info: venv
	$(VENV)/bin/qexport info

clean:
	rm -rf $(VENV) $(IPEX_VENV) $(IPEX_FAILED) .pytest_cache
