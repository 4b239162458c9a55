"""Runtime settings a deployment team can reproduce: what each runtime may be told besides the
file, how it is told (an environment variable set before the runtime loads, or an option its API
takes), and which values are worth trying on a given CPU.

Each runtime declares its settings with its entry in :data:`qexport.runtimes.RUNTIMES`; its runner
applies the API ones in ``load`` (``settings`` argument) and the harness sets the environment ones
in the worker's environment, before any runtime is imported. ``qexport tune`` tries every value
of every setting, one change from the defaults at a time, and records the winner in the manifest
(:class:`qexport.core.manifest.TunedSettings`).

Torch-free, and free of every runtime: the harness reads it to plan workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qexport.core.errors import QExportError, did_you_mean
from qexport.core.hardware import HostCpu

if TYPE_CHECKING:
    from qexport.core.manifest import Manifest


@dataclass(frozen=True)
class Setting:
    """One thing a runtime may be told, with the values qexport knows for it.

    ``default`` is what qexport runs with when nothing is recorded (and what a tuned value is
    measured against). ``env`` names the environment variable that applies it, ``api`` the call
    or property, with ``{value}`` where the value goes; exactly one of them is set."""

    name: str
    default: str
    values: tuple[str, ...]               # every value the runtime accepts (the default included)
    help: str
    env: str = ""
    api: str = ""
    # the values worth timing on this CPU, besides the default (None: every other value)
    worth_trying: Callable[[HostCpu], tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if bool(self.env) == bool(self.api):
            raise ValueError(f"setting {self.name!r} must be applied by exactly one of env or api")
        if self.default not in self.values:
            raise ValueError(f"setting {self.name!r}: its default {self.default!r} is not one of its values")

    def candidates(self, cpu: HostCpu) -> tuple[str, ...]:
        """The non-default values to time on ``cpu``."""
        chosen = self.worth_trying(cpu) if self.worth_trying else self.values
        return tuple(value for value in chosen if value != self.default and value in self.values)

    def how(self, value: str) -> str:
        """How a team applies ``value`` without qexport: 'ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI' or the API call."""
        return f"{self.env}={value}" if self.env else self.api.replace("{value}", value)


# oneDNN's ISA ladder (ONEDNN_MAX_CPU_ISA values), weakest first, with the cpuinfo flag that
# first makes each rung usable. Capping below the host's best ISA is what turns AMX off.
ONEDNN_LADDER: tuple[tuple[str, str], ...] = (
    ("SSE41", "sse4_1"), ("AVX2", "avx2"), ("AVX512_CORE", "avx512f"), ("AVX512_CORE_VNNI", "avx512_vnni"),
    ("AVX512_CORE_BF16", "avx512_bf16"), ("AVX512_CORE_AMX", "amx_tile"),
)
ISA_CAP_RUNGS_TRIED = 2  # the rungs just below the host's best: further down only loses vector width


def onednn_top(cpu: HostCpu) -> str:
    """The strongest oneDNN ISA this CPU has ('DEFAULT' when not even SSE4.1 is known)."""
    usable = [isa for isa, flag in ONEDNN_LADDER if flag in cpu.flags]
    return usable[-1] if usable else "DEFAULT"


def isa_caps_below_top(cpu: HostCpu) -> tuple[str, ...]:
    """The caps worth timing: the rungs just below this host's best, nearest first."""
    names = [isa for isa, _ in ONEDNN_LADDER]
    top = onednn_top(cpu)
    if top not in names:
        return ()
    below = names[:names.index(top)]
    return tuple(reversed(below))[:ISA_CAP_RUNGS_TRIED]


ONEDNN_ISA_CAP = Setting(
    "onednn_max_cpu_isa", "DEFAULT", ("DEFAULT", *(isa for isa, _ in ONEDNN_LADDER)),
    "The strongest instruction set oneDNN may use; below AVX512_CORE_AMX it keeps AMX off, which at "
    "batch 1 can be faster on small models.", env="ONEDNN_MAX_CPU_ISA", worth_trying=isa_caps_below_top)


def bf16_capable(cpu: HostCpu) -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu.flags)


OPENVINO_SETTINGS = (
    ONEDNN_ISA_CAP,
    Setting("performance_hint", "LATENCY", ("LATENCY", "THROUGHPUT"),
            "OpenVINO's performance hint: how it sizes streams and picks kernels.",
            api='core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "{value}"})'),
    Setting("inference_precision", "f32", ("f32", "bf16"),
            "The precision OpenVINO computes float layers in; bf16 only where the CPU has it.",
            api='core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "{value}"})',
            worth_trying=lambda cpu: ("bf16",) if bf16_capable(cpu) else ()),
    Setting("denormals_optimization", "NO", ("NO", "YES"),
            "Whether OpenVINO flushes denormal floats to zero (faster where they occur).",
            api='core.compile_model(model, "CPU", {"CPU_DENORMALS_OPTIMIZATION": "{value}"})'),
)

