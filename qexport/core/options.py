"""Build options as typed configs: every option's one default, flag and help, and the config each
family builds from.

Options come in sections, one frozen dataclass per kind of choice (the budget, fine-tuning, the
target CPU...). :class:`SharedConfig` holds what every family's artifact depends on (seed,
evaluation subset, golden samples, calibration images) and is part of every up-to-date key. A
family declares its config as a frozen dataclass made of the sections it reads
(``class OnnxInt8Config(BudgetConfig, TargetConfig, CalibrationMethodConfig)``) and its build
function receives an instance: it cannot read an option it did not declare, and the up-to-date key
is that instance's JSON, so a changed option can never be missed. Each CLI option takes its
default, flag and help from these fields (``config_option`` in ``cli.py``), so no default is written twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from qexport.core.errors import QExportError
from qexport.core.hardware import DEFAULT_TARGET, TARGETS, TargetIsa, host_cpu, int8_may_run_without_vnni, resolve_target
from qexport.core.build_records import DEFAULT_MAX_DROP

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
BUDGET_VERDICTS = ("interval", "estimate")  # what "met" needs: the interval's upper end, or the estimate alone
FLAG = "qexport.option.flag"  # field metadata: the command-line flag that sets it
HELP = "qexport.option.help"  # field metadata: what `--help` says about it
C = TypeVar("C")


def option(default: Any, flag: str | None, help: str) -> Any:
    """A config field with its one default; ``flag`` None: an option with no command-line flag."""
    return dataclasses.field(default=default, metadata={FLAG: flag, HELP: help})


def option_field(section: type, name: str) -> dataclasses.Field:
    """The field ``name`` of ``section``; a name it lacks is a programming error, said plainly."""
    for candidate in fields(section):
        if candidate.name == name:
            return candidate
    raise KeyError(f"{section.__name__} has no option {name!r}")


def option_default(section: type, name: str) -> Any:
    return option_field(section, name).default


def option_flag(section: type, name: str) -> str:
    return option_field(section, name).metadata[FLAG]


def option_help(section: type, name: str) -> str:
    return option_field(section, name).metadata[HELP]


@dataclass(frozen=True)
class FamilyConfig:
    """Base of every family's config: a family with no options of its own builds from this.

    Each section checks its own fields in ``check``; a config composed of several sections runs
    every one of them (a dataclass would run only the first ``__post_init__`` of its bases)."""

    def __post_init__(self) -> None:
        for section in type(self).__mro__:
            if "check" in vars(section):
                vars(section)["check"](self)


@dataclass(frozen=True)
class SharedConfig:
    """What every artifact depends on: part of every family's up-to-date key."""

    seed: int = option(0, "--seed", "Seed for initialisation, shuffling, augmentation and subsets.")
    eval_samples: int | None = option(
        None, "--eval-samples", "Measure accuracy on a seeded subset of the test split (default: all of it).")
    golden_samples: int = option(8, None, "Test images whose inputs and outputs ship as golden data.")
    calibration_samples: int = option(
        512, "--calibration-samples", "Seeded train-split images used to calibrate PTQ families.")

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise QExportError(f"--calibration-samples must be at least 1, got {self.calibration_samples}.")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise QExportError(f"--eval-samples must be at least 1, got {self.eval_samples}.")


@dataclass(frozen=True)
class TargetConfig(FamilyConfig):
    """The deployment CPU class: what compiled code may use, and whether int8 needs 7-bit ranges."""

    target_cpu: str = option(
        DEFAULT_TARGET, "--target-cpu",
        "The deployment CPU class: what compiled (AOTInductor) code may use, and whether x86 int8 (pt2e, ONNX, "
        "IPEX) uses 7-bit ranges for CPUs without VNNI. avx2 (any x86-64 CPU with AVX2, the default), avx512, "
        "or native (everything this build host has; may not run elsewhere).")

    def check(self) -> None:
        resolve_target(self.target_cpu)  # unknown, or beyond this host: one sentence before anything is built

    @property
    def target(self) -> TargetIsa:
        return TARGETS[self.target_cpu]

    @property
    def int8_reduced_range(self) -> bool:
        """Whether x86 int8 uses 7-bit ranges: the target includes CPUs without VNNI."""
        return int8_may_run_without_vnni(self.target, host_cpu())


