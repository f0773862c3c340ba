"""One training step under the trainer's options: precision, memory layout and ``torch.compile``.

:class:`TrainStep` is what :func:`experiments.train.fit` calls once per iteration and what
``dynfilter bench --suite train`` times, so the benchmark measures the trainer's own step. The options
(``train.precision``, ``train.channels_last``, ``train.compile``; defaults fp32, contiguous, eager):

- ``fp32``: everything in float32, as before the options existed (bit-identical to the plain loop).
- ``bf16``: the forward runs under ``torch.autocast(dtype=torch.bfloat16)``: convolutions and matrix
  products in bfloat16, the ops autocast keeps in float32 in float32. bfloat16 has float32's exponent
  range, so no loss scaling is needed.
- ``fp16``: float16 autocast, with a :class:`torch.amp.GradScaler` that multiplies the loss before the
  backward pass so small gradients do not flush to zero, skips steps whose gradients overflowed and
  adapts the scale; its state is kept in the checkpoint (``"scaler"``).

In every case the weights, the gradients and Adam's moments stay float32, and the loss is computed
in float32 from the output cast up. ``channels_last`` stores 4-D weights and batches NHWC (what
oneDNN and cuDNN prefer for convolutions); ``compile`` runs forward, loss and backward through
``torch.compile`` (the optimiser step stays eager). The project's custom ops
(``dynfilter::dynamic_filter``, ``dynfilter::modulated_deform_conv2d`` and their backward ops) have
fake kernels and autograd formulas registered, so autocast, NHWC inputs and compile all see each of
them as one op; ``tests/experiments/test_train_step.py`` checks a training step of each through every
option against the float32 eager step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from .settings import PRECISIONS

__all__ = ["AUTOCAST_DTYPES", "FP16_DEVICES", "COMPILE_BACKEND", "check_precision", "memory_format", "TrainStep"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``train.precision`` → the autocast dtype (``None``: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Device types on which fp16 training (float16 autocast and a gradient scaler) is offered: torch 2.14
#: has float16 autocast and ``GradScaler`` on both (on a CPU without float16 arithmetic it is emulated, slowly).
FP16_DEVICES: tuple[str, ...] = ("cuda", "cpu")
#: The ``torch.compile`` backend of ``train.compile`` (tests set ``aot_eager``: the same graphs, no code generation).
COMPILE_BACKEND = "inductor"


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ``ValueError`` unless ``precision`` is known and can be trained with on ``device``.

    >>> check_precision("bf16", "cpu")
    >>> check_precision("fp8", "cpu")
    Traceback (most recent call last):
    ...
    ValueError: train.precision must be one of fp32, bf16, fp16, got 'fp8'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp16" and kind not in FP16_DEVICES:
        raise ValueError(
            f"train.precision fp16 (float16 autocast with a gradient scaler) runs on {' and '.join(FP16_DEVICES)} "
            f"devices, not {kind}; use bf16 or fp32 there"
        )


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if channels_last else torch.contiguous_format


class TrainStep:
    """One optimiser step of ``loss(net(noisy), clean)`` under the trainer's options.

    The model is expected on ``device`` already, in the memory format :func:`memory_format` gives
    (:func:`experiments.train.fit` puts it there before building the optimiser); batches are moved and
    laid out here.

    Args:
        net: the model (possibly DDP-wrapped), in training mode.
        optimizer: its optimiser.
        loss: ``loss(output, clean) → scalar``, computed in float32.
        precision (str): ``fp32``, ``bf16`` or ``fp16`` (:data:`experiments.settings.PRECISIONS`).
        channels_last (bool): lay the batches out NHWC.
        compile (bool): run forward, loss and backward under ``torch.compile``.
        device: where the model lives.
        compile_backend (str): the ``torch.compile`` backend (default :data:`COMPILE_BACKEND`; ``aot_eager``
            traces the same forward and backward graphs through the fake kernels without generating code).

    >>> net = nn.Conv2d(1, 1, 3, padding=1); opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> step = TrainStep(net, opt, lambda y, t: ((y - t) ** 2).mean(), precision="bf16")
    >>> x = torch.rand(2, 1, 5, 5); step(x, x).dtype
    torch.float32
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Loss,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        device: torch.device | str = "cpu",
        compile_backend: str | None = None,
    ) -> None:
        self.device = torch.device(device)
        check_precision(precision, self.device)
        self.net, self.optimizer, self.loss = net, optimizer, loss
        self.precision, self.channels_last, self.compile = precision, bool(channels_last), bool(compile)
        self.dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        forward = self._forward_loss
        backend = compile_backend or COMPILE_BACKEND
        self._forward = torch.compile(forward, backend=backend) if self.compile else forward

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _forward_loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            output = self.net(noisy)
        return self.loss(output.float(), clean)  # .float() is a no-op in fp32

    def __call__(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Zero the gradients, compute the loss, back-propagate and step; returns the loss (detached)."""
        layout = memory_format(self.channels_last)
        noisy = noisy.to(self.device, memory_format=layout)
        clean = clean.to(self.device, memory_format=layout)
        self.optimizer.zero_grad(set_to_none=True)
        value = self._forward(noisy, clean)
        if self.scaler is None:
            value.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(value).backward()
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        return value.detach()

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state (fp16), else ``None``: what a checkpoint keeps as ``"scaler"``."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; ``None`` (a checkpoint without a scaler) keeps the fresh scaler."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
