"""qexport as a user gets it: the wheel installed into a fresh venv outside the checkout, then
build, bench and verify of two families from there.

The scratch venv reuses the main environment's installed dependencies (a path line, not a
download) but not its editable qexport: the ``qexport`` that runs is the wheel's, which the test
checks. Nothing of the checkout is on its path and its working folder is elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command[:3])} failed:\n{done.stdout[-1500:]}\n{done.stderr[-2500:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv holding the qexport wheel (built from this tree) and a user environment."""
    scratch = tmp_path_factory.mktemp("install")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w",
         str(scratch / "dist")], cwd=scratch)
    [wheel] = (scratch / "dist").glob("qexport-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(scratch / "venv")], cwd=scratch)
    python = scratch / "venv" / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=scratch)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=scratch).stdout.strip())
    (site / "zz-main-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the dependencies
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "QEXPORT_IPEX_PYTHON")}
    env.update(HOME=str(scratch / "home"), QEXPORT_HOME=str(scratch / "home" / "qexport"), COLUMNS="200")
    return scratch, env


def test_the_wheel_runs_build_bench_and_verify_outside_the_checkout(installed):
    scratch, env = installed
    qexport = str(scratch / "venv" / "bin" / "qexport")
    where = run([str(scratch / "venv" / "bin" / "python"), "-c", "import qexport.runtimes.foreign as f, qexport; "
                 "print(qexport.__file__); print(f.CHECKOUT)"], cwd=scratch, env=env).stdout.split()
    assert where[0].startswith(str(scratch / "venv")) and where[1] == "None"  # the wheel's code, no checkout
    run([qexport, "build", "--only", "onnx-fp32,onnx-int8", "--data", "synthetic", "--train-samples", "400",
         "--test-samples", "100", "--epochs", "1", "--max-accuracy-drop", "100", "--no-progress"], cwd=scratch, env=env)
    assert {p.name for p in (scratch / "artifacts").glob("*.onnx")} == {"resnet18.fp32.onnx", "resnet18.int8.onnx"}
    run([qexport, "bench", "artifacts", "--rounds", "1", "--batch-sizes", "1", "--min-seconds", "0.05"], cwd=scratch, env=env)
    assert (scratch / "artifacts" / "bench.json").is_file()
    run([qexport, "verify", "artifacts"], cwd=scratch, env=env)


def test_a_missing_ipex_environment_names_the_command_of_this_install(installed):
    scratch, env = installed
    script = ("from qexport.runtimes import foreign\n"
              "try:\n    foreign.foreign_python('ipex')\nexcept Exception as err:\n    print(err)")
    said = run([str(scratch / "venv" / "bin" / "python"), "-c", script], cwd=scratch, env=env).stdout
    assert "qexport setup ipex" in said and "make" not in said


def test_help_through_a_pipe_keeps_every_option_whole(installed):
    scratch, env = installed
    env = {key: value for key, value in env.items() if key not in ("COLUMNS", "TERMINAL_WIDTH")}
    said = run([str(scratch / "venv" / "bin" / "qexport"), "build", "--help"], cwd=scratch, env=env).stdout
    for option in ("--max-accuracy-drop", "--budget-verdict", "--budget-samples", "--val-dir", "--retrain"):
        assert option in said, f"{option} cut from `qexport build --help | ...`"
