"""Artifact families. Importing this package registers every family (one line each below).

Import order is the order of ``build --list`` and of builds; it does not change results: every
family builds in its own child process (``isolation.build_in_child``), so global torch state one
family sets (quantized engine, Inductor patches) cannot reach another.
"""

from qexport.exporter.registry import FAMILIES, BuildContext, BuildOptions, Family, register, select_families

from qexport.exporter import pt2e  # noqa: F401,E402  pt2e fp32/int8/int8-QAT → AOTInductor packages
from qexport.exporter import torchscript  # noqa: F401,E402  TorchScript fp32/fp16/int8 dynamic/static/QAT
from qexport.exporter import onnx  # noqa: F401,E402  ONNX fp32/fp16/int8 (ONNX Runtime)
from qexport.exporter import ipex  # noqa: F401,E402  IPEX int8/bf16 (built in the .venv-ipex environment)
from qexport.exporter import openvino  # noqa: F401,E402  OpenVINO IR fp32 / NNCF int8 (optional: qexport[openvino])
from qexport.exporter import executorch  # noqa: F401,E402  ExecuTorch .pte fp32 / int8, XNNPACK (optional: qexport[executorch])
from qexport.exporter import tensorrt_fp16  # noqa: F401,E402  NVIDIA GPU: TensorRT engine from the fp16 ONNX export
from qexport.exporter import tensorrt_int8  # noqa: F401,E402  NVIDIA GPU: TensorRT engine from the Q/DQ int8 ONNX export
from qexport.exporter import onnx_cuda  # noqa: F401,E402  NVIDIA GPU: fp16 ONNX on ONNX Runtime's CUDA provider
from qexport.exporter import pt2e_cuda  # noqa: F401,E402  NVIDIA GPU: fp16 AOTInductor package compiled for CUDA

__all__ = ["FAMILIES", "BuildContext", "BuildOptions", "Family", "register", "select_families"]
