"""The sidecar manifest: schema, naming, reading and validation (torch-free: `verify` of an
ONNX artifact must work where only onnxruntime is installed).

Readers (bench, verify) trust only what validates here; unknown schema versions and missing
fields are refused with one sentence rather than half-understood.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qexport.documents import TextEnum, parse, renamed, to_json
from qexport.errors import QExportError
from qexport.preprocessing import Preprocessing

if TYPE_CHECKING:
    from qexport.hardware import CpuRequirement

SCHEMA = "qexport.manifest"
# 2: Evaluation.top1_agreement_with_fp32 is named top1_agreement_with_eager (version 1 files are read
# under the new name), DataInfo records the validation images, and unknown keys are refused.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
INDEX_SCHEMA = "qexport.index"
INDEX_SCHEMA_VERSION = 1


class Precision(TextEnum):
    """The precisions a family may declare; manifests and bench rows record them as this text."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


PRECISIONS = tuple(Precision)


class Verdict(TextEnum):
    """How a measured drop compares with the budget, given its 95 % interval."""

    MET = "met"                                 # the interval's upper end is within the budget
    ESTIMATE_ONLY = "met on the estimate only"  # the estimate is, the upper end is not: the images cannot tell
    MISSED = "missed"                           # the estimate itself is over
    OLDER = ""                                  # a file from before verdicts: its ``met`` judged the estimate
GOLDEN_ATOL = {Precision.FP32: 1e-3, Precision.BF16: 0.15, Precision.FP16: 0.05, Precision.INT8: 0.1}


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".manifest.json")


def golden_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".golden.npz")


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

    cpu: dict | None = None          # a CpuRequirement, see qexport.hardware
    compiled: bool = False
    code: str = ""
    kernels_on_build_host: str = ""

    def cpu_requirement(self) -> "CpuRequirement | None":
        from qexport.hardware import CpuRequirement

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
class Calibration:
    split: str
    samples: int
    seed: int | None = None

    def describe(self) -> str:
        return f"{self.samples} {self.split} images (seed {self.seed})"


@dataclass(frozen=True)
class Int8Coverage:
    """How much of the model runs in int8 (weights, or layers where weights are not counted)."""

    ratio: float
    quantized_weights: int | None = None
    total_weights: int | None = None
    quantized_layers: int | None = None
    layers: int | None = None
    int8_layers: int | None = None
    fused_int8_groups: int | None = None

    @classmethod
    def of_weights(cls, quantized: int, total: int) -> "Int8Coverage":
        return cls(ratio=round(quantized / total, 6) if total else 0.0, quantized_weights=quantized, total_weights=total)

    @classmethod
    def of_layers(cls, quantized: int, total: int) -> "Int8Coverage":
        return cls(ratio=round(quantized / total, 6) if total else 0.0, quantized_layers=quantized, layers=total)


# MLPerf Inference accepts an int8 ResNet50 at 99 % of its fp32 top-1 (0.76 pt of 76.46 %); 1.0 pt is that rule
# rounded up for smaller models and data, and about the noise of a drop measured on 1000 held-out images.
DEFAULT_MAX_DROP = 1.0
VALIDATION_FRACTION = 0.1  # of the train split, set aside by `qexport train` before training for the accuracy budget
VALIDATION_MAX = 5000      # enough to resolve a 1-pt budget where 5 % of images change correctness (±0.6 pt)


@dataclass(frozen=True)
class Delegation:
    """What share of a program a backend delegate runs (ExecuTorch: XNNPACK), and what it left to
    slow portable kernels, by name: a partly delegated program is slow for a reason a team can fix."""

    backend: str
    delegated_ops: int
    portable_ops: int
    delegated_macs: int
    portable_macs: int
    portable_op_names: list[str] = field(default_factory=list)

    @property
    def mac_share(self) -> float:
        """Multiply-adds inside the delegate over all multiply-adds (1.0 when there are none)."""
        total = self.delegated_macs + self.portable_macs
        return self.delegated_macs / total if total else 1.0

    @property
    def op_share(self) -> float:
        total = self.delegated_ops + self.portable_ops
        return self.delegated_ops / total if total else 1.0


def drop_upper_pt(drop_pt: float, ci95_pt: float | None) -> float:
    """The upper end of a drop's 95 % interval -- the most an artifact may plausibly lose -- the
    one formula every verdict, message and report uses (no interval: the estimate itself)."""
    return drop_pt + (ci95_pt or 0.0)


@dataclass(frozen=True)
class BudgetAttempt:
    """One build measured against the budget: how many layers it kept in float and what it lost."""

    kept_float: int
    top1: float
    drop_pt: float
    drop_ci95_pt: float | None = None  # half-width of the paired 95 % interval on drop_pt (same images, both models)

    @property
    def upper_pt(self) -> float:
        return drop_upper_pt(self.drop_pt, self.drop_ci95_pt)


@dataclass(frozen=True)
class AccuracyBudget:
    """The top-1 points an int8 artifact may lose vs fp32, where that was measured (held-out train
    images, never the test split), and what meeting it took: the layers kept in float and the share
    of convolution/linear weights and multiply-accumulates still int8."""

    max_drop_pt: float
    measured_on: str
    samples: int
    seed: int
    fp32_top1: float
    top1: float
    drop_pt: float
    met: bool
    kept_float: list[str] = field(default_factory=list)
    drop_ci95_pt: float | None = None  # half-width of the paired 95 % interval on drop_pt
    int8_weight_share: float | None = None
    int8_mac_share: float | None = None
    attempts: list[BudgetAttempt] = field(default_factory=list)
    ranking: str = ""
    # The verdict on the drop and its interval, and the rule that decided ``met``
    # (--budget-verdict: interval, or estimate). Older files judged the estimate.
    verdict: Verdict = Verdict.OLDER
    rule: str = "estimate"
    unseen: bool = False  # measured on images the fp32 model never trained on (a validation split)

    @property
    def upper_pt(self) -> float:
        """The upper end of the drop's 95 % interval: the most the artifact may plausibly lose."""
        return drop_upper_pt(self.drop_pt, self.drop_ci95_pt)


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


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise QExportError(f"Cannot read manifest {path} ({err.strerror or err}).") from err
    except UnicodeDecodeError as err:
        raise QExportError(f"Manifest {path} is not UTF-8 text; it is not a qexport manifest.") from err
    except json.JSONDecodeError as err:
        raise QExportError(f"Manifest {path} is not valid JSON ({err.msg} at line {err.lineno}).") from err
    return Manifest.from_dict(data, str(path))


