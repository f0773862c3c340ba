"""ONNX export of models that use the dynfilter ops, and the parity of onnxruntime with PyTorch.

``torch.onnx.export(..., dynamo=True)`` traces a model with :func:`torch.export.export`, in which
``dynfilter::dynamic_filter`` and ``dynfilter::modulated_deform_conv2d`` stay one node each (they are
registered ops). :func:`export_onnx` hands the exporter a translation of each into standard ONNX
operators (:func:`onnx_translations`): the dynamic filter as ``k²`` shifted slices of a zero-padded
input times the kernel channels (:mod:`dynfilter.ops.dynamic_filter_onnx`), the deformable conv as
``GridSample`` columns and a ``MatMul`` (:mod:`dynfilter.ops.deform_conv_onnx`), since onnxruntime does
not implement ONNX ``DeformConv``. What PyTorch computes is unchanged: the translations are used only
by the exporter.

The graph keeps batch, height and width symbolic; its inputs keep the forward's argument names (``x``)
and a single output is named ``output``. The example traced must have sides of at least ``min_size``:
PyTorch traces a size of 1 as a constant, so a model with a ``size_multiple`` above 1 (ADFNet pads to a
multiple of 8, so its bottleneck is 1×1 at sides up to 8) is traced at sides above that multiple. The
graph itself checks no size: the exported ADFNet gives PyTorch's result from 1×1 up.

Needs the ``onnx`` extra (``onnx``, ``onnxscript``; ``onnxruntime`` for :func:`onnx_parity`), imported
when a function here runs, so ``import dynfilter`` does not load them.

>>> sorted(op.name() for op in onnx_translations())
['dynfilter::dynamic_filter', 'dynfilter::fused_dynamic_filter', 'dynfilter::modulated_deform_conv2d']
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import nn

from .ops.deform_conv_onnx import modulated_deform_conv2d_onnx
from .ops.dynamic_filter_onnx import OPSET, dynamic_filter_onnx, fused_dynamic_filter_onnx

if TYPE_CHECKING:
    from torch.onnx import ONNXProgram

__all__ = ["OPSET", "onnx_translations", "untranslated_ops", "export_onnx", "onnx_parity"]

# Namespaces of the operators the exporter translates itself.
_BUILTIN_NAMESPACES = frozenset({"aten", "prims"})


def onnx_translations() -> dict[torch._ops.OpOverload, Callable[..., Any]]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: each dynfilter op's ONNX form."""
    return {
        torch.ops.dynfilter.dynamic_filter.default: dynamic_filter_onnx,
        torch.ops.dynfilter.fused_dynamic_filter.default: fused_dynamic_filter_onnx,
        torch.ops.dynfilter.modulated_deform_conv2d.default: modulated_deform_conv2d_onnx,
    }


