"""The one place artifact families are declared.

A family module decorates its build function with :func:`register`; ``exporter/__init__.py``
imports each family module once (one line per family module). ``build --all``, the CLI's
``--only`` choices and the tests' parametrisation all read :data:`FAMILIES`.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from qexport.data import Dataset, Split, calibration_split, normalize
from qexport.errors import QExportError
from qexport.models import file_stem
from qexport.manifest import (DEFAULT_MAX_DROP, PRECISIONS, Calibration, Delegation, Int8Coverage, LoadHints,
                              Precision, RuntimeSection)
from qexport.runtimes.results import EVAL_BATCH
from qexport.selection import match_keys
from qexport.hardware import (DEFAULT_TARGET, TARGETS, CpuRequirement, HostCpu, TargetIsa, host_cpu,
                              int8_may_run_without_vnni, native_requirement, resolve_target)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
BUDGET_OPTIONS = ("max_accuracy_drop", "budget_samples", "budget_verdict")  # every int8 family reads them
FINE_TUNE_OPTIONS = ("qat_epochs", "qat_lr")  # every fine-tuning (QAT) family reads them
BUDGET_VERDICTS = ("interval", "estimate")  # what "met" needs: the interval's upper end, or the estimate alone


@dataclass(frozen=True)
class BuildOptions:
    """Options that change what a family produces (and so whether an artifact is up to date)."""

    calibration_samples: int = 512
    calibration_method: str = "minmax"
    qat_epochs: int = 1
    qat_lr: float = 1e-3
    seed: int = 0
    eval_samples: int | None = None  # None: the full test split
    golden_samples: int = 8
    target_cpu: str = DEFAULT_TARGET  # what compiled (AOTInductor) code may use: avx2 | avx512 | native
    max_accuracy_drop: float = DEFAULT_MAX_DROP  # top-1 points an int8 family may lose vs fp32 (held-out train images)
    budget_samples: int = 5000  # validation (else held-out train) images the drop is measured on (budget.paired_drop_ci95_pt)
    budget_verdict: str = "interval"  # "met" needs the drop's 95 % upper end within budget ("estimate": the estimate)
    executorch_batch: int = 1  # the one batch size an ExecuTorch program is exported for

    def __post_init__(self) -> None:
        resolve_target(self.target_cpu)  # unknown, or beyond this host: one sentence before anything is built
        if not 0 <= self.max_accuracy_drop <= 100:  # also refuses NaN
            raise QExportError(f"--max-accuracy-drop is in top-1 points between 0 and 100, got {self.max_accuracy_drop}.")
        if self.budget_samples < 1:
            raise QExportError(f"--budget-samples must be at least 1, got {self.budget_samples}.")
        if self.calibration_samples < 1:
            raise QExportError(f"--calibration-samples must be at least 1, got {self.calibration_samples}.")
        if self.budget_verdict not in BUDGET_VERDICTS:
            raise QExportError(f"--budget-verdict must be one of {', '.join(BUDGET_VERDICTS)}, got {self.budget_verdict!r}.")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise QExportError(
                f"Unknown calibration method {self.calibration_method!r}; choose {', '.join(CALIBRATION_METHODS)}.")
        if self.executorch_batch < 1:
            raise QExportError(f"--executorch-batch must be at least 1, got {self.executorch_batch}.")
        if self.qat_epochs < 1:
            raise QExportError(f"--qat-epochs must be at least 1, got {self.qat_epochs}.")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def target(self) -> TargetIsa:
        """The ``--target-cpu`` choice (checked against the build host in ``__post_init__``)."""
        return TARGETS[self.target_cpu]

    @property
    def int8_reduced_range(self) -> bool:
        """Whether x86 int8 families use 7-bit ranges: the target includes CPUs without VNNI."""
        return int8_may_run_without_vnni(self.target, host_cpu())


@dataclass
class BuildContext:
    """Everything a family's build function may use; families must not mutate ``model``."""

    model_name: str
    model: nn.Module
    data: Dataset
    options: BuildOptions
    checkpoint_sha256: str
    show_progress: bool = True
    notes: list[str] = field(default_factory=list)
    keep_float: tuple[str, ...] = ()  # module names a fallback-capable int8 family must leave in float

    @property
    def example(self) -> torch.Tensor:
        """One normalised test image: shape source for tracing/export (never used for calibration)."""
        return normalize(self.data.test.images[:1], self.data.mean, self.data.std)

    def fresh_model(self) -> nn.Module:
        return copy.deepcopy(self.model).eval()

    def __getstate__(self) -> dict:
        """Pickled for a build child: the model travels as one plain-pickled buffer. Through
        torch.multiprocessing each of its tensors would be one shared-memory descriptor, and a
        fork server passes a new process at most ~250 (efficientnet_b0 has more); the dataset's
        few large tensors still travel through shared memory."""
        return {**self.__dict__, "model": pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "model": pickle.loads(state["model"])})

    def fp32_logits(self, split: Split) -> torch.Tensor:
        """The eager fp32 model's logits on ``split``: what every artifact is compared with."""
        from qexport.train import predict

        with torch.no_grad():
            return predict(self.fresh_model(), split, self.data.mean, self.data.std, EVAL_BATCH)

    def calibration(self) -> Split:
        return calibration_split(self.data, self.options.calibration_samples, self.options.seed)

    def calibration_batches(self, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Normalised float batches from the seeded **train**-split calibration subset."""
        split = self.calibration()
        for start in range(0, len(split), batch_size):
            yield normalize(split.images[start:start + batch_size], self.data.mean, self.data.std)


@dataclass
class BuildDetails:
    """What a family's build function did, beyond writing its file (it goes into the manifest)."""

    config: dict = field(default_factory=dict)      # the settings that produced the file
    notes: list[str] = field(default_factory=list)  # what a deployment team must know about it
    calibration: Calibration | None = None
    int8_coverage: Int8Coverage | None = None
    quantized_engine: str | None = None             # int8 kernels dispatch on it at run time
    fine_tune: list[dict] | None = None             # QAT: the fine-tune history, per epoch
    runtime: RuntimeSection | None = None           # built in the runtime's own environment, which knows its versions
    float_not_found: list[str] = field(default_factory=list)  # --keep-float layers this graph does not name (left int8)
    delegation: Delegation | None = None            # ExecuTorch: what the XNNPACK delegate holds

    @property
    def load_hints(self) -> LoadHints:
        return LoadHints(quantized_engine=self.quantized_engine)


def train_calibration(ctx: BuildContext, samples: int) -> Calibration:
    """The calibration record: always the seeded **train**-split subset."""
    return Calibration(split="train", samples=samples, seed=ctx.options.seed)


BuildFn = Callable[[BuildContext, Path], BuildDetails]


@dataclass(frozen=True)
class Family:
    """A kind of artifact: how to build it, how it is named, which runtime runs it."""

    key: str                 # unique CLI name, e.g. "torchscript-int8-static"
    variant: str             # the file-name part, e.g. "int8-static"
    format: str              # torchscript | onnx | aoti | openvino
    extension: str           # ".torchscript.pt", ".onnx", ".pt2"
    precision: str           # fp32 | fp16 | bf16 | int8
    runtime: str             # key into runtimes.RUNTIMES
    method: str              # one line: what was done
    build: BuildFn
    option_keys: tuple[str, ...] = ()   # BuildOptions fields that change the artifact (checked by register)
    fine_tuned: bool = False  # QAT: trains on the train split (reads FINE_TUNE_OPTIONS; held-out train images are seen)
    devices: tuple[str, ...] = ("cpu",)
    cpu_note: str = ""       # why CPU numbers for this family are not representative, if they are not
    build_needs: CpuRequirement | None = None  # CPU features the build itself needs (e.g. IPEX bf16 prepack)
    run_needs: CpuRequirement | None = None    # CPU features the artifact needs wherever it runs
    compiled: bool = False   # holds machine code compiled for --target-cpu (AOTInductor)
    isolate: bool = True     # build in a fresh child process (False: it already builds in another interpreter)
    companions: tuple[str, ...] = ()  # suffixes of files written beside the artifact (OpenVINO: ".bin")
    fallback: bool = False   # honours BuildContext.keep_float: can keep chosen layers in float to meet the budget
    model_support: Callable[[str], str | None] | None = None  # why a model cannot take this family, or None
    fixed_batch: bool = False  # the artifact takes one batch size (BuildOptions.executorch_batch), not any
    recipe: int = 1          # raised when a change to the build changes what it writes: older artifacts then rebuild

    def build_problem(self, cpu: HostCpu | None = None) -> str | None:
        """None when this host can build the family; else 'needs X; this CPU has Y'."""
        return self.build_needs.problem(cpu or host_cpu()) if self.build_needs else None

    def model_problem(self, model_name: str) -> str | None:
        """None when the family applies to ``model_name``; else why not (a skip, not a failure)."""
        return self.model_support(model_name) if self.model_support else None

    def artifact_needs(self, target: TargetIsa, cpu: HostCpu | None = None) -> CpuRequirement | None:
        """What the built artifact needs on the host it runs on (recorded in its manifest)."""
        if self.compiled:
            return target.needs or native_requirement(cpu)
        return self.run_needs

    @property
    def is_int8(self) -> bool:
        """Held to the accuracy budget."""
        return self.precision == Precision.INT8

    @property
    def read_options(self) -> tuple[str, ...]:
        """Every BuildOptions field that changes this family's artifact: its own declaration, the
        budget's options when it is int8, the fine-tune's when it is QAT."""
        implied = (BUDGET_OPTIONS if self.is_int8 else ()) + (FINE_TUNE_OPTIONS if self.fine_tuned else ())
        return self.option_keys + implied

    def filename(self, model_name: str) -> str:
        return f"{file_stem(model_name)}.{self.variant}{self.extension}"

    def relevant_options(self, options: BuildOptions) -> dict:
        """What the up-to-date check compares: the options this family reads, what every build
        measures, and the family's recipe from 2 on. An artifact written by an older build of the
        family (same options, other code) is then rebuilt, not reused; recipe 1 adds nothing, so
        manifests written before recipes existed stay up to date until their family's recipe is raised."""
        chosen = {key: v for key, v in options.as_dict().items() if key in self.read_options}
        chosen.update(eval_samples=options.eval_samples, golden_samples=options.golden_samples)
        if self.recipe > 1:
            chosen["recipe"] = self.recipe
        return chosen


FAMILIES: dict[str, Family] = {}
OPTION_NAMES = tuple(f.name for f in fields(BuildOptions))


def declaration_problem(family: Family) -> str | None:
    """None when the family's declaration is one ``build`` can honour; else one sentence naming
    the wrong part. An option name that is not a BuildOptions field would silently drop out of the
    up-to-date check, so a stale artifact would be reused: it must fail at import instead."""
    named = f"family {family.key!r}"
    if family.key in FAMILIES:
        return f"{named} is registered twice"
    if family.recipe < 1:
        return f"{named} declares recipe {family.recipe}; recipes count from 1"
    if family.precision not in PRECISIONS:
        return f"{named} declares precision {family.precision!r}; choose from {', '.join(PRECISIONS)}"
    for option in family.option_keys:
        if option not in OPTION_NAMES:
            return (f"{named} declares option {option!r}, which BuildOptions does not have; "
                    f"choose from {', '.join(OPTION_NAMES)}")
        if option in FINE_TUNE_OPTIONS + BUDGET_OPTIONS:
            return (f"{named} declares option {option!r}, which it reads by declaring "
                    f"{'fine_tuned=True' if option in FINE_TUNE_OPTIONS else 'precision int8'} instead")
    return None


def register(key: str, **spec) -> Callable[[BuildFn], BuildFn]:
    """Decorator: ``@register("onnx-int8", variant="int8", format="onnx", ...)``; a declaration
    that names a missing option (or is otherwise wrong) fails here, at import, in one sentence."""

    def decorate(fn: BuildFn) -> BuildFn:
        family = Family(key=key, build=fn, **spec)
        problem = declaration_problem(family)
        if problem:
            raise ValueError(f"{problem}.")
        FAMILIES[key] = family
        return fn

    return decorate


def select_families(only: list[str] | None, cpu: HostCpu | None = None) -> list[Family]:
    """All families, or those named (a family key, or a prefix such as 'onnx' or 'pt2e').

    A family named exactly that this host cannot build is an error (the user asked for it); one
    reached through ``--all`` or a prefix is skipped later with the same sentence.
    """
    if not only:
        return list(FAMILIES.values())
    for name in only:
        problem = FAMILIES[name].build_problem(cpu) if name in FAMILIES else None
        if problem:
            raise QExportError(f"{name}: {problem}; build it on such a host, or leave it out.")
    return [FAMILIES[key] for key in match_keys(only, FAMILIES)]
