"""Building blocks of CGNet, named after the paper: CG block, f_loc, f_sur, f_joi, f_glo, input injection.

Every BatchNorm uses the eps the authors trained with (1e-3) unless told otherwise, every convolution is
bias-free, and padding keeps ``(k - 1) / 2 * dilation`` so any input size works.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cgnet.models.space_to_batch import DilatedDepthwiseConv2d

Activation = Literal["prelu", "relu"]
Residual = Literal["global", "local", "none"]

OFFICIAL_BN_EPS = 1e-3


class PReLU(nn.PReLU):
    """The per-channel PReLU (an ``nn.PReLU``: same parameter, same keys), which can train on the CPU
    with a one-pass backward (:mod:`cgnet.models.cpu_prelu`); :func:`use_cpu_prelu` switches it."""

    cpu_backward: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.cpu_backward
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and torch.is_grad_enabled()
            and not torch.jit.is_tracing()
        ):
            return torch.ops.cgnet.prelu(x, self.weight)
        return super().forward(x)


def use_cpu_prelu(net: nn.Module, enabled: bool = True) -> int:
    """Train every PReLU of ``net`` on the CPU with the one-pass backward (or switch back); returns
    how many use it: 0 when the C++ kernels cannot be built here (said once; torch's runs instead)."""
    if enabled:
        from cgnet.inference import cpu_kernels

        enabled = cpu_kernels.available_or_warn()
        if enabled:
            import cgnet.models.cpu_prelu  # noqa: F401  (registers torch.ops.cgnet.prelu)
    activations = [m for m in net.modules() if isinstance(m, PReLU)]
    for act in activations:
        act.cpu_backward = enabled
    return len(activations) if enabled else 0


def make_activation(kind: Activation, channels: int) -> nn.Module:
    """The paper uses a per-channel PReLU everywhere; ReLU is its ablation."""
    if kind == "prelu":
        return PReLU(channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation must be 'prelu' or 'relu', got {kind!r}")


class BNAct(nn.Sequential):
    """BatchNorm + activation: the 'join' after each concatenation and the f_joi of a CG block."""

    def __init__(
        self, channels: int, activation: Activation = "prelu", bn_eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=bn_eps)
        self.act = make_activation(activation, channels)


class ConvBNAct(nn.Sequential):
    """Bias-free convolution + BatchNorm + activation (the stem and the entry of every CG block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        activation: Activation = "prelu",
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.act = make_activation(activation, out_channels)


def depthwise_conv(channels: int, dilation: int = 1) -> nn.Conv2d:
    """Channel-wise 3x3 convolution: f_loc with dilation 1, f_sur with the surrounding-context dilation."""
    if dilation > 1:
        return DilatedDepthwiseConv2d(channels, dilation)
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)


class FGlo(nn.Module):
    """Global context extractor f_glo: a squeeze-and-excitation style channel re-weighting."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(
                f"f_glo reduction {reduction} leaves no hidden units for {channels} channels"
            )
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class _LocalSurrounding(nn.Module):
    """What CG and CG-Down blocks share: f_loc and f_sur of one input, concatenated for f_joi.

    ``fused_on`` names the device types on which the pair runs as one fused Triton op with its own
    backward (:mod:`cgnet.models.context_kernels`); :func:`use_fused_context` sets it for a network.
    Tracing (TorchScript, ONNX) always records the two plain convolutions.
    """

    f_loc: nn.Conv2d
    f_sur: nn.Conv2d
    fused_on: frozenset[str] = frozenset()

    def joint_features(self, y: torch.Tensor) -> torch.Tensor:
        if y.device.type in self.fused_on and not torch.jit.is_tracing():
            return torch.ops.cgnet.context_pair(
                y, self.f_loc.weight, self.f_sur.weight, self.f_sur.dilation[0]
            )
        return torch.cat([self.f_loc(y), self.f_sur(y)], 1)


def use_fused_context(net: nn.Module, enabled: bool = True) -> int:
    """Switch every CG and CG-Down block of ``net`` to (or back from) the fused f_loc + f_sur op
    where it can run (CUDA, or the CPU under Triton's interpreter); returns how many blocks.

    Enabling imports triton (an ImportError says how to install it); disabling never does.
    """
    devices: frozenset[str] = frozenset()
    if enabled:
        from cgnet.models import context_kernels  # registers torch.ops.cgnet.context_pair

        devices = frozenset({"cuda", "cpu"} if context_kernels.INTERPRETED else {"cuda"})
    blocks = [m for m in net.modules() if isinstance(m, _LocalSurrounding)]
    for block in blocks:
        block.fused_on = devices
    return len(blocks)


class CGBlock(_LocalSurrounding):
    """Context Guided block: joint local (f_loc) and surrounding (f_sur) features, refined by f_glo.

    ``residual='global'`` (GRL, the paper's choice) adds the input after f_glo, ``'local'`` (LRL) adds it
    after f_joi, ``'none'`` drops it (the paper's Table 4 ablation).
    """

    def __init__(
        self,
        channels: int,
        dilation: int,
        reduction: int,
        *,
        use_f_glo: bool = True,
        residual: Residual = "global",
        activation: Activation = "prelu",
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if residual not in ("global", "local", "none"):
            raise ValueError(f"residual must be 'global', 'local' or 'none', got {residual!r}")
        half = channels // 2
        self.residual = residual
        self.conv_in = ConvBNAct(channels, half, 1, activation=activation, bn_eps=bn_eps)
        self.f_loc = depthwise_conv(half)
        self.f_sur = depthwise_conv(half, dilation)
        self.f_joi = BNAct(2 * half, activation, bn_eps)
        self.f_glo = FGlo(2 * half, reduction) if use_f_glo else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        y = self.f_joi(self.joint_features(y))
        if self.residual == "local":
            y = y + x
        y = self.f_glo(y)
        if self.residual == "global":
            y = y + x
        return y


class CGDownBlock(_LocalSurrounding):
    """Down-sampling CG block that opens stages 2 and 3: a 3x3 stride-2 conv feeds f_loc and f_sur,
    then a 1x1 ``reduce`` halves the joint features before f_glo. It has no residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation: int,
        reduction: int,
        *,
        use_f_glo: bool = True,
        activation: Activation = "prelu",
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv_in = ConvBNAct(
            in_channels, out_channels, 3, stride=2, activation=activation, bn_eps=bn_eps
        )
        self.f_loc = depthwise_conv(out_channels)
        self.f_sur = depthwise_conv(out_channels, dilation)
        self.f_joi = BNAct(2 * out_channels, activation, bn_eps)
        self.reduce = nn.Conv2d(2 * out_channels, out_channels, 1, bias=False)
        self.f_glo = FGlo(out_channels, reduction) if use_f_glo else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        y = self.f_joi(self.joint_features(y))
        return self.f_glo(self.reduce(y))


class InputInjection(nn.Module):
    """The raw image average-pooled ``times`` times (3x3, stride 2), concatenated into later stages."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = self.pool(x)
        return x
