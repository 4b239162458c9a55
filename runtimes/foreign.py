"""Runtimes that live in their own Python environment.

IPEX 2.8.0 (retired upstream) needs torch 2.8.*, and the main environment runs torch 2.14, so
IPEX artifacts are built, measured and verified by a second interpreter. It lives in qexport's
per-user data folder (``qexport setup ipex``), or in a checkout's ``.venv-ipex`` (``make
setup-ipex``, the developer path), or wherever ``QEXPORT_IPEX_PYTHON`` points. qexport's own code
reaches it through ``PYTHONPATH`` (:func:`code_path`), never through an install or a ``sys.path``
edit, so the same works from a wheel and from a checkout. This module finds and creates that
interpreter; it never imports the runtime, so the main environment stays free of IPEX.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qexport.core.errors import QExportError, RuntimeMissing, last_line

ROOT = Path(__file__).resolve().parents[1]
# A source checkout (developers, `make`): its root holds pyproject.toml and the Makefile. An
# installed wheel has neither beside the package.
CHECKOUT = ROOT if (ROOT / "pyproject.toml").is_file() and (ROOT / "Makefile").is_file() else None


def data_dir() -> Path:
    """qexport's per-user data folder (``QEXPORT_HOME`` overrides): where ``qexport setup`` puts
    the environments of runtimes that cannot share the main one."""
    from platformdirs import user_data_dir

    return Path(os.environ.get("QEXPORT_HOME") or user_data_dir("qexport", appauthor=False))


@dataclass(frozen=True)
class ForeignEnvironment:
    runtime: str
    module: str          # what must import in that environment
    variable: str        # environment variable naming its python
    requirements: str    # file beside this module pinning what the environment holds

    @property
    def folder(self) -> Path:
        """A checkout's ``.venv-<runtime>`` when `make` made one, else the per-user data folder's."""
        developer = CHECKOUT / f".venv-{self.runtime}" if CHECKOUT else None
        return developer if developer and developer.is_dir() else data_dir() / f"venv-{self.runtime}"

    @property
    def default(self) -> Path:
        return self.folder / "bin" / "python"

    @property
    def setup(self) -> str:
        """The command that creates it, for the way qexport was installed."""
        return f"make setup-{self.runtime}" if CHECKOUT else f"qexport setup {self.runtime}"

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
    """The interpreter that runs ``runtime``; raises RuntimeMissing with the fix when absent.

    The probe asks whether the package is installed there, not whether it imports: importing IPEX
    takes 12 s, and every `build --list` and bench paid it. Creating the environment checks the
    import once; a later breakage shows as the child's own error where the runtime is used."""
    env = environments()[runtime]
    python = Path(os.environ.get(env.variable) or env.default)
    if not python.is_file():
        raise RuntimeMissing(env.missing_message())
    probe = subprocess.run([str(python), "-c", f"import importlib.util as u, sys; sys.exit(u.find_spec({env.module!r}) is None)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if probe.returncode != 0:
        last = last_line(probe.stderr, 160, default=f"{env.module} is not installed there")
        raise RuntimeMissing(f"{python} cannot import {env.module} ({last}); rebuild it with `{env.setup}`.")
    return str(python)


def python_for(runtime: str) -> str | None:
    """None: run in this interpreter; else the path of the environment's python."""
    return None if runs_here(runtime) else foreign_python(runtime)


@lru_cache(maxsize=None)
def code_path() -> str:
    """A folder holding only the ``qexport`` package, for another interpreter's ``PYTHONPATH``.

    From a wheel the package is one folder and is linked as it is. From a checkout its
    subpackages live in ``exporter/`` and ``runtimes/`` beside it (pyproject's package-dir), so
    the package is assembled from links. Nothing else of this environment (torch 2.14) is on that
    path. The folder is removed when this process exits."""
    import atexit
    import shutil
    import tempfile

    package = Path(importlib.util.find_spec("qexport").submodule_search_locations[0])
    folder = Path(tempfile.mkdtemp(prefix="qexport-code-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = folder / "qexport"
    if all((package / sub).is_dir() for sub in ("exporter", "runtimes")):
        target.symlink_to(package, target_is_directory=True)
        return str(folder)
    target.mkdir()
    for entry in package.iterdir():
        if entry.name != "__pycache__":
            (target / entry.name).symlink_to(entry)
    for sub in ("exporter", "runtimes"):
        location = importlib.util.find_spec(f"qexport.{sub}").submodule_search_locations[0]
        (target / sub).symlink_to(Path(location), target_is_directory=True)
    return str(folder)


def child_env() -> dict:
    """Environment for a child in another interpreter: our code importable, warnings quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = code_path() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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


def create_environment(runtime: str, folder: Path | None = None, python: str = sys.executable,
                       say=print) -> Path:
    """Create ``runtime``'s own environment (a venv with its pinned packages) and check that its
    module imports; returns its python. Any failure is one sentence with pip's last line."""
    import venv
    from importlib import resources

    envs = environments()
    if runtime not in envs:
        raise QExportError(f"{runtime} needs no environment of its own; "
                           f"the ones that do: {', '.join(sorted(envs)) or 'none'}.")
    env = envs[runtime]
    folder = Path(folder or data_dir() / f"venv-{runtime}")
    requirements = resources.files("qexport.runtimes").joinpath(env.requirements)
    say(f"creating the {runtime} environment in {folder} (pinned by {env.requirements}; a few GB, minutes)")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    interpreter = folder / "bin" / "python"
    with resources.as_file(requirements) as pinned:
        _run_or_explain([str(interpreter), "-m", "pip", "install", "--quiet", "-r", str(pinned)],
                        f"installing {runtime}'s packages failed")
    _run_or_explain([str(interpreter), "-c", f"import {env.module}"], f"{env.module} does not import in {folder}")
    foreign_python.cache_clear()
    say(f"{runtime} environment ready: {interpreter}")
    return interpreter


def _run_or_explain(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        detail = last_line("\n".join(line for line in done.stderr.splitlines() if not line.startswith("WARNING")),
                           200, default=f"exit {done.returncode}")
        raise QExportError(f"{what} ({detail}); check the network or package index, then run it again.")
