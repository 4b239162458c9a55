"""What a build did to and measured about an artifact, as its manifest records it: calibration,
int8 coverage, an ExecuTorch delegation, and the accuracy budget with its verdict (torch-free).
The budget's defaults live here too, with the one formula for a drop's upper bound."""

from __future__ import annotations

from dataclasses import dataclass, field

from qexport.core.documents import TextEnum
from qexport.core.errors import QExportError


class Verdict(TextEnum):
    """How a measured drop compares with the budget, given its 95 % interval."""

    MET = "met"                                 # the interval's upper end is within the budget
    ESTIMATE_ONLY = "met on the estimate only"  # the estimate is, the upper end is not: the images cannot tell
    MISSED = "missed"                           # the estimate itself is over
    OLDER = ""                                  # a file from before verdicts: its ``met`` judged the estimate


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


class OverBudget(QExportError):
    """An int8 build refused because its artifact loses more than the budget allows. The message
    is the user's one sentence; ``budget`` keeps the measured drop, so that a report can tell a
    miss it can trust from one on a model too weak for its drop to mean anything."""

    def __init__(self, message: str, budget: AccuracyBudget):
        super().__init__(message)
        self.budget = budget

    def __reduce__(self):
        """Pickled with its budget and notes, as any exception that may cross a process boundary
        (a Ray task's result, a build child's answer) must be: the default keeps only the message."""
        return type(self), (str(self), self.budget), self.__dict__