ONNXRUNTIME_SETTINGS = (
    Setting("graph_optimization_level", "ORT_ENABLE_ALL",
            ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL"),
            "How far ONNX Runtime rewrites the graph when the session is created.",
            api="options.graph_optimization_level = ort.GraphOptimizationLevel.{value}",
            worth_trying=lambda cpu: ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC")),
    Setting("execution_mode", "ORT_SEQUENTIAL", ("ORT_SEQUENTIAL", "ORT_PARALLEL"),
            "Whether independent branches of the graph run at once.",
            api="options.execution_mode = ort.ExecutionMode.{value}"),
    Setting("intra_op_allow_spinning", "1", ("1", "0"),
            "Whether idle intra-op threads spin waiting for work (0: they sleep, saving a core).",
            api='options.add_session_config_entry("session.intra_op.allow_spinning", "{value}")'),
)

EXECUTORCH_SETTINGS = (
    Setting("threadpool_size", "1", ("1", "2", "4"),
            "Threads in ExecuTorch's pool (qexport's default: the bench's --threads, 1).",
            api="_unsafe_reset_threadpool({value})  # before loading the program",
            worth_trying=lambda cpu: ("2",)),
)

TORCH_ONEDNN_SETTINGS = (ONEDNN_ISA_CAP,)  # TorchScript, AOTInductor and IPEX int8/bf16 kernels run on oneDNN


def settings_of(runtime: str) -> tuple[Setting, ...]:
    """What ``runtime`` declares (nothing for an unknown runtime: it cannot be tuned)."""
    from qexport.runtimes import RUNTIMES

    entry = RUNTIMES.get(runtime)
    return entry.settings if entry is not None else ()


def check_settings(runtime: str, chosen: Mapping[str, str]) -> None:
    """An unknown setting or a value the runtime does not take: one sentence with the known ones."""
    declared = {setting.name: setting for setting in settings_of(runtime)}
    for name, value in chosen.items():
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise QExportError(f"{runtime} has no setting {name!r}{did_you_mean(name, declared)}; "
                               f"its settings: {known}.")
        if value not in declared[name].values:
            raise QExportError(f"{runtime} setting {name} does not take {value!r}; known values: "
                               f"{', '.join(declared[name].values)}.")


def environment_for(runtime: str, chosen: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that apply ``chosen`` (set in a worker before the runtime loads)."""
    return {setting.env: chosen[setting.name] for setting in settings_of(runtime)
            if setting.env and setting.name in chosen and chosen[setting.name] != setting.default}


def api_part(runtime: str, chosen: Mapping[str, str]) -> dict[str, str]:
    """The settings a runner applies itself, through its runtime's API."""
    return {setting.name: chosen[setting.name] for setting in settings_of(runtime)
            if setting.api and setting.name in chosen}


def how_to_apply(runtime: str, chosen: Mapping[str, str]) -> list[str]:
    """Each non-default setting as a team applies it: environment variables, then API calls."""
    return [setting.how(chosen[setting.name]) for setting in settings_of(runtime)
            if setting.name in chosen and chosen[setting.name] != setting.default]


def one_change_candidates(runtime: str, cpu: HostCpu) -> list[dict[str, str]]:
    """Every setting the tuner times on ``cpu``: the defaults changed in one setting at a time.
    (Changing one at a time keeps each kept change backed by its own paired measurement.)"""
    return [{setting.name: value} for setting in settings_of(runtime) for value in setting.candidates(cpu)]


def describe(chosen: Mapping[str, str]) -> str:
    """'defaults' or 'onednn_max_cpu_isa=AVX2, performance_hint=THROUGHPUT' (reports)."""
    return ", ".join(f"{name}={value}" for name, value in sorted(chosen.items())) or "defaults"


@dataclass(frozen=True)
class Applied:
    """The settings each batch size of one artifact runs with on this host, and what the report
    says about them ('' when the artifact was never tuned)."""

    by_batch: dict[int, dict[str, str]]
    note: str = ""

    def groups(self) -> list[tuple[dict[str, str], list[int]]]:
        """Batch sizes that share settings, in order: each group runs in its own worker, since an
        environment variable holds for a whole process."""
        grouped: list[tuple[dict[str, str], list[int]]] = []
        for batch, chosen in self.by_batch.items():
            same = next((group for group in grouped if group[0] == chosen), None)
            if same:
                same[1].append(batch)
            else:
                grouped.append((chosen, [batch]))
        return grouped


def recorded_settings(manifest: "Manifest", cpu: HostCpu, batch_sizes: list[int]) -> Applied:
    """What tuning recorded for this CPU class, per batch size; defaults where nothing was recorded,
    where it was recorded on another CPU class, or where this qexport no longer knows a setting (the
    note says which; a bench never fails over it)."""
    defaults = {batch: {} for batch in batch_sizes}
    if not manifest.runtime_settings:
        return Applied(defaults)
    here = cpu.isa_line()
    mine = {t.batch_size: t for t in manifest.runtime_settings if t.cpu_class == here}
    if not mine:
        elsewhere = sorted({t.cpu_class for t in manifest.runtime_settings})
        return Applied(defaults, f"settings tuned on {' / '.join(elsewhere)} not applied: this host is {here} "
                                 "(defaults used; `qexport tune` here records its own)")
    by_batch: dict[int, dict[str, str]] = {}
    for batch in batch_sizes:
        chosen = dict(mine[batch].settings) if batch in mine else {}
        try:
            check_settings(manifest.runtime.name, chosen)
        except QExportError as err:
            return Applied(defaults, f"recorded settings not applied ({err}) -- defaults used")
        by_batch[batch] = chosen
    said = "; ".join(f"batch {batch}: {' '.join(how_to_apply(manifest.runtime.name, chosen)) or 'defaults'}"
                     + ("" if batch in mine else " (not tuned)") for batch, chosen in by_batch.items())
    return Applied(by_batch, f"tuned settings for {here}: {said}")
