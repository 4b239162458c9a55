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

from qexport.errors import RuntimeMissing, last_line

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ForeignEnvironment:
    runtime: str
    module: str          # what must import in that environment
    variable: str        # environment variable naming its python
    default: Path        # where `make` creates it
    setup: str           # the command that creates it

    def missing_message(self) -> str:
        return (f"{self.runtime.upper()} environment not installed -- run `{self.setup}` "
                f"(or set {self.variable} to a python that has {self.module}).")


def environments() -> dict[str, ForeignEnvironment]:
    """The runtimes that declare an environment of their own (qexport.runtimes.RUNTIMES)."""
    from qexport.runtimes import RUNTIMES

    return {name: rt.environment for name, rt in RUNTIMES.items() if rt.environment is not None}


def is_foreign(runtime: str) -> bool:
    return runtime in environments()


def runs_here(runtime: str) -> bool:
    """True when this interpreter can run ``runtime`` itself (e.g. we *are* the IPEX env)."""
    env = environments().get(runtime)
    return env is None or importlib.util.find_spec(env.module) is not None


@lru_cache(maxsize=None)
def foreign_python(runtime: str) -> str:
    """The interpreter that runs ``runtime``; raises RuntimeMissing with the fix when absent."""
    env = environments()[runtime]
    python = Path(os.environ.get(env.variable) or env.default)
    if not python.is_file():
        raise RuntimeMissing(env.missing_message())
    probe = subprocess.run([str(python), "-c", f"import {env.module}"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if probe.returncode != 0:
        last = last_line(probe.stderr, 160, default="unknown error")
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
    from qexport.runtimes.openvino import TELEMETRY_OFF

    env.update(TELEMETRY_OFF)  # no usage telemetry from any process qexport starts
    return env


def foreign_environments() -> dict[str, dict | None]:
    """Versions inside each runtime's own environment (IPEX: torch 2.8), read from package
    metadata by that interpreter without importing anything heavy; None where it is absent."""
    import json
    import sys

    from qexport.runtimes import RUNTIMES

    found: dict[str, dict | None] = {}
    for runtime, env in environments().items():
        python = Path(os.environ.get(env.variable) or env.default)
        if env.module in sys.modules or not python.is_file():
            found[runtime] = None
            continue
        script = ("import importlib.metadata as m, json\n"
                  "def v(p):\n    try: return m.version(p)\n    except m.PackageNotFoundError: return None\n"
                  f"print(json.dumps({{p: v(p) for p in {list(RUNTIMES[runtime].packages)!r}}}))")
        try:
            out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=30, check=True)
            found[runtime] = {"python": str(python), "versions": json.loads(out.stdout)}
        except (OSError, subprocess.SubprocessError, ValueError):
            found[runtime] = None
    return found
