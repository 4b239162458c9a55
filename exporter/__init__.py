"""Artifact families. Importing this package registers every family (one line each below).

Import order is build order. pt2e comes first on purpose: compiled after an eager-mode int8
``convert`` in the same process, the same pt2e int8 program became a 2-3x slower AOTInductor
package here (2.0 vs 0.8 ms at batch 1; see the README's findings).
"""

from exporter.registry import FAMILIES, BuildContext, BuildOptions, Family, register, select_families

from exporter import pt2e  # noqa: F401,E402  pt2e fp32/int8/int8-QAT → AOTInductor packages
from exporter import torchscript  # noqa: F401,E402  TorchScript fp32/fp16/int8 dynamic/static/QAT
from exporter import onnx  # noqa: F401,E402  ONNX fp32/fp16/int8 (ONNX Runtime)
from exporter import ipex  # noqa: F401,E402  IPEX int8/bf16 (built in the .venv-ipex environment)

__all__ = ["FAMILIES", "BuildContext", "BuildOptions", "Family", "register", "select_families"]
