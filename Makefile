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

.PHONY: venv setup-ipex try-setup-ipex test test-fast build bench demo info clean gpu-check gpu-check-dry

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,openvino,signing,loadgen,timm,executorch,ray]'
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

# Unit tests only: no real data, no build of every family.
test-fast: venv
	$(PY) -m pytest -q -m "not integration and not builds and not e2e"

build: venv try-setup-ipex
	$(VENV)/bin/qexport build --all

bench: venv
	$(VENV)/bin/qexport bench artifacts/

# The GPU families on an NVIDIA GPU: install, build, verify, bench (scripts/gpu_check.sh says what it writes).
# gpu-check-dry runs the part that needs no GPU (the list, the skips, the tests) and exits 0 on a CPU host.
gpu-check:
	bash scripts/gpu_check.sh

gpu-check-dry: venv
	bash scripts/gpu_check.sh --dry

# A first look: ResNet18 for 2 epochs on 20 000 CIFAR-10 images, every family but the two QAT ones,
# a 3-round bench at batch 1 and 32, and the recommendation, into demo/.
demo: venv try-setup-ipex
	@echo "demo: a short training (2 epochs, 20 000 images), every family but QAT, 3 bench rounds, accuracy on"
	@echo "      2 000 test images. It leaves out the QAT families and a trained model's accuracy (so int8 is"
	@echo "      judged on the estimate, within 2 pt);"
	@echo "      the full run (make build bench: 30 epochs, every family, a 1-pt budget) takes hours on 2 cores."
	$(VENV)/bin/qexport build --all --skip pt2e-int8-qat,torchscript-int8-qat --epochs 2 --train-samples 20000 \
	  --eval-samples 2000 --max-accuracy-drop 2 --budget-verdict estimate --out demo/
	$(VENV)/bin/qexport bench demo/ --rounds 3 --batch-sizes 1,32 --eval-samples 2000
	$(VENV)/bin/qexport recommend demo/ --max-accuracy-drop 2

info: venv
	$(VENV)/bin/qexport info

clean:
	rm -rf $(VENV) $(IPEX_VENV) $(IPEX_FAILED) .pytest_cache
