"""Why an exporter could not capture a model, in one sentence that names the layer.

Every exporter runs the model's Python ``forward``: torch.export and FX trace it symbolically,
``torch.jit.trace`` records one run. Python control flow on tensor *values* (``if x.mean() > 0:``)
cannot be captured: torch.export raises ``GuardOnDataDependentSymNode`` deep inside torch, FX a
``TraceError`` without a location, and ``torch.jit.trace`` only warns and silently bakes in the
branch the example input took. The failing frame of the user's code is on the traceback of the
error (or in the warning), so the module whose ``forward`` it is can be named.
"""

from __future__ import annotations

import inspect
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from qexport.errors import QExportError, describe_exception

CONTROL_FLOW_SIGNS = ("data-dependent", "GuardOnDataDependentSymNode", "cannot be used as inputs to control flow",
                      "Python boolean")
TRACER_CONTROL_FLOW = "Converting a tensor to a Python boolean"


def layer_at(model: nn.Module, filename: str, lineno: int) -> str | None:
    """The name of the module whose ``forward`` holds ``filename:lineno`` ("" for the model itself)."""
    for name, module in model.named_modules():
        forward = getattr(type(module), "forward", None)
        code = getattr(forward, "__code__", None)
        if code is None or code.co_filename != filename:
            continue
        try:
            lines, start = inspect.getsourcelines(forward)
        except (OSError, TypeError):
            continue
        if start <= lineno < start + len(lines):
            return name
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def failing_site(err: BaseException, model: nn.Module) -> tuple[str, traceback.FrameSummary] | None:
    """The innermost frame, over the whole exception chain, that runs inside one of ``model``'s modules."""
    for link in _chain(err):
        for frame in reversed(traceback.extract_tb(link.__traceback__)):
            name = layer_at(model, frame.filename, frame.lineno or 0)
            if name is not None:
                return name, frame
    return None


def describe_site(name: str, model: nn.Module, filename: str, lineno: int, code: str | None) -> str:
    """"layer 'gate' (DataDependentGate) at file.py:12 (`if x.mean() > 0:`)"."""
    layer = f"layer '{name}' ({type(model.get_submodule(name)).__name__})" if name else "the model's own forward"
    return f"{layer} at {Path(filename).name}:{lineno}" + (f" (`{code.strip()}`)" if code else "")


def control_flow_error(family: str, where: str) -> QExportError:
    return QExportError(
        f"{family} cannot capture the model: Python control flow on tensor values in {where} takes a branch per input, "
        f"and an exported graph has one -- rewrite it with torch.where or torch.cond, or leave {family} out.")


def explain_capture_failure(err: BaseException, family: str, model: nn.Module) -> BaseException:
    """``err`` as one sentence naming the layer it came from, when it was raised inside the model;
    otherwise ``err`` itself (qexport's own errors pass through unchanged)."""
    if isinstance(err, QExportError) and err.__cause__ is None:
        return err
    site = failing_site(err, model)
    if site is None:
        return err
    name, frame = site
    where = describe_site(name, model, frame.filename, frame.lineno or 0, frame.line)
    if any(sign in str(link) for link in _chain(err) for sign in CONTROL_FLOW_SIGNS):
        return control_flow_error(family, where)
    return QExportError(f"{family} failed in {where}: {describe_exception(err)}.")


@contextmanager
def refusing_baked_branches(family: str, model: nn.Module) -> Iterator[None]:
    """Around ``torch.jit.trace``: a traced branch on a tensor value is refused, not saved (the
    file would give wrong answers for every input that takes the other branch)."""
    from torch.jit import TracerWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TracerWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, TracerWarning) and TRACER_CONTROL_FLOW in str(warning.message):
            name = layer_at(model, warning.filename, warning.lineno)
            where = (describe_site(name, model, warning.filename, warning.lineno, None) if name is not None
                     else f"{Path(warning.filename).name}:{warning.lineno}")
            raise control_flow_error(family, where)
