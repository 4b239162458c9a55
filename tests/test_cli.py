from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qexport.commands.cli import app
from tests.conftest import run_cli

COMMANDS = sorted(cmd.name or cmd.callback.__name__ for cmd in app.registered_commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


@pytest.mark.parametrize("command", ["train", "build"])
def test_an_install_hint_in_help_keeps_its_extra(command):
    """Rich reads "[timm]" as a markup tag and drops it unless escaped: the hint would say
    `pip install 'qexport'`, which installs no timm."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert "pip install 'qexport[timm]'" in result.output


def test_root_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def info_json() -> dict:
    import json

    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_info_reports_versions_as_json():
    assert info_json()["libraries"]["torch"].startswith("2.14")


def test_info_reports_which_extensions_the_cpu_has(monkeypatch):
    """A CPU with AVX2 and AVX-512F only: those two are yes, VNNI and AMX are no (every label is
    listed either way, so the test reads the answers, not the keys)."""
    monkeypatch.setenv("QEXPORT_FAKE_CPU_FLAGS", "avx2 avx512f")
    cpu = info_json()["cpu"]
    assert {label for label, present in cpu["isa"].items() if present} == {"AVX2", "AVX-512F"}
    assert cpu["isa"]["AVX-512 VNNI"] is False and cpu["isa"]["AMX-INT8"] is False
    assert cpu["isa_class"] == "AVX-512F"


def test_info_reads_this_hosts_extensions_from_the_kernel(monkeypatch):
    from pathlib import Path

    monkeypatch.delenv("QEXPORT_FAKE_CPU_FLAGS", raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    isa = info_json()["cpu"]["isa"]
    assert isa["AVX2"] == ("avx2" in flags) and isa["AVX-512 VNNI"] == ("avx512_vnni" in flags)


def _assert_one_line_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0]


def test_unknown_model_exits_2_with_one_line():
    _assert_one_line_error(run_cli("train", "--model", "resnet19", "--data", "synthetic"), "did you mean 'resnet18'")


def test_missing_data_dir_exits_2(tmp_path):
    proc = run_cli("train", "--data", "imagefolder", "--data-dir", str(tmp_path / "missing"))
    _assert_one_line_error(proc, "--data-dir")


def test_debug_shows_traceback():
    proc = run_cli("--debug", "train", "--model", "resnet19", "--data", "synthetic")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("train", "--data", "synthetic", "--epochs", "0", "--out", str(blocker / "sub" / "ck.pt"))
    _assert_one_line_error(proc, "Cannot write to output directory")


@pytest.mark.e2e
def test_train_cli_writes_checkpoint(tmp_path):
    out = tmp_path / "ck.pt"
    proc = run_cli("train", "--data", "synthetic", "--epochs", "2", "--batch-size", "64", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "SYNTHETIC" in proc.stderr
    assert "epoch 2/2 loss " in proc.stderr  # --no-progress drops the bar, not the per-epoch lines
    assert "an epoch takes about" in proc.stderr  # nor the time estimate made before training
