#!/usr/bin/env bash
# The GPU check in one command: build, verify and bench the GPU families (tensorrt-fp16,
# tensorrt-int8, onnx-cuda-fp16, pt2e-cuda-fp16) on a small model, on an NVIDIA GPU.
#
#   bash scripts/gpu_check.sh [--dry] [OUT]      (make gpu-check; make gpu-check-dry)
#
# OUT (default: $OUT, else ./gpu-check) receives at most six small files: gpu_check.log (everything
# printed), facts.txt (GPU, driver, torch, CUDA, packages), steps.tsv (each step, its exit status and
# seconds), bench.json and bench.md, manifests.tar.gz (every manifest, index.json, verify's report).
# The artifacts themselves stay in WORK (default /tmp/qexport-gpu-check).
#
# On the GPU host it:
#   1. installs what is missing, from the wheels in $QEXPORT_WHEELS (default .whl/) when that
#      folder exists, else from the package registry: qexport itself (--no-deps: the host's torch
#      is used), torchao and platformdirs, TensorRT 11.1 for CUDA 13 (what torch-tensorrt 2.14.0
#      pins) and onnxruntime-gpu 1.31.1 in place of onnxruntime. A package that cannot be installed
#      is logged; its families then skip with their one sentence and the rest go on;
#   2. trains resnet18 for 2 epochs on the GPU (CIFAR-10 from $QEXPORT_DATA_DIR when it holds
#      cifar10.npz, else synthetic images) and builds the GPU families plus torchscript-fp32, the
#      baseline bench's ratios are paired against;
#   3. verifies every artifact against its golden data, benches them with --device cuda at batch
#      1, 32 and 128, and runs tests/test_gpu_families.py (its last test builds on the GPU).
#
# --dry (and any host where torch sees no NVIDIA GPU) runs the part that needs none, installing
# nothing: the family list, the build that skips every GPU family with its sentence, the refusal
# of a GPU family named on this host (exit 2), and the tests; it exits 0 when all of them behave.
# --fetch-wheels downloads the small wheels a GPU host without a registry needs into .whl/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
FETCH=0
OUT_DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    *) OUT_DIR="$arg" ;;
  esac
