# qexport: `make test` and `make build` create/refresh .venv only when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The provided CIFAR-10 copy when it sits beside the checkout; otherwise ./data (downloaded on first use).
QEXPORT_DATA_DIR ?= $(if $(wildcard ../shared/datasets/cifar10/cifar10.npz),../shared/datasets/cifar10,./data)
export QEXPORT_DATA_DIR

.PHONY: venv test test-fast build bench info clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not integration"

build: venv
	$(VENV)/bin/qexport build --all

bench: venv
	$(VENV)/bin/qexport bench artifacts/

info: venv
	$(VENV)/bin/qexport info

clean:
	rm -rf $(VENV) .pytest_cache
