"""Independent re-measurement of a bench directory: one fresh process per artifact, each loaded with
its runtime's own documented API (no qexport code), one thread pinned to one core, the median of
one 2-second window per batch size after a warm-up. Compares with bench.json's prediction interval.

usage: python docs/results/remeasure.py DIR   (DIR holds bench.json; one child per artifact, taskset -c 1)
       python docs/results/remeasure.py --one FILE RUNTIME ENGINE   (the child)
"""
import json, os, subprocess, sys, time
BATCHES = (1, 32, 128)

def child(path, runtime, engine):
    import numpy as np
    rng = np.random.default_rng(0)
    def timed(call, seconds):
        for _ in range(20 if seconds < 3 else 3):
            call()
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 10:
            t = time.perf_counter_ns(); call(); times.append(time.perf_counter_ns() - t)
        return float(np.median(times)) / 1e6
    out = {}
    if runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]); name = s.get_inputs()[0].name
        make = lambda b: (lambda x=rng.standard_normal((b, 3, 32, 32), dtype=np.float32): s.run(None, {name: x}))
    elif runtime == "openvino":
        import openvino as ov
        c = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})
        req = c.create_infer_request()
        make = lambda b: (lambda x=rng.standard_normal((b, 3, 32, 32), dtype=np.float32): req.infer({0: x}))
    elif runtime == "executorch":
        import torch
        from executorch.runtime import Runtime
        torch.set_num_threads(1)
        m = Runtime.get().load_program(path).load_method("forward")
        def make(b):
            x = torch.randn(b, 3, 32, 32)
            return lambda: m.execute([x])
    else:
        import torch
        torch.set_num_threads(1)
        if engine: torch.backends.quantized.engine = engine
        model = torch._inductor.aoti_load_package(path) if runtime == "aoti" else torch.jit.load(path)
        def make(b):
            x = torch.randn(b, 3, 32, 32)
            def call():
                with torch.inference_mode():
                    return model(x)
            return call
    for b in BATCHES:
        try:
            out[str(b)] = timed(make(b), 2.0 if b == 1 else 4.0)
        except Exception as err:  # e.g. a .pte exported for batch 1 only
            print(f"batch {b}: {err}", file=sys.stderr)
            out[str(b)] = None
    print(json.dumps(out))

def driver(directory):
    bench = json.load(open(os.path.join(directory, "bench.json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    inside = total = 0
    print(f"{'family':26} {'batch':>5} {'re-measured':>11}  bench p50 [95 % PI]  [95 % CI]")
    for row in bench["rows"]:
        if row["status"] != "ok":
            continue
        m = json.load(open(os.path.join(directory, row["file"] + ".manifest.json")))
        engine = (m.get("runtime") or {}).get("quantized_engine") or ""
        res = subprocess.run(["taskset", "-c", "1", sys.executable, __file__, "--one", os.path.join(directory, row["file"]), row["runtime"], engine],
                             capture_output=True, text=True, env=env)
        measured = json.loads(res.stdout.strip().splitlines()[-1])
        for b, ms in measured.items():
            stats = row["result"]["batches"].get(b)
            if ms is None or not stats:
                continue
            pi, ci = stats["p50_prediction_ms"], stats["p50_interval_ms"]
            ok = pi["low"] <= ms <= pi["high"]
            inside += ok; total += 1
            print(f"{row['family']:26} {b:>5} {ms:11.3f}  {pi['estimate']:.3f} [{pi['low']:.3f}-{pi['high']:.3f}] "
                  f"[{ci['low']:.3f}-{ci['high']:.3f}] {'inside PI' if ok else 'OUTSIDE PI'}"
                  f"{'' if ci['low'] <= ms <= ci['high'] else ', outside CI'}", flush=True)
    print(f"inside the prediction interval: {inside} of {total}")

if __name__ == "__main__":
    if sys.argv[1] == "--one":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        driver(sys.argv[1])
