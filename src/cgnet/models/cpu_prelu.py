"""PReLU trained on the CPU with a one-pass backward (``cgnet::prelu``), from the project's C++ kernels.

torch computes PReLU's backward on the CPU in several passes with a full-size temporary for the
slope's gradient: in a CPU training step of CGNet (batch 8, 256x256, 2 threads) its 54 calls took
~23% of the step. One C++ pass (:func:`cgnet.inference.cpu_kernels.prelu_backward`, built with the
inference kernels by the machine's compiler) computes the input gradient (bit-identical to torch's)
and the slope's gradient (summed in a fixed order) 10-24x faster (batch 8, 32 to 256 channels, NCHW
and channels-last, 2 threads). The forward stays torch's.

The op is registered with ``torch.library`` for CPU tensors, so ``torch.compile`` sees one opaque
node; :class:`cgnet.models.blocks.PReLU` calls it only for float32 CPU training with gradients on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cgnet.inference import cpu_kernels

__all__ = ["prelu"]


@torch.library.custom_op("cgnet::prelu", mutates_args=(), device_types="cpu")
def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """``torch.prelu(x, weight)``, whose backward is :func:`prelu_backward`."""
    return torch.prelu(x, weight)


@prelu.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("cgnet::prelu_backward", mutates_args=(), device_types="cpu")
def prelu_backward(grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of :func:`prelu` with respect to x and weight, in one pass."""
    return cpu_kernels.prelu_backward(grad, x, weight)


@prelu_backward.register_fake
def _(grad: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor]:
    x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
    return prelu_backward(grad, x, weight)


prelu.register_autograd(_backward, setup_context=_setup_context)