done
OUT_DIR="$(mkdir -p "${OUT_DIR:-${OUT:-gpu-check}}" && cd "${OUT_DIR:-${OUT:-gpu-check}}" && pwd)"
WORK="${WORK:-/tmp/qexport-gpu-check}"
WHEELS="${QEXPORT_WHEELS:-$ROOT/.whl}"
if [ -z "${PY:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
GPU_FAMILIES="tensorrt,onnx-cuda,pt2e-cuda"   # prefixes: a family this host cannot build is skipped, not fatal
BASELINE="torchscript-fp32"
TRT_WHEELS="tensorrt-cu13==11.1.0.106 tensorrt-cu13-bindings==11.1.0.106 tensorrt-cu13-libs==11.1.0.106"
ORT_GPU="onnxruntime-gpu==1.31.1"
SMALL_WHEELS="torchao==0.18.0 platformdirs"

mkdir -p "$WORK"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
printf 'step\texit\tseconds\n' > "$OUT_DIR/steps.tsv"
FAILED=0

# step NAME EXPECTED_EXIT COMMAND...: run it, record its exit status and time; a status other than
# the expected one fails the check (the other steps still run). EXPECTED '-': any status (an install
# that cannot happen here only makes its families skip); the command's own status is returned.
step() {
  local name="$1" expected="$2"; shift 2
  echo "=== $name: $*"
  local started=$SECONDS
  "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >> "$OUT_DIR/steps.tsv"
  if [ "$expected" != - ] && [ "$rc" != "$expected" ]; then
    echo "=== $name: exit $rc, expected $expected"
    FAILED=1
  fi
  return "$rc"
}

qexport() { (cd "$WORK" && "$PY" -m qexport.commands.cli "$@"); }
installed() { "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }
source_args() { [ -d "$WHEELS" ] && echo "--no-index --find-links $WHEELS"; }  # carried wheels, else the registry
pip_install() { "$PY" -m pip install --quiet --no-deps $(source_args) "$@"; }

if [ "$FETCH" = 1 ]; then
  mkdir -p "$ROOT/.whl"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" $SMALL_WHEELS
  ls -la "$ROOT/.whl"
  exit $?
fi

facts() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF'
import importlib.metadata as m
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus visible to torch", torch.cuda.device_count())
except ImportError:
    print("torch: not installed")
for name in ("tensorrt-cu13", "torch-tensorrt", "onnxruntime", "onnxruntime-gpu", "torchao", "qexport"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "not installed")
EOF
}
facts | tee "$OUT_DIR/facts.txt"
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(torch.cuda.device_count() == 0)" 2>/dev/null; then
  echo "=== torch sees no NVIDIA GPU here: running the dry check (what needs no GPU)"
  DRY=1
fi

if [ "$DRY" = 0 ]; then
  "$PY" -c "import qexport" 2>/dev/null || step install-qexport 0 "$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
  for wheel in $SMALL_WHEELS; do
    installed "${wheel%%=*}" || step "install-${wheel%%=*}" - pip_install "$wheel"
  done
  installed tensorrt-cu13 || step install-tensorrt - pip_install $TRT_WHEELS
  # onnxruntime and onnxruntime-gpu install the same module: fetch the GPU one first, then swap them
  if ! installed onnxruntime-gpu && step fetch-onnxruntime-gpu - "$PY" -m pip download --quiet --no-deps $(source_args) -d "$WORK/ort" "$ORT_GPU"; then
    step uninstall-onnxruntime - "$PY" -m pip uninstall --quiet -y onnxruntime
    step install-onnxruntime-gpu 0 "$PY" -m pip install --quiet --no-deps --no-index --find-links "$WORK/ort" "$ORT_GPU"
  fi
  step import-qexport 0 "$PY" -c "import qexport.exporter, qexport.runtimes.harness"
fi

step list 0 qexport build --list
if [ "$DRY" = 1 ]; then
  DATA=(--data synthetic --train-samples 64 --test-samples 32 --epochs 1)
elif [ -f "${QEXPORT_DATA_DIR:-/nonexistent}/cifar10.npz" ]; then
  DATA=(--data cifar10 --data-dir "$QEXPORT_DATA_DIR" --train-samples 10000 --test-samples 2000 --epochs 2)
else
  DATA=(--data synthetic --train-samples 2048 --test-samples 512 --epochs 2)
fi
ARTIFACTS="$WORK/artifacts"
if [ "$DRY" = 1 ]; then
  step build-skips-gpu-families 0 qexport build --only "$GPU_FAMILIES" "${DATA[@]}" --out "$ARTIFACTS" --device cpu --no-progress
  step named-gpu-family-refused 2 qexport build --only tensorrt-fp16 "${DATA[@]}" --out "$ARTIFACTS" --device cpu --no-progress
else
  step build 0 qexport build --only "$GPU_FAMILIES,$BASELINE" "${DATA[@]}" --out "$ARTIFACTS" --device cuda --no-progress
  step verify 0 bash -c "set -o pipefail; cd '$WORK' && '$PY' -m qexport.commands.cli verify '$ARTIFACTS' | tee '$ARTIFACTS/verify.txt'"
  step bench 0 qexport bench "$ARTIFACTS" --device cuda --batch-sizes 1,32,128 --rounds 3 --out "$WORK/bench"
  cp "$WORK/bench/bench.json" "$WORK/bench/bench.md" "$OUT_DIR/" 2>/dev/null
fi
step tests 0 bash -c "cd '$ROOT' && '$PY' -m pytest -q -p no:cacheprovider tests/test_gpu_families.py"
(cd "$ARTIFACTS" 2>/dev/null && tar czf "$OUT_DIR/manifests.tar.gz" ./*.manifest.json index.json verify.txt 2>/dev/null)

echo "=== steps (name, exit, seconds):"
cat "$OUT_DIR/steps.tsv"
echo "=== $([ "$DRY" = 1 ] && echo dry check || echo GPU check) $([ "$FAILED" = 0 ] && echo passed || echo FAILED); files in $OUT_DIR"
exit "$FAILED"
