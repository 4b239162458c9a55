"""ONNX artifacts via ONNX Runtime. Imports only onnxruntime and numpy (never torch)."""

from __future__ import annotations


import numpy as np
import onnxruntime as ort

from qexport.errors import QExportError
from qexport.runtimes.base import Runner, load_failure_message


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, device: str, threads: int | None):
        self.session, self.device, self.threads = session, device, threads
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise QExportError("ONNX Runtime here has no CUDA execution provider; install onnxruntime-gpu or use --device cpu.")
            providers = ["CUDAExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise QExportError(load_failure_message(path, cls.runtime, err)) from err
        return cls(session, device, threads)

    def prepare(self, batch: np.ndarray) -> dict:
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def run_native(self, native: dict) -> np.ndarray:
        return self.session.run(None, native)[0]

    def to_numpy(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "version": ort.__version__, "device": self.device,
                "threads": self.threads, "providers": self.session.get_providers()}