def artifact_file(manifest_file: Path, manifest: Manifest) -> Path:
    """The artifact a manifest describes: always beside it (no path traversal)."""
    return Path(manifest_file).parent / manifest.artifact.file


def artifact_paths(manifest_file: Path, manifest: Manifest) -> list[Path]:
    """The artifact and its companion files, all beside the manifest."""
    return [Path(manifest_file).parent / name for name in manifest.artifact.names]


def artifact_problem(manifest_file: Path, manifest: Manifest) -> str | None:
    """None when the artifact and every companion file are present and match the manifest's sha256;
    else one sentence naming the first file that does not (missing, truncated, modified)."""
    from qexport.fsutil import sha256_file

    expected = [manifest.artifact.sha256, *(c.sha256 for c in manifest.artifact.companions)]
    for path, sha256 in zip(artifact_paths(manifest_file, manifest), expected):
        if not path.is_file():
            return f"{path.name} is missing; rebuild it with `qexport build`"
        if sha256_file(path) != sha256:
            return f"{path.name} does not match the sha256 in its manifest (modified, truncated or tampered)"
    return None


def find_manifests(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.manifest.json"))


@dataclass(frozen=True)
class IndexEntry:
    family: str
    file: str
    manifest: str
    format: str
    precision: Precision
    runtime: str
    size_bytes: int
    sha256: str
    top1: float
    model: str

    @classmethod
    def of(cls, manifest_file: Path, manifest: Manifest) -> "IndexEntry":
        return cls(family=manifest.family, file=manifest.artifact.file, manifest=manifest_file.name,
                   format=manifest.format, precision=manifest.precision, runtime=manifest.runtime.name,
                   size_bytes=manifest.artifact.total_size_bytes, sha256=manifest.artifact.sha256,
                   top1=manifest.evaluation.top1, model=manifest.model.name)


@dataclass(frozen=True)
class Failure:
    family: str
    reason: str


@dataclass(frozen=True)
class Index:
    """index.json: the folder's artifacts (every valid manifest) and the last build's failures."""

    model: str
    created: str
    artifacts: list[IndexEntry]
    failed: list[Failure] = field(default_factory=list)
    schema: str = INDEX_SCHEMA
    schema_version: int = INDEX_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return to_json(self)


def read_index(path: Path) -> Index:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise QExportError(f"{path} is not a qexport index ({err}); delete it or rebuild.") from err
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA:
        raise QExportError(f"{path} is not a qexport index (schema {INDEX_SCHEMA}); delete it or rebuild.")
    return parse(Index, data, str(path))


def discover(directory: Path) -> list[tuple[Path, Manifest]]:
    """(manifest path, manifest) for the folder: from index.json when present, else every manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QExportError(f"{directory} is not a folder; pass the folder `qexport build` wrote (default artifacts/).")
    index = directory / "index.json"
    if index.is_file():
        paths = [directory / Path(entry.manifest).name for entry in read_index(index).artifacts]
        say_unlisted(directory, [path for path in find_manifests(directory) if path not in paths])
    else:
        paths = find_manifests(directory)
    if not paths:
        raise QExportError(f"No artifacts in {directory}; run `qexport build --all --out {directory}` first.")
    return [(path, read_manifest(path)) for path in paths]


def say_unlisted(directory: Path, unlisted: list[Path]) -> None:
    """Name the manifests index.json leaves out (copied in after the build, or unreadable when the
    index was written): the folder's index decides what bench, verify and pack take, and leaving
    one out without a word looks like a measurement, a check or a bundle of the whole folder."""
    if not unlisted:
        return
    from qexport.progress import say

    names = ", ".join(path.name for path in unlisted)
    say(f"{directory}/index.json does not list {len(unlisted)} manifest(s) in the folder ({names}), so they are "
        "left out; delete index.json to take every manifest in the folder, or build them there with `qexport build`.")


def cpu_needs(manifest: Manifest) -> tuple["CpuRequirement | None", bool]:
    """(what the artifact needs from the CPU, whether that comes from compiled code).

    Manifests written before requirements were recorded still protect their AOTInductor
    package: it was compiled with -march=native, so it needs the build host's recorded ISA.
    """
    from qexport.hardware import FLAG_LABELS, requirement

    if manifest.requirements is not None:
        return manifest.requirements.cpu_requirement(), manifest.requirements.compiled
    built = manifest.runtime.compiled_with
    if built is not None and built.isa:
        flag_of = {label: flag for flag, label in FLAG_LABELS.items()}
        flags = {flag_of[label] for label in built.isa if label in flag_of}
        return requirement(f"the build host's ISA ({', '.join(built.isa)})", flags), True
    return None, False


def host_problem_for(manifest: Manifest) -> str | None:
    """None when this host's CPU can run the artifact; else one sentence naming what is missing and the fix."""
    from qexport.hardware import host_problem

    needs, compiled = cpu_needs(manifest)
    return host_problem(needs, manifest.artifact.file, compiled)
