"""Fast inference for CGNet: the BatchNorm-folded network, channels-last, compile and CUDA graphs.

:func:`optimize` turns a trained :class:`~cgnet.models.CGNet` into an inference-only module with the
same call signature (normalised float NCHW in, logits at input size out). It folds every BatchNorm
that sits right after a convolution into that convolution, including the f_joi BatchNorm that follows
the f_loc / f_sur concatenation (a concat only splits channels, and both convs are depthwise), keeps
the remaining join BatchNorms as one per-channel affine, runs channels-last, and optionally compiles.
docs/benchmarks.md records what each step buys and why. Fused kernels take over the memory-bound
chains: on the CPU (channels-last) each CG block's f_loc / f_sur / f_joi / concatenation / f_glo
pooling and each join run as compiled C++ (:mod:`cgnet.inference.cpu_kernels`, used automatically
when a compiler is at hand); on CUDA ``kernels=True`` runs the CG blocks through Triton
(:mod:`cgnet.inference.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cgnet.inference import cpu_kernels as cpu_ops
from cgnet.models.blocks import BNAct, CGBlock, CGDownBlock, ConvBNAct, FGlo
from cgnet.models.cgnet import CGNet
from cgnet.models.parts import PARTS, Kind
from cgnet.runtime import flush_denormals, reuse_cpu_memory

__all__ = ["Backend", "FastCGNet", "fold_network", "optimize"]


# Where the fused kernels come from: Triton (CUDA, or the CPU under its interpreter) or the compiled
# C++ kernels (CPU, channels-last).
Backend = Literal["triton", "cpu"]


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` (computed in float64 to keep folding exact)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("optimize() needs BatchNorm running statistics (track_running_stats=True)")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _slope(act: nn.Module) -> Tensor | None:
    """PReLU slopes per channel, or None for ReLU (the paper's ablation)."""
    if isinstance(act, nn.PReLU):
        return act.weight.detach().float().clone()
    if isinstance(act, nn.ReLU):
        return None
    raise TypeError(f"cannot fold activation {type(act).__name__}")


def _activate(x: Tensor, slope: Tensor | None) -> Tensor:
    return F.relu(x) if slope is None else F.prelu(x, slope)


class KernelParams:
    """Float32 contiguous copies of the parameters a module's fused kernels read, made once.

    A half-precision network holds its buffers in half precision, which torch's ops need; the fused
    kernels read float32. Converting on every call cost one extra launch per tensor, 225 per forward
    of the default network, each a node of its own inside a CUDA graph. The copies are
    remade whenever a source tensor is replaced or changed in place (``.to()``, ``copy_``).
    """

    _kernel_params: tuple[tuple[object, ...], tuple[Tensor | None, ...]] | None = None

    def kernel_params(self, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
        # Cheap to check on every call (a host cost at batch 1): which tensors and their in-place
        # versions; moves and casts drop the copies in _apply. Inference tensors keep no version
        # counter, and cannot change outside inference mode.
        key = tuple(
            None if t is None else (id(t), 0 if t.is_inference() else t._version) for t in tensors
        )
        cached = self._kernel_params
        if cached is None or cached[0] != key:
            copies = tuple(None if t is None else t.detach().float().contiguous() for t in tensors)
            cached = self._kernel_params = (key, copies)
        return cached[1]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._kernel_params = None
        return super()._apply(fn, recurse)  # type: ignore[misc]


class FoldedConv(KernelParams, nn.Module):
    """A convolution with its BatchNorm folded into weight and bias, plus its activation if any."""

    # "cpu": the activation runs in place; "triton": a dense convolution, its bias and activation
    # run as one Triton kernel (FastCGNet.use_kernels(convs=True))
    kernels: Backend | None = None

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        slope: Tensor | None = None,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self.register_buffer("slope", slope)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = activation

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        scale: Tensor | None = None,
        shift: Tensor | None = None,
        act: nn.Module | None = None,
    ) -> FoldedConv:
        """``act(bn(conv(x)))`` as one convolution (+ activation), with ``bn = x * scale + shift``."""
        weight = conv.weight.detach().double()
        bias = (
            conv.bias.detach().double()
            if conv.bias is not None
            else weight.new_zeros(weight.shape[0])
        )
        if scale is not None and shift is not None:
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
        (stride, _), (padding, _), (dilation, _) = conv.stride, conv.padding, conv.dilation
        assert isinstance(padding, int)
        return cls(
            weight,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=conv.groups,
            slope=_slope(act) if act is not None else None,
            activation=act is not None,
        )

    def epilogue_params(self) -> tuple[Tensor, Tensor | None]:
        """Bias and PReLU slopes as the Triton kernels read them."""
        bias, slope = self.kernel_params(self.bias, self.slope)
        assert bias is not None
        return bias, slope

    @property
    def is_pointwise(self) -> bool:
        """A plain 1x1 convolution: a matrix product over channels at every pixel."""
        return (
            self.weight.shape[2:] == (1, 1)
            and self.stride == 1
            and self.padding == 0
            and self.groups == 1
        )

    @classmethod
    def from_conv_bn_act(cls, block: ConvBNAct) -> FoldedConv:
        return cls.from_conv(block.conv, *_bn_affine(block.bn), block.act)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels == "triton" and self.groups == 1:
            bias, slope = self.epilogue_params()
            return _kernels("triton").conv_act(
                x,
                self.weight,
                bias,
                slope,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                activation=self.activation,
            )
        y = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if not self.activation:
            return y
        if self.kernels == "cpu" and y.is_contiguous(memory_format=torch.channels_last):
            return cpu_ops.activate_(y, self.slope)
        return _activate(y, self.slope)


class Join(KernelParams, nn.Module):
    """A join's BatchNorm + activation after a concatenation, kept as one affine (it follows a PReLU,
    so it cannot be folded into a convolution exactly)."""

    kernels: Backend | None = None  # set: concatenation, affine and activation in one fused pass

    def __init__(self, join: BNAct) -> None:
        super().__init__()
        scale, shift = _bn_affine(join.bn)
        self.register_buffer("scale", scale.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
        self.register_buffer("slope", _slope(join.act))

    def forward(self, parts: list[Tensor]) -> Tensor:
        if self.kernels is not None:
            params = self.kernel_params(self.scale, self.shift, self.slope)
            return _kernels(self.kernels).join(parts, *params)
        x = torch.cat(parts, 1)
        return _activate(torch.addcmul(self.shift, x, self.scale), self.slope)


class FastFGlo(nn.Module):
    """f_glo with plain tensors: global mean -> fc -> ReLU -> fc -> sigmoid -> channel-wise product."""

    def __init__(self, fglo: FGlo) -> None:
        super().__init__()
        fc1, fc2 = fglo.fc[0], fglo.fc[2]
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        self.register_buffer("w1", fc1.weight.detach().float().clone())
        self.register_buffer("b1", fc1.bias.detach().float().clone())
        self.register_buffer("w2", fc2.weight.detach().float().clone())
        self.register_buffer("b2", fc2.bias.detach().float().clone())

    def weights(self, x: Tensor) -> Tensor:
        """The per-channel gate ``[B, C, 1, 1]``."""
        return self.gate(x.mean(dim=(2, 3)))

    def gate(self, means: Tensor) -> Tensor:
        """The per-channel gate ``[B, C, 1, 1]`` from the channel means ``[B, C]``."""
        hidden = F.relu(F.linear(means, self.w1, self.b1))
        return torch.sigmoid(F.linear(hidden, self.w2, self.b2))[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


def _kernels(backend: Backend = "triton") -> ModuleType:
    """The fused kernels of ``backend``; Triton's are imported on first use, so that cgnet itself
    never needs triton."""
    if backend == "cpu":
        return cpu_ops
    from cgnet.inference import kernels

    return kernels


class FastCGBlock(KernelParams, nn.Module):
    """A CG block (or CG-Down block) with conv_in's BN folded into conv_in and f_joi's BN folded into
    f_loc and f_sur (channel-wise: the concat only stacks their channels).

    With ``kernels`` set (:meth:`FastCGNet.use_kernels`), f_loc + f_sur + f_joi run in one fused pass
    that also sums f_glo's pooling. With Triton, f_glo's gate and the residual are a second fused
    pass; on the CPU they stay one ``addcmul``.
    """

    kernels: Backend | None = None

    def __init__(self, block: CGBlock | CGDownBlock) -> None:
        super().__init__()
        scale, shift = _bn_affine(block.f_joi.bn)
        half = block.f_loc.out_channels
        self.conv_in = FoldedConv.from_conv_bn_act(block.conv_in)
        self.f_loc = FoldedConv.from_conv(block.f_loc, scale[:half], shift[:half])
        self.f_sur = FoldedConv.from_conv(block.f_sur, scale[half:], shift[half:])
        self.register_buffer("slope", _slope(block.f_joi.act))
        self.reduce = FoldedConv.from_conv(block.reduce) if isinstance(block, CGDownBlock) else None
        self.f_glo = FastFGlo(block.f_glo) if isinstance(block.f_glo, FGlo) else None
        self.residual = block.residual if isinstance(block, CGBlock) else "none"

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels is not None:
            return self._forward_kernels(x)
        y = self.conv_in(x)
        y = _activate(torch.cat([self.f_loc(y), self.f_sur(y)], 1), self.slope)
        if self.reduce is not None:
            y = self.reduce(y)
        if self.residual == "local":
            y = y + x
        if self.f_glo is not None:
            if self.residual == "global":
                return torch.addcmul(x, y, self.f_glo.weights(y))
            y = self.f_glo(y)
        if self.residual == "global":
            y = y + x
        return y

    @property
    def chainable(self) -> bool:
        """Whether :class:`FastCGStage` can run this block as joint features + a seam: a global
        residual, f_glo, and a 1x1 conv_in (the paper's CG block), with the Triton kernels on."""
        return (
            self.kernels == "triton"
            and self.residual == "global"
            and self.f_glo is not None
            and self.reduce is None
            and self.conv_in.is_pointwise
        )

    def joint_params(self) -> tuple[Tensor | None, ...]:
        """What the fused kernels read, as float32 copies made once: f_loc's and f_sur's weights
        and biases, f_joi's slopes (None for ReLU), then f_glo's fc1/fc2 weights and biases if it
        has f_glo."""
        fglo, f_loc, f_sur = self.f_glo, self.f_loc, self.f_sur
        return self.kernel_params(
            f_loc.weight,
            f_loc.bias,
            f_sur.weight,
            f_sur.bias,
            self.slope,
            *((fglo.w1, fglo.b1, fglo.w2, fglo.b2) if fglo is not None else ()),
        )

    def _forward_kernels(self, x: Tensor) -> Tensor:
        """The same block through the fused kernels: Triton (NCHW; float32, float16 or bfloat16) or
        C++ (CPU, channels-last float32)."""
        kernels = _kernels(self.kernels)
        fglo = self.f_glo
        w_loc, b_loc, w_sur, b_sur, slope, *gate_fcs = self.joint_params()
        y = self.conv_in(x)
        # f_glo pools the joint features directly only in a CG block with a global (or no) residual;
        # after CG-Down's reduce or a local residual it pools another tensor.
        pool_joint = fglo is not None and self.reduce is None and self.residual != "local"
        y, sums = kernels.cg_joint(
            y, w_loc, b_loc, w_sur, b_sur, slope, self.f_sur.dilation, with_sums=pool_joint
        )
        if self.reduce is not None:
            y = self.reduce(y)
        if self.residual == "local":
            y = y + x
        if fglo is None:
            return y + x if self.residual == "global" else y
        if sums is None:
            sums, scale = y.mean(dim=(2, 3), dtype=torch.float32), 1.0
        else:
            scale = 1.0 / (y.shape[2] * y.shape[3])
        if self.kernels == "cpu":  # y is this block's own buffer: gate it in place
            gate = fglo.gate(sums * scale)
            return torch.addcmul(x, y, gate, out=y) if self.residual == "global" else y.mul_(gate)
        gate = kernels.fglo_gate(sums, scale, *gate_fcs)
        return kernels.gate_residual(y, gate, x if self.residual == "global" else None)


def _fold_stem(stem: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*(FoldedConv.from_conv_bn_act(m) for m in stem))


class FastCGStage(nn.Sequential):
    """A stage's CG blocks, run one after another.

    ``chained`` (set by ``FastCGNet.use_kernels(convs=True)``): when every block is
    :attr:`~FastCGBlock.chainable`, each block is two Triton kernels instead of six: its joint
    features (:func:`~cgnet.inference.kernels.cg_joint`, accumulating f_glo's sums) and the seam
    to the next block (:func:`~cgnet.inference.kernels.block_seam`: this block's gate and residual
    with the next block's conv_in, which also zeroes the next block's sums). Only the first
    block's conv_in and the last block's gate and residual run on their own.
    """

    chained: bool = False

    def forward(self, x: Tensor) -> Tensor:
        blocks = [block for block in self if isinstance(block, FastCGBlock)]
        if not self.chained or len(blocks) < 2 or not all(b.chainable for b in blocks):
            return super().forward(x)
        kernels = _kernels("triton")
        h = blocks[0].conv_in(x)
        sums: Tensor | None = None  # the first block's joint kernel zeroes its own
        for i, block in enumerate(blocks):
            w_loc, b_loc, w_sur, b_sur, slope, *fcs = block.joint_params()
            y, sums = kernels.cg_joint(
                h, w_loc, b_loc, w_sur, b_sur, slope, block.f_sur.dilation,
                with_sums=True, sums=sums,
            )  # fmt: skip
            assert sums is not None
            if i + 1 == len(blocks):
                gate = kernels.fglo_gate(sums, 1.0 / (y.shape[2] * y.shape[3]), *fcs)
                return kernels.gate_residual(y, gate, x)
            following = blocks[i + 1].conv_in
            next_sums = torch.empty(
                (y.shape[0], 2 * following.weight.shape[0]), dtype=torch.float32, device=y.device
            )
            x, h = kernels.block_seam(
                y, sums, x, fcs, (following.weight, *following.epilogue_params()), next_sums
            )
            sums = next_sums
        raise AssertionError("unreachable: a stage of two or more blocks returns in its loop")


def _fold_cg_blocks(blocks: nn.ModuleList) -> FastCGStage:
    return FastCGStage(*(FastCGBlock(b) for b in blocks))


# How each kind of CGNet part (cgnet.models.parts) folds into a module of the same name.
_FOLD: dict[Kind, Callable[[Any], nn.Module]] = {
    "stem": _fold_stem,
    "join": Join,
    "cg_down": FastCGBlock,
    "cg_blocks": _fold_cg_blocks,
    "classifier": FoldedConv.from_conv,
}
# Kinds with no module of their own: both input injections share one pool (the 4x one pools the 2x
# one again), and dropout is the identity at inference.
UNFOLDED_KINDS: frozenset[Kind] = frozenset({"injection", "dropout"})


class FastCGNet(nn.Module):
    """Inference-only CGNet with every exact BatchNorm fold applied; called like the model it came from.

    It holds buffers only (no parameters): it is for prediction, export and benchmarking, not training.
    Its modules are CGNet's parts folded by kind, under the parts' names, plus the injections' pool.
    Its logits are float32 whatever dtype it runs in.
    """

    stem: nn.Sequential
    join1: Join
    stage2_down: FastCGBlock
    stage2: FastCGStage
    join2: Join
    stage3_down: FastCGBlock
    stage3: FastCGStage
    join3: Join
    classifier: FoldedConv

    def __init__(self, model: CGNet) -> None:
        super().__init__()
        self.num_classes = model.num_classes
        self.input_injection = model.input_injection
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        for part in PARTS:
            if part.kind in _FOLD:
                self.add_module(part.name, _FOLD[part.kind](getattr(model, part.name)))
            elif part.kind not in UNFOLDED_KINDS:
                raise TypeError(f"FastCGNet cannot fold CGNet's {part.name} ({part.kind} part)")
        self.memory_format = torch.contiguous_format
        self.kernels: Backend | None = None

    def use_kernels(self, backend: Backend | None = "triton", *, convs: bool = False) -> FastCGNet:
        """Run the CG blocks and the joins through fused kernels, or (None) back through torch's
        ops.

        ``triton``: NCHW tensors on CUDA, or CPU tensors under Triton's interpreter; ImportError
        without triton. ``cpu``: channels-last float32 CPU tensors; KernelBuildError when the C++
        kernels cannot be built here (:func:`cgnet.inference.cpu_kernels.unavailable_reason`).
        ``convs`` (Triton only): the dense convolutions too (the stem, conv_in, CG-Down's reduce,
        the classifier), each with its bias and activation in one kernel instead of cuDNN's
        convolution and a separate activation pass; and the stages' CG blocks chained
        (:class:`FastCGStage`).
        """
        if convs and backend != "triton":
            raise ValueError(f"convs=True needs the triton backend, got {backend!r}")
        if backend == "triton":
            _kernels()
        elif backend == "cpu":
            cpu_ops.library()
        elif backend is not None:
            raise ValueError(f"kernel backend must be 'triton', 'cpu' or None, got {backend!r}")
        self.kernels = backend
        for module in self.modules():
            if isinstance(module, (FastCGBlock, Join)):
                module.kernels = backend
            elif isinstance(module, FoldedConv):
                # activations in place with the CPU kernels; whole convolutions with Triton's
                module.kernels = backend if backend == "cpu" or convs else None
            elif isinstance(module, FastCGStage):
                module.chained = convs
        return self

    def to_memory_format(self, memory_format: torch.memory_format) -> FastCGNet:
        """Convert the weights and make the convolutions run in ``memory_format``."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, x: Tensor) -> Tensor:
        # The 3-channel injection pools run faster on the caller's layout (NCHW); the convolutions
        # take the network's memory format.
        fmt = self.memory_format
        stem = self.stem(x.contiguous(memory_format=fmt))
        if self.input_injection:
            inj2 = self.pool(x)
            inj4 = self.pool(inj2).contiguous(memory_format=fmt)
            inj2 = inj2.contiguous(memory_format=fmt)
            y = self.join1([stem, inj2])
        else:
            y = self.join1([stem])
        down2 = self.stage2_down(y)
        y = self.stage2(down2)
        y = self.join2([y, down2, inj4] if self.input_injection else [y, down2])
        down3 = self.stage3_down(y)
        y = self.join3([down3, self.stage3(down3)])
        # Logits come back float32 whatever the network's dtype; converting the small ones before
        # upsampling writes the full-size logits once, instead of in half precision and then again.
        logits = self.classifier(y).float()
        if self.kernels == "cpu":
            return cpu_ops.resize_bilinear(logits, (x.shape[-2], x.shape[-1]))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def fold_network(model: CGNet) -> FastCGNet:
    """The eval-mode network with BatchNorms folded; exact up to float32 rounding."""
    return FastCGNet(model).eval()


# --------------------------------------------------------------------------------------------------
# CPU runtime
# --------------------------------------------------------------------------------------------------


def optimize(
    model: CGNet,
    *,
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
    compile: bool = False,
    bf16: bool = False,
    cuda_graphs: bool = False,
    reuse_memory: bool = True,
    kernels: bool = False,
    conv_kernels: bool = False,
    cpu_kernels: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The fastest exact form of ``model`` for inference, called like it (float NCHW -> logits).

    The model itself is left untouched. On the CPU this also sets two process-wide switches:
    denormals flushed to zero, and (``reuse_memory``) freed buffers kept in the heap. The numbers
    behind each choice are in docs/benchmarks.md.

    Args:
        model: a CGNet (its mode is ignored; the result is always eval-mode).
        device: where the result runs.
        channels_last: memory format; None = channels-last on the CPU (1.2x on the 2-core CPU)
            and NCHW on CUDA (folded fp32 at 1024x2048 on an H200: 5.4 ms NCHW, 9.2 ms
            channels-last; :func:`cgnet.inference.tuned` measures every form instead).
        compile: ``torch.compile`` with freezing on top; its first call per input shape compiles
            (30-50 s on the 2-core CPU), and it paid off only at full resolution there.
        bf16: bfloat16 autocast, GPU only (argmax drifts on ~1% of pixels; opt in knowingly).
        cuda_graphs: replay one CUDA graph per input shape (GPU only).
        reuse_memory: on CPU, keep freed buffers in the heap (see :func:`reuse_cpu_memory`).
        dtype: float16 / bfloat16 cast the folded network itself (CUDA only; not exact, the argmax
            moves on ~0.01-0.1% of pixels); inputs are cast on the way in, logits come back float32.
        kernels: run the CG blocks' f_loc / f_sur / f_joi / f_glo and the joins as fused Triton kernels
            (:meth:`FastCGNet.use_kernels`); CUDA only (or the CPU under Triton's interpreter),
            NCHW (channels_last None means False here), and not with ``compile``, which
            generates its own fused kernels.
        conv_kernels: with ``kernels``, the dense convolutions too (stem, conv_in, reduce,
            classifier), each with its bias and activation as one Triton kernel.
        cpu_kernels: run the CG blocks' f_loc / f_sur / f_joi / concatenation / f_glo pooling and
            the joins as the fused C++ kernels (:mod:`cgnet.inference.cpu_kernels`); CPU and
            channels-last only. None = whenever that holds, no compile is asked for and the kernels
            build here (else torch's ops, with one log line saying why); True = required.
    """
    device = torch.device(device)
    if conv_kernels and not kernels:
        raise ValueError("conv_kernels=True runs with the fused CG-block kernels: add kernels=True")
    if kernels:
        _kernels().check_device(device)
        if compile:
            raise ValueError("kernels=True and compile=True are alternatives: pick one")
        if channels_last:
            raise ValueError(
                "the fused kernels index NCHW tensors: kernels=True needs channels_last=False"
            )
        channels_last = False
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"{dtype} inference is offered on CUDA only; the CPU runs float32")
    if bf16 and device.type != "cuda":
        raise ValueError("bf16 inference is offered on CUDA only (CPU bf16 is slower here)")
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs needs device='cuda'")
    if device.type == "cpu":
        flush_denormals()
        if reuse_memory:
            reuse_cpu_memory()
    if channels_last is None:  # measured: 1.2x on the 2-core CPU; on an H200 NCHW is 1.7x faster
        channels_last = device.type == "cpu"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backend: Backend | None = "triton" if kernels else None
    if _use_cpu_kernels(cpu_kernels, device=device, channels_last=channels_last, compile=compile):
        backend = "cpu"
    net = fold_network(model).use_kernels(backend, convs=conv_kernels)
    net = net.to(device, dtype).to_memory_format(fmt)
    runner: nn.Module = _Runner(net, bf16=bf16, dtype=dtype)
    if compile:
        if device.type == "cuda":
            # reduce-overhead = inductor kernels replayed as CUDA graphs
            mode = "reduce-overhead" if cuda_graphs else None
            return torch.compile(runner, mode=mode, dynamic=False)  # type: ignore[return-value]
        # freezing: weights become constants, so inductor can prepack them for oneDNN
        return torch.compile(runner, dynamic=False, options={"freezing": True})  # type: ignore[return-value]
    if cuda_graphs:
        return _CudaGraphs(runner)
    return runner


def _use_cpu_kernels(
    wanted: bool | None, *, device: torch.device, channels_last: bool, compile: bool
) -> bool:
    """Whether optimize() runs the C++ kernels: ``wanted`` None decides by what holds here."""
    if wanted is False:
        return False
    fits = device.type == "cpu" and channels_last and not compile
    if wanted is None:
        if not fits:
            return False
        return cpu_ops.available_or_warn()
    if not fits:
        raise ValueError(
            "cpu_kernels=True needs device='cpu', channels-last and no compile "
            f"(got device={device}, channels_last={channels_last}, compile={compile})"
        )
    return True


class _Runner(nn.Module):
    """The folded network, under bf16 autocast when asked; a half-precision network gets its input
    cast and returns float32 logits."""

    def __init__(self, net: FastCGNet, *, bf16: bool, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = net
        self.bf16 = bf16
        self.dtype = dtype
        self.num_classes = net.num_classes

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype != torch.float32:
            return self.net(x.to(self.dtype))
        if self.bf16:
            # no cast cache: it would hold tensors from outside a CUDA graph capture
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
                return self.net(x)  # float32 logits: FastCGNet converts them before upsampling
        return self.net(x)


class _CudaGraphs(nn.Module):
    """Captures one CUDA graph per input shape and replays it: a whole forward becomes one launch.

    Each shape keeps its graph, input and output buffers alive; the returned logits are a copy, so a
    later call does not overwrite them.
    """

    def __init__(self, inner: nn.Module, warmup: int = 3) -> None:
        super().__init__()
        self.inner = inner
        self.warmup = warmup
        self.num_classes = getattr(inner, "num_classes", None)
        self._graphs: dict[tuple[Any, ...], tuple[Any, Tensor, Tensor]] = {}

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream(x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):  # cuDNN autotuning and lazy init stay out of the graph
                    self.inner(static_in)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.inner(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()
