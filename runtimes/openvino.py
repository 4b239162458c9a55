"""OpenVINO IR artifacts (.xml + .bin) via the OpenVINO runtime. Imports only openvino and numpy.

Compiled for one inference thread, one stream and the latency hint, with OpenVINO's own thread
pinning off: the bench worker pins the process itself, and two pinning policies would fight. The
inference precision is set explicitly (f32) and read back from the compiled model: a bf16/f16
request silently falls back to f32 on hosts without support, and the default performance mode may
lower precision on hosts that have it -- the number in a report must say which one ran.
"""

from __future__ import annotations

import numpy as np

from qexport.core.errors import QExportError
from qexport.runtimes.base import Runner, load_failure_message
from qexport.runtimes.settings import OPENVINO_SETTINGS

INFERENCE_PRECISION = "f32"
# qexport's setting names (runtimes.settings.OPENVINO_SETTINGS) as OpenVINO's compile properties
PROPERTIES = {"performance_hint": "PERFORMANCE_HINT", "inference_precision": "INFERENCE_PRECISION_HINT",
              "denormals_optimization": "CPU_DENORMALS_OPTIMIZATION"}
DEFAULT_SETTINGS = {setting.name: setting.default for setting in OPENVINO_SETTINGS if setting.api}


# NNCF and OpenVINO's Python tools send usage data unless opted out; qexport never lets them. NNCF_CI
# is NNCF's documented opt-out; OpenVINO's telemetry lives in convert_model, which qexport never calls.
TELEMETRY_OFF = {"NNCF_CI": "1"}


def telemetry_off() -> None:
    """Opt this process out before NNCF is imported (children get it through foreign.child_env)."""
    import os

    os.environ.update(TELEMETRY_OFF)


class OpenVinoRunner(Runner):
    runtime = "openvino"

    def __init__(self, compiled, device: str, threads: int | None):
        self.compiled, self.device, self.threads = compiled, device, threads
        self.request = compiled.create_infer_request()

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None, settings=None):
        telemetry_off()
        import openvino as ov

        if device != "cpu":
            raise QExportError(f"qexport runs OpenVINO artifacts on the CPU only, not {device}; use --device cpu.")
        core = ov.Core()
        config = {"NUM_STREAMS": "1", "ENABLE_CPU_PINNING": "NO", **properties({**DEFAULT_SETTINGS, **(settings or {})})}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        try:  # read_model finds the .bin beside the .xml; a missing or truncated one fails here
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError with its C++ check text
            raise QExportError(load_failure_message(path, cls.runtime, err)) from err
        return cls(compiled, device, threads)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run_native(self, native: np.ndarray):
        self.request.infer({0: native})
        return self.request.get_output_tensor(0)

    def to_numpy(self, output) -> np.ndarray:
        return np.array(output.data, dtype=np.float32, copy=True)

    def describe(self) -> dict:
        import openvino as ov

        return {"runtime": self.runtime, "version": ov.get_version(), "device": self.device, "threads": self.threads,
                "inference_precision": precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT")),
                "inference_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                "streams": int(self.compiled.get_property("NUM_STREAMS")),
                "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT"))}


def properties(settings: dict[str, str]) -> dict[str, str]:
    """The compile properties for qexport's API settings (environment ones are not OpenVINO's to apply)."""
    return {PROPERTIES[name]: value for name, value in settings.items() if name in PROPERTIES}


def precision_name(value) -> str:
    """'f32', 'bf16', 'f16': OpenVINO returns an ``ov.Type`` (or a string, depending on the property)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
