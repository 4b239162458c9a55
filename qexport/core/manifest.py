"""The sidecar manifest's schema and its validation (torch-free: `verify` of an ONNX artifact must
work where only onnxruntime is installed). Its files' names and reading live in artifact_files.py,
the folder's index in index.py, the build's records in build_records.py, CPU needs in cpu_needs.py.

Readers (bench, verify) trust only what validates here; unknown schema versions and missing
fields are refused with one sentence rather than half-understood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qexport.core.documents import TextEnum, parse, renamed, to_json
from qexport.core.errors import QExportError
from qexport.core.build_records import AccuracyBudget, Calibration, Delegation, Int8Coverage
from qexport.core.preprocessing import Preprocessing

if TYPE_CHECKING:
    from qexport.core.hardware import CpuRequirement

SCHEMA = "qexport.manifest"
# 2: Evaluation.top1_agreement_with_fp32 is named top1_agreement_with_eager (version 1 files are read
# under the new name), DataInfo records the validation images, and unknown keys are refused.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)


class Precision(TextEnum):
    """The precisions a family may declare; manifests and bench rows record them as this text."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


PRECISIONS = tuple(Precision)


GOLDEN_ATOL = {Precision.FP32: 1e-3, Precision.BF16: 0.15, Precision.FP16: 0.05, Precision.INT8: 0.1}


@dataclass(frozen=True)
class FileRecord:
    """A plain file name beside the manifest (never a path), its size and sha256."""

    file: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ArtifactFile(FileRecord):
    companions: list[FileRecord] = field(default_factory=list)  # files it cannot load without (an IR's .bin)

    @property
    def total_size_bytes(self) -> int:
        """What a deployment ships: the file and its companions."""
        return self.size_bytes + sum(c.size_bytes for c in self.companions)

    @property
    def names(self) -> list[str]:
        return [self.file, *(c.file for c in self.companions)]


@dataclass(frozen=True)
class CompiledWith:
    """What compiled code (AOTInductor) was built with: it runs only under the same torch and CPU."""

    torch: str | None = None
    machine: str | None = None
    cpu: str | None = None
    isa: list[str] = field(default_factory=list)
    torchao: str | None = None


@dataclass(frozen=True)
class RuntimeSection:
    name: str
    requires: dict[str, str] = field(default_factory=dict)        # package -> version range
    tested_with: dict[str, str | None] = field(default_factory=dict)
    compiled_with: CompiledWith | None = None
    quantized_engine: str | None = None
    environment: str | None = None   # a runtime with its own Python environment (IPEX)
    load: str | None = None          # a loading trap a deployment team must know


@dataclass(frozen=True)
class Requirements:
    """What the artifact needs from the CPU it runs on (checked before loading: never a SIGILL)."""

    cpu: dict | None = None          # a CpuRequirement, see qexport.core.hardware
    compiled: bool = False
    code: str = ""
    kernels_on_build_host: str = ""

    def cpu_requirement(self) -> "CpuRequirement | None":
        from qexport.core.hardware import CpuRequirement

        return CpuRequirement.from_dict(self.cpu) if self.cpu else None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    num_classes: int
    checkpoint_sha256: str


@dataclass(frozen=True)
class DataInfo:
    """The data the artifact was built and measured with (``Dataset.describe()``)."""

    name: str
    classes: list[str]
    image_size: list[int]
    mean: list[float]
    std: list[float]
    source: str = ""
    synthetic: bool = False
    train_samples: int = 0
    test_samples: int = 0
    validation_samples: int = 0  # images in the validation split the accuracy budget draws on (0: none)
    validation: str = ""         # where they came from (--val-dir, the checkpoint's held-out images)
    fingerprint: str = ""
    note: str = ""

    @property
    def source_kind(self) -> str:
        """cifar10 / synthetic / imagefolder: how bench loads the same data again."""
        return self.name if self.name in ("cifar10", "synthetic") else "imagefolder"


@dataclass(frozen=True)
class InputSpec:
    shape: list[int | str]           # ["batch", 3, H, W]
    mean: list[float]
    std: list[float]
    name: str = "input"
    dtype: str = "float32"
    layout: str = "NCHW"
    dynamic_axes: list[str] = field(default_factory=lambda: ["batch"])
    value_range_before_normalization: list[float] = field(default_factory=lambda: [0.0, 1.0])
    preprocess: str = "x = (rgb_uint8 / 255 - mean) / std, channels first"
    # The whole contract, image file to tensor (None in manifests from before it was recorded:
    # those squashed every image to the input size, see ``contract``)
    preprocessing: Preprocessing | None = None

    @property
    def contract(self) -> Preprocessing:
        """How an image file becomes this input; for an older manifest, the squashing resize to
        the input size those builds applied."""
        if self.preprocessing is not None:
            return self.preprocessing
        return Preprocessing(mean=list(self.mean), std=list(self.std), resize=self.image_size[0], resize_mode="exact",
                             source="recorded before preprocessing was: the image squashed to the input size")

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size a fixed-shape program (ExecuTorch) takes; None when any batch runs."""
        return None if "batch" in self.dynamic_axes or isinstance(self.shape[0], str) else int(self.shape[0])

    def serves(self, batch: int) -> bool:
        """Whether one call takes a batch of ``batch`` (a fixed-shape program takes only its own)."""
        return self.fixed_batch in (None, batch)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the NCHW input."""
        _, _, height, width = self.shape
        return int(height), int(width)


