"""ONNX artifacts via ONNX Runtime. Imports only onnxruntime and numpy (never torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from qexport.core.errors import QExportError
from qexport.runtimes.base import Runner, load_failure_message
from qexport.runtimes.settings import ONNXRUNTIME_SETTINGS

DEFAULT_SETTINGS = {setting.name: setting.default for setting in ONNXRUNTIME_SETTINGS}


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    settings: dict[str, str] = DEFAULT_SETTINGS

    def __init__(self, session: ort.InferenceSession, device: str, threads: int | None):
        self.session, self.device, self.threads = session, device, threads
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None, settings=None):
        chosen = {**DEFAULT_SETTINGS, **(settings or {})}
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, chosen["graph_optimization_level"])
        options.execution_mode = getattr(ort.ExecutionMode, chosen["execution_mode"])
        options.add_session_config_entry("session.intra_op.allow_spinning", chosen["intra_op_allow_spinning"])
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise QExportError("ONNX Runtime here has no CUDA execution provider; install onnxruntime-gpu or use --device cpu.")
            providers = ["CUDAExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise QExportError(load_failure_message(path, cls.runtime, err)) from err
        runner = cls(session, device, threads)
        runner.settings = chosen
        return runner

    def prepare(self, batch: np.ndarray) -> dict:
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def run_native(self, native: dict) -> np.ndarray:
        return self.session.run(None, native)[0]

    def to_numpy(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float32)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "version": ort.__version__, "device": self.device,
                "threads": self.threads, "providers": self.session.get_providers(), "settings": dict(self.settings)}


FAILED_NODE = re.compile(r"running (?P<op_type>[\w.]+) node\. Name:'(?P<node>[^']*)'")
STATUS_START = re.compile(r"Status Message:|\[ONNXRuntimeError\][^:]*:[^:]*:[^:]*:")
# What ONNX Runtime's messages carry for its own developers: source paths, C++ signatures, asserts.
SOURCE_NOISE = (re.compile(r"\S+\.(?:h|hpp|cc|cpp|cu|c):\d+"),
                re.compile(r"(?:[\w<>]+::)+~?\w+\([^)]*\)(?:\s*const)?"),
                re.compile(r"[^.]*?\bwas false\."))


@dataclass(frozen=True)
class RunFailure:
    """Why ONNX Runtime stopped a run, read from its message: the node it was running when
    the message names one, and what it said about it without its source paths."""

    op_type: str | None
    node: str | None
    status: str  # '' when the message held nothing but ONNX Runtime's internals

    @classmethod
    def of(cls, err: BaseException) -> "RunFailure":
        text = " ".join(str(err).split())
        found = FAILED_NODE.search(text)
        return cls(found["op_type"] if found else None, found["node"] if found else None, readable_status(text))


def readable_status(text: str, limit: int = 200) -> str:
    """The part of an ONNX Runtime message a user can act on ('Input shape:{3,8}, requested
    shape:{1,2,4}'), without the source file, C++ function and assertion that precede it."""
    starts = list(STATUS_START.finditer(text))
    status = text[starts[-1].end():] if starts else text
    for noise in SOURCE_NOISE:
        status = noise.sub(" ", status)
    return " ".join(status.split()).strip(" .")[:limit]


def quiet_session(model: str | bytes) -> ort.InferenceSession:
    """A CPU session for a build's own check: a failure comes back as the exception alone, not
    also as ONNX Runtime's error log (which names its source files) on stderr."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def first_failing_batch(model: str | bytes, sample_shape: tuple[int, ...],
                        batches: tuple[int, ...]) -> tuple[int, RunFailure] | None:
    """Run the graph on seeded inputs of each batch size; the first that fails, and why.

    A graph exported with a dynamic batch can still hold a size computed from the export's
    example, and then runs at that batch only."""
    session = quiet_session(model)
    name = session.get_inputs()[0].name
    generator = np.random.default_rng(0)
    for batch in batches:
        inputs = generator.standard_normal((batch, *sample_shape), dtype=np.float32)
        try:
            session.run(None, {name: inputs})
        except Exception as err:  # onnxruntime raises its own exception types  # noqa: BLE001
            return batch, RunFailure.of(err)
    return None
