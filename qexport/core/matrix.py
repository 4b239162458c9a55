"""The compatibility matrix as a document: what `qexport zoo` was asked (ZooOptions), each
architecture's row and each architecture × family cell, written to compatibility.json and read
back typed. Shared by the zoo, which fills it, and its report, which renders it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.documents import TextEnum, parse, renamed
from qexport.core.build_records import Verdict
from qexport.core.options import SharedConfig, option
from qexport.core.preprocessing_flags import PreprocessingFlags

MATRIX_JSON = "compatibility.json"
MATRIX_MD = "compatibility.md"
SCHEMA = "qexport-compatibility"
SCHEMA_VERSION = 1

# The architectures the published matrix covers: the ones vision teams most often train with timm,
# CNNs and transformers, small enough to train briefly on a CPU; smallest first, so an interrupted
# run has covered the most architectures (the matrix is rewritten after each).
DEFAULT_MODELS = (
    "timm:regnety_002", "timm:mobilenetv4_conv_small", "timm:convnext_atto", "timm:efficientvit_m0",
    "timm:ghostnet_100", "timm:mobilenetv3_large_100", "timm:efficientnet_b0", "timm:fastvit_t8",
    "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:levit_128s", "timm:resnet50",
)


@dataclass(frozen=True)
class ZooOptions:
    """How small the matrix's training, builds and rounds are (every field is written with it)."""

    models: tuple[str, ...] = option(
        DEFAULT_MODELS, "--models", "Comma-separated architectures (timm:<name> or torchvision names). Default: the "
        f"{len(DEFAULT_MODELS)} timm architectures of the published matrix.")
    families: tuple[str, ...] | None = option(  # None: every registered family
        None, "--only", "Comma-separated families or prefixes (default: every family).")
    data: str = "cifar10"
    image_size: int | None = None
    train_samples: int = option(5000, "--train-samples", "Seeded train images each architecture trains on (a tenth "
                                "held out for the accuracy budget).")
    test_samples: int = option(1000, "--test-samples", "Seeded test images each artifact is scored on.")
    epochs: int = option(2, "--epochs", "Training epochs per architecture: enough for the int8 drop to mean "
                         "something, not for accuracy.")
    calibration_samples: int = option(128, "--calibration-samples", "Seeded train images the int8 families calibrate on.")
    max_accuracy_drop: float = option(1.0, "--max-accuracy-drop", "Top-1 points an int8 artifact may lose on the "
                                      "held-out images; layers are kept in float until it does.")
    budget_verdict: str = option("estimate", "--budget-verdict", "What 'met' needs: estimate (the drop's point "
                                 "estimate; a few hundred held-out images cannot resolve 1 pt) or interval.")
    rounds: int = option(3, "--rounds", "Batch-1 rounds per artifact, each a fresh pinned process.")
    min_seconds: float = option(0.2, "--min-seconds", "Minimum timed seconds per round.")
    jobs: int = option(2, "--jobs", "Families built at once.")
    seed: int = SharedConfig.seed
    # the preprocessing flags every architecture trains under (e.g. --resize 224x224 for the 224 px
    # matrix); none given: each trains at the data's own size, as `qexport train` would
    preprocessing: PreprocessingFlags = field(default_factory=PreprocessingFlags)


@dataclass(frozen=True)
class ClusterOptions:
    """Where `qexport zoo` and `qexport bench` run when a Ray cluster does the work (the [ray] extra)."""

    address: str | None = option(
        None, "--ray", "Run on the Ray cluster at this address (HOST:PORT as `ray start --head` prints it, or auto "
        "on a node of it). Needs `pip install 'qexport\\[ray]'`.")
    cpus_per_task: int = option(
        2, "--cpus-per-task", "zoo --ray: CPUs each architecture's task reserves on its node while it trains, builds "
        "and times; give a node's whole CPU count so nothing else runs beside its timing.")
    per_cpu_class: bool = option(
        False, "--per-cpu-class", "bench --ray: bench on one node of each CPU class (the ISA line `qexport info` "
        "prints, or a node's qexport-cpu-class label) and write one section per class plus a cross-class table.")
    cpu_classes: tuple[str, ...] | None = option(
        None, "--cpu-class", "bench --per-cpu-class: only these classes, comma-separated (default: every class).")


@dataclass(frozen=True)
class MeasuredOn:
    """Where a row of results was produced: recorded with every cell a cluster measured."""

    node: str
    cpu_class: str
    cpu: str
    libraries: dict[str, str | None] = field(default_factory=dict)


class CellStatus(TextEnum):
    """A matrix cell's outcome (an up-to-date artifact is a built cell, marked reused)."""

    BUILT = "built"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Cell:
    """One architecture × family: built, skipped or failed, and what it cost where it was built."""

    model: str
    family: str
    status: CellStatus
    reason: str = ""
    precision: str = ""
    int8_drop_pt: float | None = None       # on the held-out budget images, paired against fp32
    int8_drop_ci95_pt: float | None = None  # half-width of that drop's paired 95 % interval
    budget_verdict: Verdict = Verdict.OLDER  # OLDER: no budget (not int8, or failed before one was measured)
    # int8: the share of test images where its top-1 class is the eager fp32 model's; on a briefly
    # trained model with flat logits a drop within budget can hide an int8 model that disagrees
    # top-1 agreement with the eager model (the manifest's top1_agreement_with_eager); compatibility.json
    # files written before the rename called it agreement_with_fp32, read under that name still.
    agreement_with_eager: float | None = renamed("agreement_with_fp32", default=None)
    top1: float | None = None               # on the test subset, in the artifact's own runtime
    p50_ms: float | None = None             # batch 1
    vs_best_fp32: float | None = None       # batch-1 speed-up over the architecture's fastest fp32 artifact
    vs_best_fp32_low: float | None = None
    vs_best_fp32_high: float | None = None
    reused: bool = False  # up to date from an earlier run: its build time is not in this run's


@dataclass(frozen=True)
class ModelRow:
    """What each architecture was trained to before its families were built."""

    model: str
    image_size: int
    fp32_top1: float | None = None
    best_fp32: str = ""
    problem: str = ""  # the one sentence when the architecture itself could not be trained or loaded
    reused_checkpoint: bool = False  # trained by an earlier run: its training time is not in this run's
    preprocessing: str = ""  # the contract it trained under and every cell was built and scored with
    measured_on: MeasuredOn | None = None  # the cluster node that trained, built and timed it (None: this host)


@dataclass(frozen=True)
class Matrix:
    created: str
    command: str
    cpu: str
    isa: list[str]
    libraries: dict[str, str | None]
    options: ZooOptions
    models: list[ModelRow] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    seconds: float = 0.0
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def cell(self, model: str, family: str) -> Cell | None:
        return next((c for c in self.cells if c.model == model and c.family == family), None)


def read_matrix(path: Path) -> Matrix:
    return parse(Matrix, json.loads(Path(path).read_text()), str(path))
