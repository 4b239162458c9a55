"""Artifact families. Importing this package registers every family (one line each below)."""

from exporter.registry import FAMILIES, BuildContext, BuildOptions, Family, register, select_families

from exporter import torchscript  # noqa: F401,E402  TorchScript fp32/fp16/int8 dynamic/static/QAT
from exporter import onnx  # noqa: F401,E402  ONNX fp32/fp16/int8 (ONNX Runtime)
from exporter import pt2e  # noqa: F401,E402  pt2e fp32/int8/int8-QAT → AOTInductor packages

__all__ = ["FAMILIES", "BuildContext", "BuildOptions", "Family", "register", "select_families"]