@dataclass(frozen=True)
class BudgetConfig(FamilyConfig):
    """The accuracy budget every int8 family is held to."""

    max_accuracy_drop: float = option(
        DEFAULT_MAX_DROP, "--max-accuracy-drop",
        "Top-1 points an int8 artifact may lose against fp32, measured on the validation split (images the "
        "model never trained on; never the test split). Over it, pt2e/ONNX/OpenVINO/TorchScript static/ExecuTorch int8 "
        "are rebuilt with the most sensitive layers in float until it fits; a family that cannot fit is not "
        "written. 1.0 ~ MLPerf's 99 %-of-fp32 rule.")
    budget_samples: int = option(
        5000, "--budget-samples",
        "Validation images the accuracy budget is measured on (at most). The drop's paired 95 % interval is "
        "recorded: where int8 and fp32 differ in correctness on 5 % of the images it is about ±0.6 pt on 5000 "
        "images and ±1.4 pt on 1000.")
    budget_verdict: str = option(
        "interval", "--budget-verdict",
        "What 'met' needs: interval (the upper end of the drop's 95 % interval is within the budget: the "
        "artifact plausibly loses no more) or estimate (the point estimate alone; a drop the images cannot "
        "resolve then ships, marked 'met on the estimate only').")

    def check(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 100:  # also refuses NaN
            raise QExportError(f"--max-accuracy-drop is in top-1 points between 0 and 100, got {self.max_accuracy_drop}.")
        if self.budget_samples < 1:
            raise QExportError(f"--budget-samples must be at least 1, got {self.budget_samples}.")
        if self.budget_verdict not in BUDGET_VERDICTS:
            raise QExportError(f"--budget-verdict must be one of {', '.join(BUDGET_VERDICTS)}, got {self.budget_verdict!r}.")


@dataclass(frozen=True)
class QatConfig(FamilyConfig):
    """Quantization-aware fine-tuning: a family whose config has it trains on the train split."""

    qat_epochs: int = option(1, "--qat-epochs", "Fine-tuning epochs of the QAT families.")
    qat_lr: float = option(1e-3, None, "Learning rate of the QAT fine-tune (cosine decay).")

    def check(self) -> None:
        if self.qat_epochs < 1:
            raise QExportError(f"--qat-epochs must be at least 1, got {self.qat_epochs}.")


@dataclass(frozen=True)
class CalibrationMethodConfig(FamilyConfig):
    """How ONNX Runtime's static quantizer turns calibration ranges into scales."""

    calibration_method: str = option("minmax", "--calibration-method",
                                     "ONNX int8 calibration: minmax, entropy or percentile.")

    def check(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise QExportError(
                f"Unknown calibration method {self.calibration_method!r}; choose {', '.join(CALIBRATION_METHODS)}.")


@dataclass(frozen=True)
class FixedBatchConfig(FamilyConfig):
    """The one batch size a fixed-shape program (ExecuTorch) is exported for."""

    executorch_batch: int = option(
        1, "--executorch-batch",
        "The one batch size the ExecuTorch .pte programs take (their input shape is fixed; bench times that batch).")

    def check(self) -> None:
        if self.executorch_batch < 1:
            raise QExportError(f"--executorch-batch must be at least 1, got {self.executorch_batch}.")


@dataclass(frozen=True)
class QatInt8Config(BudgetConfig, QatConfig):
    """A QAT family: held to the budget, fine-tuned on the train split."""


@dataclass(frozen=True)
class TargetedInt8Config(BudgetConfig, TargetConfig):
    """An int8 family whose ranges, or compiled code, depend on --target-cpu."""


SECTIONS: tuple[type, ...] = (TargetConfig, BudgetConfig, QatConfig, CalibrationMethodConfig, FixedBatchConfig)


@dataclass(frozen=True, init=False)
class BuildOptions:
    """What the user asked ``qexport build`` for: the shared config and one instance of each
    section, each checked once. ``BuildOptions(seed=1, qat_epochs=3)`` routes every keyword to the
    section that declares it; families never see this object, only :meth:`config_for`'s answer."""

    shared: SharedConfig
    sections: tuple[FamilyConfig, ...]

    def __init__(self, **answers: Any) -> None:
        known = {f.name for section in (SharedConfig, *SECTIONS) for f in fields(section)}
        unknown = sorted(set(answers) - known)
        if unknown:
            raise QExportError(f"Unknown build option {unknown[0]!r}; choose from {', '.join(sorted(known))}.")

        def picked(section: type) -> dict[str, Any]:
            return {f.name: answers[f.name] for f in fields(section) if f.name in answers}

        object.__setattr__(self, "shared", SharedConfig(**picked(SharedConfig)))
        object.__setattr__(self, "sections", tuple(section(**picked(section)) for section in SECTIONS))

    def config_for(self, config_type: type[C]) -> C:
        """``config_type`` filled from the answers; a field no section declares keeps its default
        (an option only its family knows, with no flag yet)."""
        answers = {f.name: getattr(section, f.name) for section in self.sections for f in fields(section)}
        return config_type(**{f.name: answers[f.name] for f in fields(config_type) if f.name in answers})

    @property
    def target(self) -> TargetIsa:
        """The ``--target-cpu`` answer: what the manifest's CPU requirements are written against."""
        return self.config_for(TargetConfig).target
