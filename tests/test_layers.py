"""The layers the tree promises (docs/ARCHITECTURE.md), checked by import-linter.

qexport/core/ (documents, manifests, options, hardware...)  <- qexport/training/ (data, models,
training)  <- exporter/, runtimes/  <- qexport/commands/ (cli, pipeline, verify, pack, reports,
zoo). A core module that imported a family or a runner would pull torch into torch-free paths
(verify of an ONNX file) and tie the bottom layer to the top; exporter/ and runtimes/ meet only
through the interfaces the contract declares. The contracts live in pyproject.toml
([tool.importlinter]) and name the folders.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def installed_layout(into: Path) -> Path:
    """The packages as installed (qexport/exporter/, qexport/runtimes/: pyproject's package-dir),
    copied into real folders: import-linter finds a package's modules by walking its folder, and
    the source tree keeps exporter/ and runtimes/ beside qexport/, not in it."""
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    folders = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        source = ROOT / folders.get(package, package.replace(".", "/"))
        shutil.copytree(source, into / package.replace(".", "/"), ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    return into


def test_import_contracts_are_kept(tmp_path):
    """Runs `lint-imports` (import-linter) on the installed layout; its report is the failure message."""
    layout = installed_layout(tmp_path / "layout")
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter), str(PYPROJECT), "--no-cache"], cwd=layout, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(layout)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions ('from qexport import runtimes' counts)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imports_any(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_nothing_generic_is_installed_at_top_level():
    """exporter/ and runtimes/ install as qexport.exporter / qexport.runtimes (pyproject package-dir)."""
    import importlib.util

    assert importlib.util.find_spec("qexport.exporter") and importlib.util.find_spec("qexport.runtimes")
    for path in [p for folder in ("qexport", "exporter", "runtimes", "tests") for p in (ROOT / folder).rglob("*.py")]:
        bare = imports_any(imported_modules(path), ("exporter", "runtimes"))
        assert bare == [], f"{path.relative_to(ROOT)} imports {bare} without the qexport namespace"


FAMILY_INDEPENDENCE = "a family module imports no other family module"


def family_modules() -> set[str]:
    """Every exporter module that declares a family (a top-level ``@register(...)`` decorator)."""
    return {f"qexport.exporter.{path.stem}" for path in (ROOT / "exporter").glob("*.py")
            if any(line.startswith("@register(") for line in path.read_text().splitlines())}


def test_every_family_module_is_in_the_independence_contract():
    """The contract names its modules: a new family module left out of it would go unchecked."""
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    [independence] = [c for c in contracts if c["name"].startswith(FAMILY_INDEPENDENCE)]
    missing = sorted(family_modules() - set(independence["modules"]))
    assert family_modules() and missing == [], f"add {missing} to the contract '{FAMILY_INDEPENDENCE}' in pyproject.toml"
