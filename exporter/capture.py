"""Why an exporter could not capture a model, in one sentence that names the layer.

Every exporter runs the model's Python ``forward``: torch.export and FX trace it symbolically,
``torch.jit.trace`` records one run. Python control flow on tensor *values* (``if x.mean() > 0:``)
cannot be captured: torch.export raises ``GuardOnDataDependentSymNode`` deep inside torch, FX a
``TraceError`` without a location, and ``torch.jit.trace`` only warns and silently bakes in the
branch the example input took. The frames of the model's own ``forward`` calls are on the
traceback of the error, each with its module as ``self``, so the failing layer can be named.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import torch
from torch import nn

from qexport.core.errors import QExportError, describe_exception

CONTROL_FLOW_SIGNS = ("data-dependent", "GuardOnDataDependentSymNode", "cannot be used as inputs to control flow")
TRACER_CONTROL_FLOW = "Converting a tensor to a Python boolean"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _module_frames(err: BaseException) -> list[tuple[FrameType, nn.Module, int]]:
    """(frame, its ``self``, line) for every frame of an nn.Module method on the error's tracebacks, outermost first."""
    frames = []
    for link in _chain(err):
        tb = link.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module):
                frames.append((tb.tb_frame, owner, tb.tb_lineno))
            tb = tb.tb_next
    return frames


def failing_site(err: BaseException) -> tuple[str, nn.Module, str, int] | None:
    """(layer name, model, file, line) of the innermost model module the error passed through.

    The model is the outermost module on the traceback that is not torch's own (exporters wrap it);
    names come from its ``named_modules``, matched by identity, so a repeated block is named right."""
    frames = _module_frames(err)
    roots = [owner for _, owner, _ in frames if not type(owner).__module__.startswith("torch.")]
    if not roots:
        return None
    names = {id(module): name for name, module in roots[0].named_modules()}
    for frame, owner, lineno in reversed(frames):
        if id(owner) in names:
            return names[id(owner)], roots[0], frame.f_code.co_filename, lineno
    return None


def _source_line(filename: str, lineno: int) -> str | None:
    import linecache

    return linecache.getline(filename, lineno).strip() or None


def describe_layer(name: str | None, model: nn.Module | None) -> str:
    """"layer 'gate' (DataDependentGate)"; "the model" when the layer is unknown."""
    if name is None:
        return "the model"
    if name:
        return f"layer '{name}' ({type(model.get_submodule(name)).__name__})"
    return "the model's own forward"


def describe_site(name: str | None, model: nn.Module | None, filename: str, lineno: int) -> str:
    """"layer 'gate' (DataDependentGate) at file.py:12 (`if x.mean() > 0:`)"."""
    layer = describe_layer(name, model)
    code = _source_line(filename, lineno)
    return f"{layer} at {Path(filename).name}:{lineno}" + (f" (`{code}`)" if code else "")


def control_flow_error(family: str, where: str) -> QExportError:
    return QExportError(
        f"{family} cannot capture the model: Python control flow on tensor values in {where} takes a branch per input, "
        f"and an exported graph has one -- rewrite it with torch.where or torch.cond, or leave {family} out.")


LIBRARY_FOLDERS = ("site-packages", "dist-packages")  # pip's, and Debian's system Python's


def library_site(err: BaseException) -> tuple[str, str, int] | None:
    """(distribution, file, line) of the innermost frame of ``err``'s traceback when that frame is
    an installed library's (a ``site-packages`` folder), not the model's code or qexport's own --
    qexport installed from a wheel sits there too, and its bugs are not another library's limits."""
    tb = err.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = Path(tb.tb_frame.f_code.co_filename).parts
    folder = next((i for i, part in enumerate(parts) if part in LIBRARY_FOLDERS), None)
    if folder is None or folder + 1 >= len(parts) - 1:
        return None  # not in a library, or a module at the top of site-packages (no package to name)
    package = parts[folder + 1]
    if package == "qexport":
        return None
    return package, tb.tb_frame.f_code.co_filename, tb.tb_lineno