@dataclass(frozen=True)
class OutputSpec:
    shape: list[int | str]
    classes: list[str]
    name: str = "logits"
    dtype: str = "float32"


@dataclass(frozen=True)
class Evaluation:
    """Accuracy at build time, always on the **test** split, in the artifact's own runtime."""

    samples: int
    top1: float
    fp32_reference_top1: float
    # the share of test images where the artifact's top-1 class is the eager fp32 model's (not
    # another artifact's: bench's agreement_with_baseline_artifact is that)
    top1_agreement_with_eager: float = renamed("top1_agreement_with_fp32")
    max_abs_logit_diff: float
    split: str = "test"
    device: str = "cpu"

    @property
    def change_pt(self) -> float:
        """Top-1 change against the eager fp32 model, in percentage points (negative: lost)."""
        return (self.top1 - self.fp32_reference_top1) * 100


@dataclass(frozen=True)
class Golden:
    file: str
    sha256: str
    samples: int
    atol: float
    raw_image: bool = False  # the npz also holds one test image's file bytes (``raw_image``): inputs[0] from it


@dataclass(frozen=True)
class BuildRecord:
    seconds: float
    options: dict
    created: str
    libraries: dict[str, str | None]
    cpu: str
    isa: list[str]
    qexport_version: str
    git_commit: str | None = None
    quantized_engine: str | None = None
    fine_tune: list[dict] | None = None


@dataclass(frozen=True)
class TunedSettings:
    """What `qexport tune` kept for one batch size on one CPU class: the runtime settings measured
    faster than the defaults (none: the defaults won), and by how much, paired round by round."""

    cpu_class: str                # the ISA line `qexport info` prints, e.g. 'AVX2' (HostCpu.isa_line)
    batch_size: int
    settings: dict[str, str]      # setting name -> value (runtimes.settings); empty: the defaults
    speedup: float = 1.0          # the defaults' p50 / these settings' p50 (1.0: the defaults won)
    speedup_low: float | None = None  # its 95 % interval (None: the defaults won, nothing to bound)
    speedup_high: float | None = None
    rounds: int = 0
    measured: str = ""            # when (UTC date)
    cpu: str = ""                 # the CPU model it was measured on


@dataclass(frozen=True)
class Manifest:
    """The sidecar a deployment team trusts: what the artifact is, needs, and measured at build time."""

    artifact: ArtifactFile
    family: str
    format: str
    precision: Precision
    runtime: RuntimeSection
    model: ModelInfo
    data: DataInfo
    input: InputSpec
    output: OutputSpec
    evaluation: Evaluation
    golden: Golden
    build: BuildRecord
    method: str = ""
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    requirements: Requirements | None = None
    synthetic: bool = False
    calibration: Calibration | None = None
    int8_coverage: Int8Coverage | None = None
    accuracy_budget: AccuracyBudget | None = None
    delegation: Delegation | None = None
    runtime_settings: list[TunedSettings] = field(default_factory=list)  # written by `qexport tune`
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    @property
    def float_layers(self) -> int:
        """Layers the accuracy budget kept in float (0 when none, or no budget applies)."""
        return len(self.accuracy_budget.kept_float) if self.accuracy_budget else 0

    @property
    def int8_weight_share(self) -> float | None:
        """Share of convolution/linear weights stored int8: the budget's count where it made one,
        else the coverage ratio when that counts weights (some backends count layers instead)."""
        if self.accuracy_budget and self.accuracy_budget.int8_weight_share is not None:
            return self.accuracy_budget.int8_weight_share
        coverage = self.int8_coverage
        return coverage.ratio if coverage and coverage.total_weights is not None else None

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """The manifest if it is one this version understands; otherwise one sentence."""
        if not isinstance(data, dict):
            raise QExportError(f"{source} is not a JSON object; it is not a qexport manifest.")
        if data.get("schema") != SCHEMA:
            raise QExportError(f"{source} is not a qexport manifest (schema {data.get('schema')!r}).")
        if data.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise QExportError(
                f"{source} has manifest schema version {data.get('schema_version')!r}; this qexport reads "
                f"version {' or '.join(map(str, READABLE_SCHEMA_VERSIONS))} -- rebuild the artifact or upgrade qexport.")
        manifest = parse(cls, data, source)
        for name in manifest.artifact.names:
            if not name or Path(name).name != name or name in (".", ".."):
                raise QExportError(
                    f"{source} names artifact file {name!r}; only a plain file name beside the manifest is allowed.")
        return manifest

    def to_dict(self) -> dict:
        return to_json(self)

    @property
    def load_hints(self) -> "LoadHints":
        return LoadHints(quantized_engine=self.build.quantized_engine, compiled_with=self.runtime.compiled_with)


@dataclass(frozen=True)
class LoadHints:
    """What a runner must know to load an artifact right, beyond the file: the int8 engine its
    kernels dispatch on (a process-global torch setting) and what compiled code was built with."""

    quantized_engine: str | None = None
    compiled_with: CompiledWith | None = None

    def to_dict(self) -> dict:
        return to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> "LoadHints":
        return parse(cls, data or {}, "load hints")


