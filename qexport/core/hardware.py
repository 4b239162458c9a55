"""What a CPU can run, what an artifact needs, and whether the two meet (torch-free).

The build host and the deployment host differ by definition. This module answers three
questions without importing a runtime, so nothing is ever loaded on a CPU that would die with
SIGILL:

* which instruction-set extensions this host has (``/proc/cpuinfo`` flags);
* what a family needs to build or run (:class:`CpuRequirement`, declared once per family or
  runtime);
* what a compiled artifact needs (:class:`TargetIsa`, the ``--target-cpu`` choice recorded in
  its manifest), and whether this host has it (:func:`host_problem`).

``QEXPORT_FAKE_CPU_FLAGS`` (space- or comma-separated cpuinfo flags) makes qexport *believe* the
host has exactly those flags: it exists so that the decision logic can be exercised for the
other CPU class on one machine (tests, "would this run there?"); it never changes what the CPU
executes.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qexport.core.errors import QExportError

FAKE_FLAGS_VARIABLE = "QEXPORT_FAKE_CPU_FLAGS"

# x86-64 micro-architecture levels as gcc's -march understands them, in cpuinfo flag names.
X86_64_V3 = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})
X86_64_V4 = X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

# Readable names for the flags reports print, strongest first (the first present names the class).
FLAG_LABELS = {
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "amx_tile": "AMX",
    "avx512_bf16": "AVX-512 BF16",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512f": "AVX-512F",
    "avx_ne_convert": "AVX-NE-CONVERT",
    "avx_vnni": "AVX-VNNI",
    "avx2": "AVX2",
}
CLASS_ORDER = ("amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


@dataclass(frozen=True)
class HostCpu:
    """The CPU qexport decides for: its model name and its cpuinfo flags."""

    model: str
    flags: frozenset[str]
    faked: bool = False

    def has(self, flags: frozenset[str]) -> bool:
        return flags <= self.flags

    def isa_class(self) -> str:
        """'AVX-512 VNNI', 'AVX2', ... -- the strongest extension int8/bf16 kernels can use."""
        for flag in CLASS_ORDER:
            if flag in self.flags:
                return FLAG_LABELS[flag]
        return "no AVX2 (x86-64 baseline)" if self.flags else "unknown ISA"

    def isa_line(self) -> str:
        """The CPU class as `qexport info` prints it ('AVX2, AVX-512F, AVX-512 VNNI'): tuned runtime
        settings are recorded under it and applied only on a host with the same line."""
        return ", ".join(self.labels()) or self.isa_class()

    def labels(self) -> list[str]:
        """Every extension in :data:`FLAG_LABELS` this CPU has, weakest first (for reports)."""
        return [label for flag, label in reversed(FLAG_LABELS.items()) if flag in self.flags]


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
REDUCED_RANGE_REASON = "the target CPU class includes CPUs without VNNI"  # what manifests say of a 7-bit range


def int8_activation_range(reduced: bool) -> str:
    """What a manifest says of an int8 family's activation range (see ``int8_may_run_without_vnni``)."""
    return f"uint8 0-127 ({REDUCED_RANGE_REASON})" if reduced else "uint8 0-255"


def int8_may_run_without_vnni(target: "TargetIsa", cpu: HostCpu) -> bool:
    """Whether int8 built for ``target`` may run on a CPU without VNNI, where it should use 7-bit ranges.

    Without VNNI, x86 int8 kernels multiply u8 activations by s8 weights with ``vpmaddubsw``, whose
    16-bit sums of two products saturate when both use their full range (255 × 127 × 2 > 32767).
    ResNet18 on CIFAR-10 built on an AVX2-only host lost 2.2 (pt2e) and 3.3 (ONNX Runtime) top-1
    points that way, 0.2-0.3 with 7-bit ranges. ``avx2`` (Haswell, Zen 1-3) and ``avx512``
    (Skylake-SP) both include such CPUs; ``native`` is this host.
    """
    if target.needs is None:
        return not (cpu.flags & VNNI_FLAGS)
    return True


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value:
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
                break
    return model, flags


@lru_cache(maxsize=None)
def _real_cpu() -> tuple[str, frozenset[str]]:
    return read_cpuinfo()


def host_cpu() -> HostCpu:
    """This host, unless ``QEXPORT_FAKE_CPU_FLAGS`` says to decide as if it had other flags."""
    model, flags = _real_cpu()
    fake = os.environ.get(FAKE_FLAGS_VARIABLE)
    if fake is not None:
        return HostCpu(f"{model} (flags faked by {FAKE_FLAGS_VARIABLE})",
                       frozenset(fake.replace(",", " ").split()), faked=True)
    return HostCpu(model, flags)