def library_failure(family: str, err: BaseException, site: tuple[str, str, int]) -> QExportError:
    """One sentence for an error a library raised in its own code while building (an Inductor or
    torchao pass, a converter): which library and version, where, and what the user can do."""
    from importlib import metadata

    package, filename, lineno = site
    try:
        named = f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:  # an import name that is not a distribution name
        named = package
    code = _source_line(filename, lineno)
    where = f"{Path(filename).name}:{lineno}" + (f", `{code}`" if code else "")
    return QExportError(
        f"{family} failed inside {named} ({where}), not in the model's code: {describe_exception(err).rstrip('.')} "
        f"-- a limitation of that library for this model; the other families are unaffected, and "
        f"`--only` without {family} leaves it out.")


def explain_capture_failure(err: BaseException, family: str) -> BaseException:
    """``err`` as one sentence naming the layer it came from, when it was raised inside the model,
    or the library, when a library raised it in its own code; otherwise ``err`` itself (qexport's
    own errors pass through unchanged). Never raises."""
    if isinstance(err, QExportError) and err.__cause__ is None:
        return err
    try:
        site = failing_site(err)
        if site is None:
            library = library_site(err) if not isinstance(err, QExportError) else None
            return library_failure(family, err, library) if library else err
        name, model, filename, lineno = site
        where = describe_site(name, model, filename, lineno)
        if any(sign in str(link) or sign in type(link).__name__ for link in _chain(err) for sign in CONTROL_FLOW_SIGNS):
            return control_flow_error(family, where)
        return QExportError(f"{family} failed in {where}: {describe_exception(err)}.")
    except Exception:  # noqa: BLE001 -- explaining must never hide the error it explains
        return err


def _probes(example: torch.Tensor) -> list[torch.Tensor]:
    """Inputs that send a value-dependent branch both ways: the example, negated and scaled."""
    return [example, -example, 100 * example, -100 * example]


def _disagrees(traced: Callable, module: nn.Module, example: torch.Tensor) -> bool:
    with torch.no_grad():
        for x in _probes(example):
            expected, got = module(x), traced(x)
            if not torch.isfinite(expected).all():  # a scaled probe overflowed (fp16, exp): nothing to compare
                continue
            if not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-5):
                return True
    return False


def _warned_site(caught, model: nn.Module) -> str | None:
    """Where the first tensor-to-bool conversion happened, naming the layer when one class matches."""
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning) and TRACER_CONTROL_FLOW in str(warning.message):
            owners = [name for name, m in model.named_modules() if _defines(type(m), warning.filename, warning.lineno)]
            name = owners[0] if len(owners) == 1 else None
            return describe_site(name, model, warning.filename, warning.lineno)
    return None


def _defines(cls: type, filename: str, lineno: int) -> bool:
    forward = getattr(cls, "forward", None)
    code = getattr(forward, "__code__", None)
    if code is None or code.co_filename != filename:
        return False
    try:
        lines, start = inspect.getsourcelines(forward)
    except (OSError, TypeError):
        return False
    return start <= lineno < start + len(lines)


def _module_names_by_file() -> dict[str, str]:
    """{file: module name} of what is imported: a warning shown again keeps its module, which the
    filters match on (torch's own and :func:`qexport.core.progress.quiet_library_warnings`); without it
    Python would take the file's path as the module name, and no such filter would apply."""
    return {module.__file__: name for name, module in list(sys.modules.items()) if getattr(module, "__file__", None)}


def traced_or_refused(family: str, module: nn.Module, example: torch.Tensor):
    """``torch.jit.trace(module, example)``; when tracing converted a tensor to a Python bool (a
    branch on a value, or a shape check in library code) the traced module is run against the eager
    one on inputs that flip value branches, and a difference is refused, not saved: the file would
    give wrong answers for every input that takes the other branch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    where = _warned_site(caught, module)
    modules = _module_names_by_file() if caught else {}
    for warning in caught:  # everything else goes on as if it had not been caught
        if where is None or TRACER_CONTROL_FLOW not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno,
                                   module=modules.get(warning.filename))
    if where is not None and _disagrees(traced, module, example):
        raise control_flow_error(family, where)
    return traced
