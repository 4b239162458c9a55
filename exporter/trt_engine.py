"""TensorRT's engine build from an ONNX file, which tensorrt-fp16 (from the fp16 export) and
tensorrt-int8 (from the Q/DQ int8 export) share, and the profile of batch sizes it is built for.
An engine is tied to the GPU and TensorRT version it was built with: both go into its manifest.

TensorRT 11 builds strongly typed networks only: each layer runs in the type the ONNX graph gives
it (float16 after the fp16 conversion, int8 between a QuantizeLinear and a DequantizeLinear), so
the precision is decided by the ONNX file, not by builder flags.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qexport.core.errors import QExportError, first_line
from qexport.core.options import FamilyConfig, option
from qexport.core.build_records import Int8Coverage
from qexport.exporter.onnx_export import onnx_int8_coverage
from qexport.exporter.registry import EVAL_BATCH, BuildContext
from qexport.runtimes.gpu import describe_gpu

ENGINE_NOTE = "a TensorRT engine runs only on the GPU model and TensorRT version recorded in its build config"


@dataclass(frozen=True)
class TensorRtConfig(FamilyConfig):
    """The batch sizes an engine's optimization profile takes (TensorRT tunes its kernels for ``opt_batch``)."""

    opt_batch: int = option(32, None, "The batch TensorRT picks its kernels for.")
    max_batch: int = option(256, None, "The largest batch the engine takes (the build measures at 250).")

    def check(self) -> None:
        if not 1 <= self.opt_batch <= self.max_batch or self.max_batch < EVAL_BATCH:
            raise QExportError(f"A TensorRT profile needs 1 <= opt_batch <= max_batch and max_batch >= {EVAL_BATCH} "
                               f"(the build measures at that batch); got {self.opt_batch} and {self.max_batch}.")


def build_engine(onnx_file: Path, engine_file: Path, image_shape: tuple[int, ...], config: TensorRtConfig) -> dict:
    """Parse ``onnx_file`` (input 'input', dynamic batch), build an engine for batches 1 to
    ``config.max_batch`` of ``image_shape`` (C, H, W) and write it; returns what the manifest records."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 10 asks; 11 always is
    network = builder.create_network(0 if typed is None else 1 << int(typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QExportError(f"TensorRT {trt.__version__} cannot parse the ONNX export: {first_line(errors, 300)}.")
    profile = builder.create_optimization_profile()
    shape = tuple(image_shape)
    profile.set_shape(network.get_input(0).name, (1, *shape), (config.opt_batch, *shape), (config.max_batch, *shape))
    settings = builder.create_builder_config()
    settings.add_optimization_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, settings)
    if serialized is None:
        raise QExportError(f"TensorRT {trt.__version__} could not build an engine from the ONNX export "
                           "(its log above says which layer); leave this family out of the build.")
    engine_file.write_bytes(bytes(serialized))
    return {"tensorrt": trt.__version__, **describe_gpu(), "engine_build_seconds": round(time.perf_counter() - started, 1),
            "profile_batches": {"min": 1, "opt": config.opt_batch, "max": config.max_batch}}


def engine_from(ctx: BuildContext, config: TensorRtConfig, path: Path,
                write_onnx: Callable[[Path], None]) -> tuple[dict, Int8Coverage]:
    """The engine built from the ONNX file ``write_onnx`` writes into a scratch folder: what the
    manifest records, and the int8 share of the weights TensorRT was given."""
    with tempfile.TemporaryDirectory(prefix="qexport-trt-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        write_onnx(onnx_file)
        return build_engine(onnx_file, path, tuple(ctx.example.shape[1:]), config), onnx_int8_coverage(onnx_file)
