"""Each family builds in a fresh child process, so global torch state one family sets cannot
change another's artifact.

Families change process-global torch state: eager int8 sets ``torch.backends.quantized.engine``,
pt2e patches Inductor internals while compiling, and a pt2e int8 package compiled after an eager
int8 ``convert`` in the same process ran 2-3x slower. Children are forked from a fork server that
has imported torch, torchao, Inductor and the exporters once (``exporter/preload.py``) but never
ran an op, so a child starts from a clean torch without paying ~5 s of imports.
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

from qexport.core.errors import QExportError
from qexport.core.interrupts import ctrl_c_held_back
from qexport.exporter.capture import explain_capture_failure
from qexport.exporter.registry import BuildContext, BuildDetails, Family
from qexport.core.progress import current_label, labelled


def run_family(family: Family, ctx: BuildContext, path: Path, cancelled: threading.Event) -> BuildDetails:
    """The family's build function, in a child process unless it already builds in another interpreter."""
    return build_in_child(family, ctx, path, cancelled) if family.isolate else build_explained(family, ctx, path)


def build_explained(family: Family, ctx: BuildContext, path: Path) -> BuildDetails:
    """``family.build``, with an error raised inside the model's code turned into one sentence
    naming the layer (exporter/capture.py) -- where the traceback still exists: in the child for
    isolated families, which pickles only the exception."""
    try:
        return family.build_file(ctx, path)
    except Exception as err:
        explained = explain_capture_failure(err, family.key)
        if explained is err:
            raise
        raise explained from err


def build_processes():
    """The multiprocessing context for build children: a fork server that has imported torch and
    the exporters once (exporter/preload.py), instead of a spawn per child (~5 s of imports each).
    Not plain fork: the parent has run torch ops, and its thread pools and global torch state
    (quantized engine, Inductor patches) would be inherited; the fork server has run none."""
    import torch.multiprocessing

    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qexport.exporter.preload"])  # no effect once the server runs
    return context


def build_in_child(family: Family, ctx: BuildContext, path: Path, cancelled: threading.Event) -> BuildDetails:
    """Run ``family.build`` in a fresh child process (see the module's docstring).

    The data reaches the child through shared memory (torch.multiprocessing), the model as one
    pickled buffer (``BuildContext.__getstate__``), the artifact through ``path``, and what was
    done (or the exception raised) comes back through a pipe. The child never sees Ctrl-C, which
    reaches the whole process group (``start_fork_server``): the parent alone handles it, stops
    the child and removes the half-written file. ``cancelled`` set by another build thread (its
    Ctrl-C) stops this one too.
    """
    processes = build_processes()
    receive, send = processes.Pipe(duplex=False)
    job = (family, ctx, path, current_label())
    child = processes.Process(target=_build_and_send, args=(job, send), daemon=True)
    try:
        prepare_fork_server().join()  # a Ctrl-C while the server imports arrives at once
        start_fork_server()  # the same server, or a new one if it has died since
        try:
            with ctrl_c_held_back():  # cut short, the child would unpickle half a job and print a traceback
                child.start()
        finally:
            send.close()
        while not receive.poll(0.2):
            if cancelled.is_set():
                raise KeyboardInterrupt
            if not child.is_alive() and not receive.poll(0):
                raise QExportError(f"the process building {family.key} died without a result (exit {child.exitcode}: "
                                   "killed, out of memory or a crash in native code); rerun with --only to see its output.")
        ok, value = receive.recv()
    except BaseException:
        if child.pid is not None:
            child.kill()
        raise
    finally:
        if child.pid is not None:
            child.join()
        receive.close()
    if not ok:
        raise value
    return value


def start_fork_server() -> None:
    """Start the fork server (if it is not running) with SIGINT blocked. It keeps the blocked
    mask and passes it to every child it forks, so Ctrl-C, which reaches the whole process
    group, never interrupts it or a child, not even while they import torch; the parent alone
    handles it and stops the child. Only the spawn is blocked, not the seconds the server then
    spends importing, so the parent's own Ctrl-C still arrives at once (and those seconds are over
    before a build child's start holds Ctrl-C back: :func:`prepare_fork_server`). The resource tracker is
    started first: starting it unblocks SIGINT again (CPython 3.11)."""
    import signal
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_WARM_UP_LOCK = threading.Lock()
_warm_up: list[threading.Thread] = []  # the one thread that readies this process's fork server


def prepare_fork_server() -> threading.Thread:
    """Start the fork server and have it fork one empty child, on a thread of its own, once per
    process; returns that thread. The server forks nothing before its imports are done (seconds):
    begun early, they overlap the parent's own preparation, and a build child's start, which holds
    Ctrl-C back until the child has its whole job, then never holds it through them. Python
    raises Ctrl-C in the main thread only, so the empty child's start is never cut in half."""
    with _WARM_UP_LOCK:
        if not _warm_up:
            thread = threading.Thread(target=_fork_one_empty_child, name="qexport-fork-server", daemon=True)
            thread.start()
            _warm_up.append(thread)
        return _warm_up[0]


def _fork_one_empty_child() -> None:
    try:
        start_fork_server()
        empty = build_processes().Process(target=_nothing, daemon=True)
        empty.start()
        empty.join()
    except Exception:  # noqa: BLE001 -- a build child's own start then says what is wrong
        pass


def _nothing() -> None:
    """The empty child's work (see :func:`prepare_fork_server`)."""


def die_with_parent() -> None:
    """Linux: be killed when the parent dies, even by SIGKILL, so that no orphaned build keeps
    burning the cores (best effort; elsewhere the daemon flag covers normal exits). A build
    child's parent is the fork server, which exits as soon as the build process is gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def keep_traceback_as_note(err: BaseException) -> None:
    """Attach the child's whole traceback, causes included, to ``err`` as a note: a pickled exception
    loses its traceback and its cause, and `--debug` in the parent prints the notes instead."""
    note = "in the build process:\n" + "".join(traceback.format_exception(err)).rstrip()
    err.__notes__ = [*getattr(err, "__notes__", []), note]  # what add_note does, also on Python 3.10


def _build_and_send(job: tuple[Family, BuildContext, Path, str], send) -> None:
    """Child side of :func:`build_in_child`: build, then send (True, details) or (False, exception)."""
    import signal

    from qexport.core.progress import quiet_library_warnings

    quiet_library_warnings()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C (see build_in_child)
    die_with_parent()
    family, ctx, path, label = job
    try:
        with labelled(label):
            result = (True, build_explained(family, ctx, path))
    except BaseException as err:  # noqa: BLE001 -- every outcome goes back to the parent, which decides
        keep_traceback_as_note(err)
        result = (False, err)
    try:
        send.send(result)
    except BrokenPipeError:  # the parent is gone (Ctrl-C): nobody to tell
        pass
    finally:
        send.close()
