"""What an artifact needs from the CPU it runs on, read from its manifest, and whether this host has
it: checked before any runtime loads the file, so a missing instruction set is a sentence, not a SIGILL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qexport.core.manifest import Manifest

if TYPE_CHECKING:
    from qexport.core.hardware import CpuRequirement


def cpu_needs(manifest: Manifest) -> tuple["CpuRequirement | None", bool]:
    """(what the artifact needs from the CPU, whether that comes from compiled code).

    Manifests written before requirements were recorded still protect their AOTInductor
    package: it was compiled with -march=native, so it needs the build host's recorded ISA.
    """
    from qexport.core.hardware import FLAG_LABELS, requirement

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
    from qexport.core.hardware import host_problem

    needs, compiled = cpu_needs(manifest)
    return host_problem(needs, manifest.artifact.file, compiled)
