"""Independent re-measurement of a bench folder, to check bench.json's prediction interval.

Each artifact runs in a fresh process of its own, loaded with its runtime's documented API and no
qexport code, on one thread pinned to one core; the figure per batch size is the median call time
of one window after a warm-up. A deployment team re-measuring once would do about this, so it is
what the prediction interval promises to hold.

usage: python docs/results/remeasure.py DIR [--core N] [--ipex-python PATH]   (DIR holds bench.json)
The child is the same file: python docs/results/remeasure.py --one FILE RUNTIME ENGINE C H W
(ENGINE: the manifest's quantized engine, '' when it names none)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BATCHES = (1, 32, 128)
WINDOW_S = {1: 2.0, 32: 4.0, 128: 4.0}  # larger batches: fewer calls per second, a longer window
MIN_CALLS = 10


def median_ms(call: Callable[[], object], seconds: float) -> float:
    """Median wall time of one call, after a warm-up, over a window of ``seconds`` (at least MIN_CALLS)."""
    import numpy as np

    for _ in range(20 if seconds < 3 else 3):
        call()
    times: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < MIN_CALLS:
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1e6


def onnxruntime_caller(path: str, shape: tuple[int, ...]) -> Callable[[], object]:
    """One ONNX Runtime session on one thread, fed one random batch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    return lambda: session.run(None, feed)


def openvino_caller(path: str, shape: tuple[int, ...]) -> Callable[[], object]:
    """One OpenVINO request on one thread with the latency hint, fed one random batch. The precision
    hint is f32: on a CPU with AVX-512 BF16 or AMX OpenVINO would otherwise run an fp32 IR in bf16."""
    import numpy as np
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return lambda: request.infer({0: x})


def executorch_caller(path: str, shape: tuple[int, ...]) -> Callable[[], object]:
    """ExecuTorch's Python runtime on one thread (a program exported for one batch size refuses others).
    Its thread pool starts with a thread per core, which on one pinned core take turns: resize it first."""
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    torch.set_num_threads(1)
    _unsafe_reset_threadpool(1)
    method = Runtime.get().load_program(path).load_method("forward")
    x = torch.randn(shape)
    return lambda: method.execute([x])


def torch_caller(path: str, shape: tuple[int, ...], aoti: bool, engine: str, ipex: bool = False) -> Callable[[], object]:
    """An AOTInductor package or a TorchScript file on one thread, with the manifest's quantized engine.
    An IPEX artifact needs IPEX imported before it loads (its fused operators live there)."""
    if ipex:
        import intel_extension_for_pytorch  # noqa: F401
    import torch

    torch.set_num_threads(1)
    if engine:
        torch.backends.quantized.engine = engine
    model = torch._inductor.aoti_load_package(path) if aoti else torch.jit.load(path)
    x = torch.randn(shape)

    def call() -> object:
        with torch.inference_mode():
            return model(x)
    return call


def caller(path: str, runtime: str, engine: str, shape: tuple[int, ...]) -> Callable[[], object]:
    """The runtime's own way to call the artifact at one batch size."""
    if runtime == "onnxruntime":
        return onnxruntime_caller(path, shape)
    if runtime == "openvino":
        return openvino_caller(path, shape)
    if runtime == "executorch":
        return executorch_caller(path, shape)
    if runtime in ("aoti", "torchscript", "ipex"):
        return torch_caller(path, shape, runtime == "aoti", engine, ipex=runtime == "ipex")
    raise ValueError(f"no independent caller for runtime {runtime!r}")


def child(path: str, runtime: str, engine: str, image: tuple[int, int, int]) -> None:
    """Print {batch: median ms or None} as one JSON line; a batch the artifact refuses is None."""
    measured: dict[str, float | None] = {}
    for batch in BATCHES:
        try:
            measured[str(batch)] = median_ms(caller(path, runtime, engine, (batch, *image)), WINDOW_S[batch])
        except Exception as err:  # noqa: BLE001 -- e.g. a .pte exported for batch 1 only: say it, go on
            print(f"batch {batch}: {type(err).__name__}: {err}", file=sys.stderr)
            measured[str(batch)] = None
    print(json.dumps(measured))


def remeasure(directory: Path, row: dict, core: int, python: str) -> dict[str, float | None] | None:
    """Run one artifact's child in ``python``, pinned to ``core``; None, with one line said, when it
    measured nothing."""
    manifest = json.loads((directory / (row["file"] + ".manifest.json")).read_text())
    engine = (manifest.get("runtime") or {}).get("quantized_engine") or ""
    image = [str(n) for n in manifest["input"]["shape"][1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run(["taskset", "-c", str(core), python, __file__, "--one", str(directory / row["file"]),
                               row["runtime"], engine, *image], capture_output=True, text=True, env=env)
    except OSError as err:  # no taskset, or no such interpreter (the IPEX environment not made)
        print(f"{row['family']}: not re-measured: {err}")
        return None
    lines = done.stdout.strip().splitlines()
    try:
        measured = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    except json.JSONDecodeError:
        measured = {}
    if not any(ms is not None for ms in measured.values()):
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        print(f"{row['family']}: not re-measured: {reason}")
        return None
    return measured


def driver(directory: Path, core: int, ipex_python: str) -> None:
    """Re-measure every artifact bench measured and say which land inside its p50 prediction interval."""
    bench = json.loads((directory / "bench.json").read_text())
    inside = total = 0
    print(f"{'family':26} {'batch':>5} {'re-measured':>11}  bench p50 [95 % PI]  [95 % CI]")
    for row in bench["rows"]:
        python = ipex_python if row["runtime"] == "ipex" else sys.executable
        measured = remeasure(directory, row, core, python) if row["status"] == "ok" else None
        for batch, ms in (measured or {}).items():
            stats = row["result"]["batches"].get(batch)
            if ms is None or not stats:
                continue
            pi, ci = stats["p50_prediction_ms"], stats["p50_interval_ms"]
            in_pi, in_ci = pi["low"] <= ms <= pi["high"], ci["low"] <= ms <= ci["high"]
            inside, total = inside + in_pi, total + 1
            print(f"{row['family']:26} {batch:>5} {ms:11.3f}  {pi['estimate']:.3f} [{pi['low']:.3f}-{pi['high']:.3f}] "
                  f"[{ci['low']:.3f}-{ci['high']:.3f}] {'inside PI' if in_pi else 'OUTSIDE PI'}"
                  f"{'' if in_ci else ', outside CI'}", flush=True)
    print(f"inside the prediction interval: {inside} of {total}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        path, runtime, engine, *image = sys.argv[2:]
        child(path, runtime, engine, tuple(int(n) for n in image))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a folder `qexport bench` wrote bench.json into")
    parser.add_argument("--core", type=int, default=1, help="the CPU core every child is pinned to")
    parser.add_argument("--ipex-python", default=str(Path(__file__).resolve().parents[2] / ".venv-ipex/bin/python"),
                        help="the interpreter of the IPEX environment, for ipex artifacts (default: the checkout's)")
    arguments = parser.parse_args()
    driver(arguments.directory, arguments.core, arguments.ipex_python)


if __name__ == "__main__":
    main()
