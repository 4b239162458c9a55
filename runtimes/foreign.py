"""Runtimes that live in their own Python environment.

IPEX 2.8.0 (retired upstream) needs torch 2.8.*, and the main environment runs torch 2.14, so
IPEX artifacts are built, measured and verified by a second interpreter (``.venv-ipex``,
created by ``make setup-ipex``). This module only *finds* that interpreter; it never imports the
runtime, so the main environment stays free of IPEX.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qexport.errors import RuntimeMissing

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ForeignEnvironment:
    runtime: str
    module: str          # what must import in that environment
    variable: str        # environment variable naming its python
    default: Path        # where `make` creates it
    setup: str           # the command that creates it
    packages: tuple[str, ...]  # versions worth reporting

    def missing_message(self) -> str:
        return (f"{self.runtime.upper()} environment not installed -- run `{self.setup}` "
                f"(or set {self.variable} to a python that has {self.module}).")


FOREIGN: dict[str, ForeignEnvironment] = {
    "ipex": ForeignEnvironment(runtime="ipex", module="intel_extension_for_pytorch",
                               variable="QEXPORT_IPEX_PYTHON", default=ROOT / ".venv-ipex" / "bin" / "python",
                               setup="make setup-ipex",
                               packages=("torch", "torchvision", "intel_extension_for_pytorch")),
}


def is_foreign(runtime: str) -> bool:
    return runtime in FOREIGN


def runs_here(runtime: str) -> bool:
    """True when this interpreter can run ``runtime`` itself (e.g. we *are* the IPEX env)."""
    env = FOREIGN.get(runtime)
    return env is None or importlib.util.find_spec(env.module) is not None


@lru_cache(maxsize=None)
def foreign_python(runtime: str) -> str:
    """The interpreter that runs ``runtime``; raises RuntimeMissing with the fix when absent."""
    env = FOREIGN[runtime]
    python = Path(os.environ.get(env.variable) or env.default)
    if not python.is_file():
        raise RuntimeMissing(env.missing_message())
    probe = subprocess.run([str(python), "-c", f"import {env.module}"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1][:160]
        raise RuntimeMissing(f"{python} cannot import {env.module} ({last}); rebuild it with `{env.setup}`.")
    return str(python)


def python_for(runtime: str) -> str | None:
    """None: run in this interpreter; else the path of the environment's python."""
    return None if runs_here(runtime) else foreign_python(runtime)


def child_env() -> dict:
    """Environment for a child in another interpreter: our code importable, warnings quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env
