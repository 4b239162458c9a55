"""Ctrl-C during a long build or bench: exit 130 with one line, nothing half-written, workers reaped.

These drive the real console entry point in its own process group and send SIGINT to the group,
as a terminal does on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_DATA_ARGS, copy_artifacts


def interrupt_when(args: list[str], ready: Callable[[], bool],
                   timeout: float = 240) -> tuple[subprocess.CompletedProcess, int]:
    """Start `qexport ARGS`, wait for ``ready()``, press Ctrl-C, and collect the result with the
    process group it ran in (start_new_session: named by the command's own pid)."""
    # A test run started as a background job of a non-interactive shell inherits SIGINT *ignored*
    # (POSIX), and Python then installs no Ctrl-C handler: the child gets the terminal's default back.
    process = subprocess.Popen([sys.executable, "-m", "qexport.commands.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"never reached the point to interrupt (exit {process.returncode}): {err[-800:]}")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), process.pid


def worker_pids() -> set[int]:
    """Live bench workers on this machine (their command line names runtimes.worker)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split(") ")[-1][:1]
            except OSError:
                continue
            if b"qexport.runtimes.worker" in cmdline and state != "Z":
                pids.add(int(entry.name))
    return pids


def group_members(group: int) -> set[int]:
    """Live processes of a process group (the build's child, the fork server, compilers...)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(") ")[-1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == group:  # state, ppid, pgrp
                members.add(int(entry.name))
    return members


def wait_until_gone(group: int, seconds: float = 15) -> set[int]:
    deadline = time.monotonic() + seconds
    while (left := group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def assert_clean_interrupt(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 130, done.stderr[-800:]
    assert "Traceback" not in done.stderr
    assert "Interrupted" in done.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
@pytest.mark.e2e
@pytest.mark.parametrize("families,jobs", [("torchscript-int8-qat", 1), ("torchscript-int8-qat,pt2e-int8-qat", 2)])
def test_ctrl_c_during_build_leaves_nothing_half_written(tiny_checkpoint, tmp_path, families, jobs):
    out = tmp_path / "artifacts"
    args = ["build", "--only", families, *TINY_DATA_ARGS, "--checkpoint", str(tiny_checkpoint),
            "--qat-epochs", "500", "--max-accuracy-drop", "100", "--jobs", str(jobs), "--out", str(out), "--no-progress"]
    started = families.count(",") + 1
    done, group = interrupt_when(args, lambda: len(list(out.glob(".tmp-*"))) >= started)  # every family writing
    assert_clean_interrupt(done)
    assert [p.name for p in out.iterdir()] == []
    assert not wait_until_gone(group), "a build process outlived the interrupted build"


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_ctrl_c_during_bench_reaps_workers(built_artifacts, tmp_path):
    source, _ = built_artifacts
    folder = copy_artifacts(source, tmp_path / "a", ["resnet18.fp32.torchscript.pt"])
    before = worker_pids()
    args = ["bench", str(folder), "--batch-sizes", "1", "--min-seconds", "300", "--no-accuracy"]
    started: set[int] = set()

    def worker_running() -> bool:
        started.update(worker_pids() - before)
        return bool(started)

    done, _ = interrupt_when(args, worker_running)
    assert_clean_interrupt(done)
    assert not (worker_pids() & started), "a bench worker outlived Ctrl-C"
    assert not (folder / "bench.json").exists()


CTRL_C_AS_A_BUILD_CHILD_STARTS = """
import multiprocessing.forkserver, os, signal, sys, threading
connect = multiprocessing.forkserver.connect_to_new_process

def connect_then_ctrl_c(fds):  # a build child is forked and waits for its job: Ctrl-C now
    connected = connect(fds)
    if threading.current_thread() is threading.main_thread():  # not the fork server's empty child
        os.kill(os.getpid(), signal.SIGINT)
    return connected

multiprocessing.forkserver.connect_to_new_process = connect_then_ctrl_c
from qexport.commands.cli import main
sys.argv = ["qexport", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
@pytest.mark.e2e
def test_ctrl_c_while_a_build_child_receives_its_job_stops_cleanly(tiny_checkpoint, tmp_path):
    """A Ctrl-C between the fork and the end of the job's transfer: the child must get its whole
    job and then be stopped, not die printing a traceback of half a pickle."""
    out = tmp_path / "artifacts"
    args = ["build", "--only", "torchscript-fp32", *TINY_DATA_ARGS, "--checkpoint", str(tiny_checkpoint),
            "--out", str(out), "--no-progress"]
    process = subprocess.Popen([sys.executable, "-c", CTRL_C_AS_A_BUILD_CHILD_STARTS, *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out_text, err_text = process.communicate(timeout=240)
    except BaseException:  # a timeout: nothing of its group may outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    assert_clean_interrupt(subprocess.CompletedProcess(process.args, process.returncode, out_text, err_text))
    assert not out.exists() or [p.name for p in out.iterdir()] == []
    assert not wait_until_gone(process.pid), "a build process outlived the interrupted build"


HELD_BACK_SCRIPT = """
import os, signal, sys, time
from qexport.core.interrupts import ctrl_c_held_back
try:
    with ctrl_c_held_back():
        for press in range(int(sys.argv[1])):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            print(f"after press {press + 1}", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def held_back(presses: int) -> list[str]:
    """What HELD_BACK_SCRIPT prints when Ctrl-C is pressed ``presses`` times inside the block. The
    signal goes to a child interpreter of its own: a test never interrupts the test runner."""
    done = subprocess.run([sys.executable, "-c", HELD_BACK_SCRIPT, str(presses)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    return done.stdout.splitlines()


def test_ctrl_c_while_a_worker_starts_lands_after_it_is_recorded():
    """A Ctrl-C inside ``ctrl_c_held_back`` is raised only when the block ends, so the harness has
    recorded the worker it started and can kill it."""
    assert held_back(1) == ["after press 1", "interrupted"]


def test_a_second_ctrl_c_inside_the_held_back_block_lands_at_once():
    """A block that hangs must not swallow Ctrl-C: the second press interrupts it where it is."""
    assert held_back(3) == ["after press 1", "interrupted"]
