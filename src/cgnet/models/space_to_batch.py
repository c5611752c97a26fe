"""f_sur's dilated channel-wise convolution, trained on the CPU as an undilated one (space-to-batch).

oneDNN computes the weight gradient of a *dilated* depthwise 3x3 convolution several times slower
than that of an undilated one (batch 8, 64 channels, 45x60, dilation 4, 2 threads: 19 ms vs 4 ms).
A dilation-d convolution is exactly an undilated convolution on each of the d x d interleaved
sub-grids of its input (the "space-to-batch" form of atrous convolution), so training on the CPU
regroups the input, runs the fast kernel and puts the output back: same result to float rounding,
fewer milliseconds (fwd+bwd 30 -> 18 ms for that case; docs/benchmarks.md has the full step).
Evaluation, export and GPUs keep the plain dilated convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def space_to_batch_depthwise_conv2d(x: Tensor, weight: Tensor, dilation: int) -> Tensor:
    """``conv2d(x, weight, padding=dilation, dilation=dilation, groups=C)`` via d*d undilated convs.

    Output pixel (d*a + r, d*b + s) only sees input pixels (d*a' + r, d*b' + s): the sub-grid
    (r, s). Zero-padding the input up to a multiple of d keeps the convolution's zero border.
    """
    n, c, h, w = x.shape
    d = dilation
    hp, wp = -(-h // d) * d, -(-w // d) * d
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, wp - w, 0, hp - h))
    grids = x.reshape(n, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4)
    y = F.conv2d(grids.reshape(n * d * d, c, hp // d, wp // d), weight, None, 1, 1, 1, c)
    y = y.reshape(n, d, d, c, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hp, wp)
    return y[:, :, :h, :w] if (hp, wp) != (h, w) else y


class DilatedDepthwiseConv2d(nn.Conv2d):
    """f_sur: a dilated channel-wise 3x3 convolution (an ``nn.Conv2d``, same parameters and keys).

    ``space_to_batch`` (off by default; :func:`use_space_to_batch` switches a whole network) runs
    CPU training steps through :func:`space_to_batch_depthwise_conv2d`.
    """

    space_to_batch: bool = False

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__(
            channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.space_to_batch
            and self.training
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not torch.jit.is_tracing()
        ):
            return space_to_batch_depthwise_conv2d(x, self.weight, self.dilation[0])
        return super().forward(x)


def use_space_to_batch(net: nn.Module, enabled: bool = True) -> int:
    """Switch every f_sur of ``net`` to (or back from) the space-to-batch form; returns how many."""
    convs = [m for m in net.modules() if isinstance(m, DilatedDepthwiseConv2d)]
    for conv in convs:
        conv.space_to_batch = enabled
    return len(convs)