def _module_of(node: torch.fx.Node) -> str:
    """``'name' (Type)`` of the innermost module that called ``node``, from the export's module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model's own forward"
    path, kind = list(stack.values())[-1]
    kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
    return f"{path or '(top level)'!r} ({kind})"


def untranslated_ops(program: torch.export.ExportedProgram) -> list[tuple[str, str]]:
    """``(op, module)`` for every registered non-ATen op in ``program`` with no ONNX translation here.

    The exporter would fail on these; ``module`` is the innermost module that called the op.
    """
    known = onnx_translations()
    found = []
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target.namespace in _BUILTIN_NAMESPACES or target in known:
            continue
        found.append((target.name(), _module_of(node)))
    return found


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, then every module's own training flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _dynamic_shapes(inputs: tuple[torch.Tensor, ...], min_size: int) -> tuple[dict[int, Any] | None, ...]:
    """One shared batch, height and width dimension for every 4-D input; other inputs static."""
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height", min=min_size)
    width = torch.export.Dim("width", min=min_size)
    return tuple({0: batch, 2: height, 3: width} if t.dim() == 4 else None for t in inputs)


def _example(inputs: torch.Tensor | Sequence[torch.Tensor], dynamic: bool, min_size: int) -> tuple[torch.Tensor, ...]:
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        got = [type(t).__name__ for t in inputs]
        raise ValueError(f"export_onnx needs one example tensor or a sequence of tensors, got {got}")
    if not dynamic:
        return inputs
    for t in inputs:
        if t.dim() == 4 and min(t.shape[-2:]) < min_size:
            raise ValueError(
                f"the example input of size {tuple(t.shape[-2:])} is below min_size={min_size}: "
                f"sizes are traced from {min_size} up, so the example's sides must be at least {min_size}"
            )
    # A batch of 1 would be traced as a constant 1 (PyTorch specialises sizes 0 and 1).
    return tuple(t.expand(2, *t.shape[1:]).contiguous() if t.dim() == 4 and t.shape[0] == 1 else t for t in inputs)


def _first_lines(exc: BaseException, n: int = 4) -> str:
    return " ".join(str(exc).strip().splitlines()[:n])


def export_onnx(
    model: nn.Module,
    example: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike | None = None,
    *,
    dynamic: bool = True,
    min_size: int | None = None,
    opset: int = OPSET,
    optimize: bool = True,
) -> ONNXProgram:
    """Export ``model`` (in eval mode, without gradients) to ONNX with the dynfilter ops translated.

    Args:
        model (nn.Module): any model; its training flags are restored afterwards.
        example (Tensor[B, C, H, W] or a sequence of tensors): the forward's inputs to trace with.
        path (str or PathLike, optional): where to save the ``.onnx`` file.
        dynamic (bool): keep batch, height and width of every 4-D input symbolic (one shared size for
            all of them); ``False`` fixes the example's sizes.
        min_size (int, optional): the smallest height and width of the traced range (and of the
            example); defaults to ``size_multiple + 1`` for a model with a ``size_multiple`` above 1, else 2.
        opset (int): the ONNX opset (the translations are written in opset :data:`OPSET`).
        optimize (bool): run the exporter's graph optimiser (constant folding, dead nodes); ``False``
            exports about twice as fast and computes the same.

    Returns:
        torch.onnx.ONNXProgram: ``.model_proto`` is the ONNX model; saved at ``path`` if given.

    Raises:
        ValueError: the model calls a registered op with no ONNX translation (naming the op and the
            module that calls it), or cannot be traced with symbolic sizes.
    """
    multiple = int(getattr(model, "size_multiple", 1))
    min_size = (multiple + 1 if multiple > 1 else 2) if min_size is None else min_size
    if min_size < 1:
        raise ValueError(f"min_size must be a positive int, got {min_size!r}")
    inputs = _example(example, dynamic, min_size)
    name = type(model).__name__
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints.*")
        try:
            shapes = _dynamic_shapes(inputs, min_size) if dynamic else None
            program = torch.export.export(model, inputs, dynamic_shapes=shapes)
        except torch._dynamo.exc.UserError as exc:
            raise ValueError(
                f"{name} cannot be traced with symbolic batch, height and width (sides >= {min_size}): "
                f"{_first_lines(exc)}; try dynamic=False or a larger min_size"
            ) from exc
        missing = untranslated_ops(program)
        if missing:
            listed = "; ".join(f"{op} called by module {module}" for op, module in dict.fromkeys(missing))
            raise ValueError(
                f"cannot export {name} to ONNX: no ONNX translation for {listed}. Translated ops: "
                f"{sorted(op.name() for op in onnx_translations())}; a module with an impl switch can use one "
                "of them, e.g. dynfilter.set_impls(model, modulated_deform_conv2d='lean')"
            )
        outputs = len(program.graph_signature.user_outputs)
        onnx_program = torch.onnx.export(
            program, (), dynamo=True, opset_version=opset, custom_translation_table=onnx_translations(), verbose=False,
            optimize=optimize, output_names=["output"] if outputs == 1 else [f"output_{i}" for i in range(outputs)],
        )
    if path is not None:
        onnx_program.save(os.fspath(path))
    return onnx_program


def onnx_parity(
    onnx_model: ONNXProgram | str | os.PathLike | bytes,
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
) -> float:
    """Max absolute difference between onnxruntime (CPU) and ``model`` (eval, no grad) on ``inputs``.

    Args:
        onnx_model: an :func:`export_onnx` result, a ``.onnx`` path or the serialised model.
        model (nn.Module): the PyTorch model it was exported from.
        inputs (Tensor or sequence of tensors): the forward's inputs, fed in order.

    Returns:
        float: ``max |ort − torch|`` over every output element (of the first output).
    """
    import onnxruntime

    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if hasattr(onnx_model, "model_proto"):
        onnx_model = onnx_model.model_proto.SerializeToString()
    elif not isinstance(onnx_model, bytes):
        onnx_model = os.fspath(onnx_model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model takes {len(names)} inputs {names}, got {len(inputs)} tensors")
    got = session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)})[0]
    with _eval_mode(model), torch.no_grad():
        expected = model(*inputs)
    if tuple(got.shape) != tuple(expected.shape):
        raise ValueError(f"onnxruntime gave an output of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    return float((torch.from_numpy(got).to(expected.dtype) - expected.cpu()).abs().max()) if expected.numel() else 0.0
