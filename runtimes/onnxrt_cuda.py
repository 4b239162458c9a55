"""ONNX artifacts through ONNX Runtime's CUDA execution provider (``onnxruntime-gpu``), on the GPU
whatever device is asked. Its run call copies the input in and the logits out and returns
when the GPU has finished, so a call is synchronised."""

from __future__ import annotations

from qexport.runtimes.onnxrt import OnnxRuntimeRunner


class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    runtime = "onnxruntime-cuda"

    @classmethod
    def load(cls, path, **options):
        return super().load(path, **{**options, "device": "cuda"})
