"""The one place artifact families are declared.

A family module decorates its build function with :func:`register`; ``exporter/__init__.py``
imports each family module once (one line per family module). ``build --all``, the CLI's
``--only`` choices and the tests' parametrisation all read :data:`FAMILIES`.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.training.data import Dataset, Split, calibration_split, normalize
from qexport.core.errors import QExportError
from qexport.training.models import file_stem
from qexport.core.documents import to_json
from qexport.core.options import (BudgetConfig, BuildOptions, FamilyConfig, FixedBatchConfig, QatConfig, SharedConfig,
                             TargetConfig)
from qexport.core.build_records import Calibration, Delegation, Int8Coverage
from qexport.core.manifest import LoadHints, Precision, RuntimeSection, PRECISIONS
from qexport.runtimes.results import EVAL_BATCH
from qexport.core.selection import match_keys
from qexport.core.hardware import CpuRequirement, HostCpu, TargetIsa, host_cpu, native_requirement
from qexport.core.gpu_needs import HostGpu

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
        from qexport.training.train import predict

        with torch.no_grad():
            return predict(self.fresh_model(), split, self.data.mean, self.data.std, EVAL_BATCH)

    @property
    def shared(self) -> SharedConfig:
        """What every family's artifact depends on (seed, subsets, calibration images)."""
        return self.options.shared

    def calibration(self) -> Split:
        return calibration_split(self.data, self.shared.calibration_samples, self.shared.seed)

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
    fixed_batch: int | None = None                  # the one batch size the file takes (None: any)

    @property
    def load_hints(self) -> LoadHints:
        return LoadHints(quantized_engine=self.quantized_engine)


def train_calibration(ctx: BuildContext, samples: int) -> Calibration:
    """The calibration record: always the seeded **train**-split subset."""
    return Calibration(split="train", samples=samples, seed=ctx.shared.seed)


BuildFn = Callable[[BuildContext, FamilyConfig, Path], BuildDetails]


@dataclass(frozen=True)
class BuildKey:
    """What the up-to-date check compares, recorded in every manifest (``build.options``): the
    shared config, the family's own config as JSON, and the family's recipe. A changed option,
    shared or the family's, or a raised recipe, rebuilds the artifact."""

    shared: SharedConfig
    config: dict
    recipe: int


@dataclass(frozen=True)
class Family:
    """A kind of artifact: how to build it, how it is named, which runtime runs it."""

    key: str                 # unique CLI name, e.g. "torchscript-int8-static"
    variant: str             # the file-name part, e.g. "int8-static"
    format: str              # torchscript | onnx | aoti | openvino
    extension: str           # ".torchscript.pt", ".onnx", ".pt2"
    precision: Precision
    runtime: str             # key into runtimes.RUNTIMES
    method: str              # one line: what was done
    build: BuildFn
    config: type = FamilyConfig  # the frozen FamilyConfig dataclass its build function receives
    devices: tuple[str, ...] = ("cpu",)
    cpu_note: str = ""       # why CPU numbers for this family are not representative, if they are not
    build_needs: CpuRequirement | None = None  # CPU features the build itself needs (e.g. IPEX bf16 prepack)
    run_needs: CpuRequirement | None = None    # CPU features the artifact needs wherever it runs
    compiled: bool = False   # holds machine code compiled for --target-cpu (AOTInductor)
    isolate: bool = True     # build in a fresh child process (False: it already builds in another interpreter)
    companions: tuple[str, ...] = ()  # suffixes of files written beside the artifact (OpenVINO: ".bin")
    fallback: bool = False   # honours BuildContext.keep_float: can keep chosen layers in float to meet the budget
    model_support: Callable[[str], str | None] | None = None  # why a model cannot take this family, or None
    recipe: int = 1          # raised when a change to the build changes what it writes: older artifacts then rebuild

    def __post_init__(self) -> None:
        if self.precision in PRECISIONS:  # declared as text: typed here (an unknown one is refused at registration)
            object.__setattr__(self, "precision", Precision(self.precision))

    def build_problem(self, cpu: HostCpu | None = None, gpu: HostGpu | None = None) -> str | None:
        """None when this host can build the family; else 'needs X; this CPU has Y' -- or, for a
        runtime that runs only on an NVIDIA GPU, 'needs X; this host has no NVIDIA GPU'."""
        from qexport.runtimes import gpu_problem

        needs_gpu = gpu_problem(self.runtime, gpu)
        if needs_gpu:
            return needs_gpu
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
    def fixed_batch(self) -> bool:
        """The artifact takes one batch size (its config has a FixedBatchConfig), not any."""
        return issubclass(self.config, FixedBatchConfig)

    @property
    def fine_tuned(self) -> bool:
        """QAT: trains on the train split (so held-out train images are seen), as its config says."""
        return issubclass(self.config, QatConfig)

    def filename(self, model_name: str) -> str:
        return f"{file_stem(model_name)}.{self.variant}{self.extension}"

    def build_file(self, ctx: BuildContext, path: Path) -> BuildDetails:
        """Run the build function with this family's config, filled from the context's options."""
        return self.build(ctx, self.config_of(ctx.options), path)

    def config_of(self, options: BuildOptions) -> FamilyConfig:
        """This family's typed config, filled from what the user asked."""
        return options.config_for(self.config)

    def up_to_date_key(self, options: BuildOptions) -> dict:
        """The up-to-date key (:class:`BuildKey`) as the manifest records it."""
        return to_json(BuildKey(shared=options.shared, config=to_json(self.config_of(options)), recipe=self.recipe))


FAMILIES: dict[str, Family] = {}


def declaration_problem(family: Family) -> str | None:
    """None when the family's declaration is one ``build`` can honour; else one sentence naming
    the wrong part. A config that lacks a section the family's kind needs (the budget for int8,
    the target for compiled code) would build with an option
    missing from its up-to-date key, so a stale artifact would be reused: it fails at import."""
    from qexport.runtimes import RUNTIMES

    named = f"family {family.key!r}"
    if family.key in FAMILIES:
        return f"{named} is registered twice"
    if family.recipe < 1:
        return f"{named} declares recipe {family.recipe}; recipes count from 1"
    if family.precision not in PRECISIONS:
        return f"{named} declares precision {family.precision!r}; choose from {', '.join(PRECISIONS)}"
    if family.runtime not in RUNTIMES:
        return f"{named} declares runtime {family.runtime!r}, which is not declared; choose from {', '.join(sorted(RUNTIMES))}"
    if not (isinstance(family.config, type) and issubclass(family.config, FamilyConfig) and is_dataclass(family.config)
            and family.config.__dataclass_params__.frozen):
        return f"{named} declares config {family.config!r}; declare a frozen dataclass derived from FamilyConfig"
    for needed, why in ((BudgetConfig, "is int8" if family.is_int8 else ""),
                        (TargetConfig, "is compiled" if family.compiled else "")):
        if why and not issubclass(family.config, needed):
            return f"{named} {why}, so its config must include {needed.__name__}"
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
