"""TensorRT's engine build from an ONNX file, which tensorrt-fp16 (from the fp16 export) and
tensorrt-int8 (from the Q/DQ int8 export) share, and the profile of batch sizes it is built for.
An engine is tied to the GPU and TensorRT version it was built with: both go into its manifest.

TensorRT 11 builds strongly typed networks only: each layer runs in the type the ONNX graph gives
it (float16 after the fp16 conversion, int8 between a QuantizeLinear and a DequantizeLinear), so
the precision is decided by the ONNX file, not by builder flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qexport.core.errors import QExportError, first_line
from qexport.core.options import FamilyConfig, option
from qexport.exporter.registry import EVAL_BATCH
from qexport.runtimes.gpu import describe_gpu


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
