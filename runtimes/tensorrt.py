"""TensorRT engines (``.engine``) through TensorRT's own runtime, on the GPU, with no model code.

An engine holds kernels chosen for one GPU and one TensorRT version: it loads only there (the
manifest's build config records both). Inputs and outputs stay on the GPU between ``prepare``
and ``to_numpy``, so a timed call holds no copy; each call is timed by CUDA events.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qexport.core.errors import QExportError
from qexport.runtimes.base import load_failure_message
from qexport.runtimes.gpu import describe_gpu, synchronised
from qexport.runtimes.torchscript import TorchTensorRunner


class TensorRTRunner(TorchTensorRunner):
    runtime = "tensorrt"
    device = "cuda"  # an engine runs only on the GPU, whatever device is asked

    def __init__(self, engine, path: Path):
        import tensorrt as trt

        self.engine, self.path = engine, path
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.output_dtype = torch.float16 if engine.get_tensor_dtype(self.output_name) == trt.DataType.HALF else torch.float32
        self.gpu_ms: float | None = None  # the last call's GPU time between CUDA events

    @classmethod
    def load(cls, path, **options):  # device, threads, hints: an engine runs on the GPU it was built for
        import tensorrt as trt

        try:
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        except Exception as err:  # TensorRT raises its own types for bad files
            raise QExportError(load_failure_message(Path(path), cls.runtime, err)) from err
        if engine is None:  # another GPU, another TensorRT version, or not an engine at all
            raise QExportError(f"{path} cannot be loaded by TensorRT {trt.__version__} on "
                               f"{torch.cuda.get_device_name()}: an engine runs only on the GPU and TensorRT "
                               "version its manifest records -- rebuild it here with `qexport build --force`.")
        return cls(engine, Path(path))

    def run_native(self, native: torch.Tensor) -> torch.Tensor:
        context = self.context
        context.set_input_shape(self.input_name, tuple(native.shape))
        output = torch.empty(tuple(context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device="cuda")
        context.set_tensor_address(self.input_name, native.data_ptr())
        context.set_tensor_address(self.output_name, output.data_ptr())
        ran, self.gpu_ms = synchronised(lambda: context.execute_async_v3(torch.cuda.current_stream().cuda_stream))
        if not ran:
            raise QExportError(f"TensorRT could not run {self.path.name} at batch {native.shape[0]}; the engine's "
                               "profile holds batches 1 to its build's max_batch (see the manifest).")
        return output

    def describe(self) -> dict:
        import tensorrt as trt

        return {**super().describe(), "version": trt.__version__, **describe_gpu()}
