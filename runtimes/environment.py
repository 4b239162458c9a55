"""The host and software a bench run measured on, as bench.json records it: the CPU and its ISA,
the libraries (the IPEX environment's too) and the commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.documents import parse


@dataclass
class CpuRecord:
    model: str
    isa: dict[str, bool]
    logical_cores: int | None = None
    usable_cores: list[int] | None = None
    isa_class: str = ""


@dataclass
class ForeignRecord:
    python: str
    versions: dict[str, str | None]


IPEX_PACKAGE = "intel-extension-for-pytorch"


@dataclass
class Environment:
    """The host and software a run measured on (qexport.core.envinfo.environment)."""

    python: str
    cpu: CpuRecord
    libraries: dict[str, str | None]
    gpus: list[str] = field(default_factory=list)
    platform: str = ""
    foreign_environments: dict[str, ForeignRecord | None] = field(default_factory=dict)
    git_commit: str | None = None

    def library_summary(self) -> str:
        """'torch 2.14.0, onnxruntime 1.23.0, ..., IPEX not installed': every library the run recorded
        (qexport.core.envinfo.LIBRARIES, the one list) that is installed, so no report keeps its own list."""
        installed = [f"{name} {version}" for name, version in self.libraries.items()
                     if version and name != IPEX_PACKAGE]
        return ", ".join([*installed, f"IPEX {self.ipex_summary()}"])

    def ipex_summary(self) -> str:
        """'2.8.0', '2.8.0 (own environment, torch 2.8.0)' or 'not installed'."""
        local = self.libraries.get(IPEX_PACKAGE)
        if local:
            return local
        own = self.foreign_environments.get("ipex")
        if own and own.versions.get("intel_extension_for_pytorch"):
            return f"{own.versions['intel_extension_for_pytorch']} (own environment, torch {own.versions.get('torch')})"
        return "not installed (make setup-ipex)"


def current_environment() -> Environment:
    """This host and its software, as every report prints it (runtimes' own environments included)."""
    from qexport.core.envinfo import environment, git_commit
    from qexport.runtimes.foreign import foreign_environments

    facts = {**environment(foreign_environments()), "git_commit": git_commit(Path(__file__).parent)}
    return parse(Environment, facts, "the environment")