@dataclass(frozen=True)
class CpuRequirement:
    """Any one of several flag sets, e.g. IPEX bf16: AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT."""

    any_of: tuple[frozenset[str], ...]
    label: str  # how a user names it: "AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT"

    def met_by(self, cpu: HostCpu) -> bool:
        return any(cpu.has(option) for option in self.any_of)

    def problem(self, cpu: HostCpu) -> str | None:
        """None when met; else 'needs X; this CPU has Y'."""
        return None if self.met_by(cpu) else f"needs {self.label}; this CPU has {cpu.isa_class()}"

    def to_dict(self) -> dict:
        return {"label": self.label, "any_of": [sorted(option) for option in self.any_of]}

    @classmethod
    def from_dict(cls, data: dict) -> "CpuRequirement":
        try:
            return cls(tuple(frozenset(option) for option in data["any_of"]), str(data["label"]))
        except (KeyError, TypeError) as err:
            raise QExportError(f"the manifest's CPU requirement {data!r} is malformed; rebuild the artifact.") from err


def requirement(label: str, *options: frozenset[str] | set[str]) -> CpuRequirement:
    return CpuRequirement(tuple(frozenset(option) for option in options), label)


@dataclass(frozen=True)
class TargetIsa:
    """What ``--target-cpu`` compiles AOTInductor code for.

    Inductor picks its vector width from ``cpp.simdlen`` and passes ``-march=<cpp.march>`` to
    the compiler; left alone it uses ``-march=native``, so a package built on an AVX-512 host
    holds AVX-512 instructions and dies with SIGILL on an AVX2 host. Naming a micro-architecture
    level bounds every instruction gcc may emit, not only the vectorised kernels.
    """

    name: str
    simdlen: int | None  # None: Inductor's own choice for this host
    march: str | None    # None: -march=native
    needs: CpuRequirement | None  # None for native: the build host's own flags are recorded

    def inductor_config(self) -> dict:
        return {"cpp.simdlen": self.simdlen, "cpp.march": self.march}


TARGETS: dict[str, TargetIsa] = {
    "avx2": TargetIsa("avx2", 256, "x86-64-v3", requirement("AVX2 (x86-64-v3)", X86_64_V3)),
    "avx512": TargetIsa("avx512", 512, "x86-64-v4", requirement("AVX-512 (x86-64-v4)", X86_64_V4)),
    "native": TargetIsa("native", None, None, None),
}
DEFAULT_TARGET = "avx2"  # runs on every x86-64 CPU since 2013-2015 (Haswell, Zen); see docs/METHODOLOGY.md (CPU classes)


def resolve_target(name: str, cpu: HostCpu | None = None) -> TargetIsa:
    """The target to compile for; one sentence when unknown or beyond what this host can compile.

    Inductor compiles *and runs* a probe for the vector ISA it is asked for, so it can only
    target ISAs the build host has: asking for more would silently fall back to scalar code.
    """
    from qexport.core.errors import did_you_mean

    if name not in TARGETS:
        raise QExportError(f"Unknown --target-cpu {name!r}{did_you_mean(name, TARGETS)}; choose {', '.join(TARGETS)}.")
    target, cpu = TARGETS[name], cpu or host_cpu()
    if platform.machine() not in ("x86_64", "AMD64") and name != "native":
        raise QExportError(f"--target-cpu {name} is an x86-64 target and this host is {platform.machine()}; "
                           "use --target-cpu native.")
    if target.needs is not None and not target.needs.met_by(cpu):
        raise QExportError(f"--target-cpu {name} needs a build host with {target.needs.label} and this CPU has "
                           f"{cpu.isa_class()}, lacking {', '.join(missing_flags(target.needs, cpu))}; build on such "
                           "a host, or choose --target-cpu avx2 or native.")
    return target


def missing_flags(needs: CpuRequirement, cpu: HostCpu) -> list[str]:
    """The flags ``cpu`` lacks for the option of ``needs`` it comes closest to, sorted."""
    return sorted(min((option - cpu.flags for option in needs.any_of), key=len))


def native_requirement(cpu: HostCpu | None = None) -> CpuRequirement:
    """What ``-march=native`` code may use: every vector extension of the build host."""
    cpu = cpu or host_cpu()
    vector = frozenset(flag for flag in cpu.flags
                       if flag.startswith(("avx", "amx", "fma", "f16c", "bmi", "abm", "movbe", "sse", "ssse")))
    return CpuRequirement((vector,), f"the build host's ISA ({cpu.isa_class()}, -march=native)")


def host_problem(needs: CpuRequirement | None, artifact: str, compiled: bool, cpu: HostCpu | None = None) -> str | None:
    """None when ``artifact`` can run on this host; else the sentence that says why not and the fix
    (a compiled artifact can be rebuilt for a lower target; a runtime's own need cannot)."""
    if needs is None:
        return None
    cpu = cpu or host_cpu()
    if needs.met_by(cpu):
        return None
    missing = missing_flags(needs, cpu)
    portable = "avx2`" if cpu.has(X86_64_V3) else "native` on a host like this one"
    rebuild = f"rebuild it with `qexport build --force --target-cpu {portable}, or " if compiled else ""
    return (f"{artifact} needs {needs.label} and this CPU ({cpu.model}, {cpu.isa_class()}) lacks "
            f"{', '.join(missing)}; {rebuild}run it on a host with {needs.label}.")
