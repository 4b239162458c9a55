"""Every change qexport makes to torch's and torchao's internals, declared as data.

A patch of a private attribute keeps working only while the library keeps that attribute and its
call signature. Each one is a :class:`Patch` in :data:`PATCHES`, naming what it replaces or relies
on (``targets``), why it exists and the pinned versions it was written and checked against
(``applies_to``); ``tests/test_patches.py`` resolves every target in the installed versions, so a
library upgrade that moves or reshapes one fails a test instead of silently not patching. A patch
is applied only inside its context manager and undone on the way out; a family's build runs in its
own child process (``isolation.run_family``), so no patch reaches another family's build.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Patch:
    """One change to a library's internals. A target is ``"module:attribute[.attribute]"`` with,
    for a callable the patch calls or replaces, the parameter names it is written against in
    parentheses: ``"pkg.mod:helper(m, conv_fn)"``."""

    name: str
    targets: tuple[str, ...]  # what it replaces or relies on, each resolvable in the installed library
    why: str                  # what goes wrong (or slow) without it
    applies_to: str           # the pinned versions it was written against, as a requirement: "torchao==0.18.*"
    apply: Callable[[], contextlib.AbstractContextManager]  # the context manager the families enter


def split_target(target: str) -> tuple[str, str, tuple[str, ...] | None]:
    """``"pkg.mod:Cls.meth(self, x)"`` → ``("pkg.mod", "Cls.meth", ("self", "x"))``; no parentheses: None."""
    module, _, rest = target.partition(":")
    attribute, _, params = rest.partition("(")
    names = tuple(p.strip() for p in params.rstrip(")").split(",") if p.strip()) if params else None
    return module, attribute, names


def resolve(target: str) -> object:
    """The object a target names (ImportError or AttributeError where the library moved it)."""
    module, attribute, _ = split_target(target)
    found: object = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def target_problem(target: str) -> str | None:
    """None when the target resolves with the parameters it declares; else what changed."""
    try:
        found = resolve(target)
    except (ImportError, AttributeError) as err:
        return f"{target} does not resolve ({err})"
    _, _, expected = split_target(target)
    if expected is not None:
        actual = tuple(inspect.signature(found).parameters)
        if actual != expected:
            return f"{target} now takes ({', '.join(actual)})"
    return None


CONV_BN_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")  # prepare_qat_pt2e's, convert_pt2e's


@contextlib.contextmanager
def conv_bn_patterns_only_for_present_convolutions() -> Iterator[None]:
    """Within this block, torchao's QAT ``prepare_qat_pt2e`` (conv-bn fusion) and ``convert_pt2e``
    (conv-bn folding) match patterns only for the convolution kinds the graph contains.

    Each tries conv1d, conv2d, conv_transpose1d and conv_transpose2d, exporting a set of pattern
    graphs for each (~0.5 s an export): on a 2-core host 6 s of prepare and 23 s of convert went
    there for ResNet18, three quarters of it for kinds a 2-D classifier never has. A kind absent
    from the graph cannot match, so skipping it changes nothing but the time.
    """
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils

    aten = torch.ops.aten
    kinds = {F.conv1d: aten.conv1d, F.conv2d: aten.conv2d,
             F.conv_transpose1d: aten.conv_transpose1d, F.conv_transpose2d: aten.conv_transpose2d}
    originals = {name: getattr(qat_utils, name) for name in CONV_BN_HELPERS}

    def only_if_present(original):
        def helper(m: torch.fx.GraphModule, conv_fn, example_inputs, is_cuda: bool) -> torch.fx.GraphModule:
            packet = kinds.get(conv_fn)
            if packet is not None and not any(getattr(node.target, "overloadpacket", None) is packet
                                              for node in m.graph.nodes):
                return m
            return original(m, conv_fn, example_inputs, is_cuda=is_cuda)
        return helper

    for name, original in originals.items():
        setattr(qat_utils, name, only_if_present(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(qat_utils, name, original)


@contextlib.contextmanager
def prepacked_dynamic_convolutions() -> Iterator[bool]:
    """Let Inductor pre-pack fp32 conv weights although the batch is dynamic.

    For a symbolic input size, Inductor's mkldnn pass skips weight pre-packing ("for dynamic
    shape case, we need to pack weight in runtime"), so every call reorders every weight: the
    dynamic-batch fp32 package ran 10.8 ms at batch 1 here vs 2.6 ms when pre-packed with the
    batch's size hint. oneDNN re-lays out a pre-packed weight itself when another batch needs
    another layout, so results are identical at every batch (tested). Yields False, changing
    nothing, where this torch's internals differ from the ones this was written against.
    """
    try:
        from torch._inductor.fx_passes import mkldnn_fusion as fusion
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        original_free, original_op = fusion.has_free_symbols, fusion._get_mkldnn_device_op
        cpu_op_class = type(original_op("cpu"))
    except (ImportError, AttributeError, RuntimeError):
        yield False
        return

    class HintedCpuOp(cpu_op_class):
        def pack_conv_weight(self, graph, is_transposed, weight, constant_args, input_size):
            size = [optimization_hint(s) if isinstance(s, torch.SymInt) else s for s in input_size]
            return super().pack_conv_weight(graph, is_transposed, weight, constant_args, size)

    def free_symbols_except_conv_inputs(value) -> bool:
        if isinstance(value, (torch.Size, tuple, list)) and len(value) == 4:  # an NCHW conv input size
            return False
        return original_free(value)

    fusion.has_free_symbols = free_symbols_except_conv_inputs
    fusion._get_mkldnn_device_op = lambda device: HintedCpuOp() if device == "cpu" else original_op(device)
    try:
        yield True
    finally:
        fusion.has_free_symbols, fusion._get_mkldnn_device_op = original_free, original_op


QAT_UTILS = "torchao.quantization.pt2e.qat_utils"
MKLDNN_FUSION = "torch._inductor.fx_passes.mkldnn_fusion"

PATCHES: tuple[Patch, ...] = (
    Patch(name="conv-bn patterns only for present convolutions",
          targets=tuple(f"{QAT_UTILS}:{helper}(m, conv_fn, example_inputs, is_cuda)" for helper in CONV_BN_HELPERS),
          why="torchao's QAT prepare and convert export conv-bn patterns for four convolution kinds; the kinds "
              "a graph lacks cannot match and cost three quarters of their time (pt2e-int8-qat)",
          applies_to="torchao==0.18.*", apply=conv_bn_patterns_only_for_present_convolutions),
    Patch(name="pre-packed dynamic-batch convolutions",
          targets=(f"{MKLDNN_FUSION}:has_free_symbols(val)",
                   f"{MKLDNN_FUSION}:_get_mkldnn_device_op(device_type)",
                   f"{MKLDNN_FUSION}:CpuMkldnnDeviceOp.pack_conv_weight"
                   "(self, graph, is_transposed, weight, constant_args, input_size)",
                   "torch.fx.experimental.symbolic_shapes:optimization_hint(a, fallback)"),
          why="with a dynamic batch, Inductor re-packs every fp32 convolution weight on every call (4x slower at "
              "batch 1); pre-packed with the batch's size hint, results are identical (pt2e-fp32, pt2e-int8's "
              "float layers)",
          applies_to="torch==2.14.*", apply=prepacked_dynamic_convolutions),
)
