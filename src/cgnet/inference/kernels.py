"""Fused Triton kernels for the CG block's elementwise and channel-wise work at inference.

After BatchNorm folding (:mod:`cgnet.inference.fast`) a CG block is conv_in (a cuDNN convolution)
followed by memory-bound work that eager PyTorch spreads over many passes: f_loc and f_sur (two
depthwise 3x3 convolutions), a concatenation, the f_joi PReLU, f_glo's global mean and its channel
gate, and the global residual. Here that work takes three launches (and a zeroed sums buffer):

- :func:`cg_joint`: f_loc (dilation 1) and f_sur (dilation d) of the same input, their folded f_joi
  biases and the f_joi PReLU, written straight into the concatenated ``[B, 2C, H, W]`` output; it can
  also accumulate the per-(batch, channel) sums that f_glo's global average pooling needs;
- :func:`fglo_gate`: f_glo's fc -> ReLU -> fc -> sigmoid on those means, one program per image;
- :func:`gate_residual`: the channel gate and the optional residual, ``out = x + y * gate``.

A join (the concatenation before each stage's BatchNorm + PReLU) is one more: :func:`join` writes
every part's affine + activation straight into its channels of the output, instead of a
concatenation, an affine and an activation pass over the whole output.

Two more take over from cuDNN where the network is chained (``FastCGNet.use_kernels(convs=True)``,
a form the tuner times on its own): :func:`conv_act` runs a dense convolution (the stem, conv_in,
CG-Down's reduce, the classifier) as an implicit GEMM on the tensor cores with its bias and PReLU
applied before the only write, and :func:`block_seam` joins two CG blocks, one block's gate and
residual with the next block's 1x1 conv_in, so that a CG block inside a stage is two launches.

Measured on an H200 (Cityscapes-size input, CUDA graphs), the CG-block kernels made the whole
network 1.4-1.5x faster in float32 and 1.5-1.7x under bfloat16 autocast; without CUDA graphs at
batch 1 the extra host time of Triton launches ate the gain. :func:`join`, :func:`conv_act` and
:func:`block_seam` have not run on a GPU yet.

Tensors are NCHW; float32, float16 and bfloat16 are accepted, and every sum is taken in float32.
Weights, biases and slopes are read as float32, except the matrices that :func:`conv_act` and
:func:`block_seam` multiply on the tensor cores, which take the input's dtype. Kernels run on CUDA
tensors, or on CPU tensors under Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before this module is imported: ``triton.jit`` decides at decoration time.

This module imports triton at import time; :mod:`cgnet.inference.fast` imports it only when the fused
path is asked for, so the rest of the package runs without triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError(
        "cgnet's fused CG-block kernels need Triton: `pip install triton` (on Linux it ships with "
        "CUDA builds of torch; the CPU test suite installs it through the dev extra)"
    ) from error

__all__ = [
    "INTERPRETED",
    "block_seam",
    "cg_joint",
    "check_device",
    "conv_act",
    "fglo_gate",
    "gate_residual",
    "join",
    "time_forward",
]


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_device(device: torch.device) -> None:
    """Raise unless the kernels can run on ``device``: CUDA, or anything under the interpreter."""
    if device.type == "cuda" or INTERPRETED:
        return
    raise RuntimeError(
        f"the fused CG-block kernels run on CUDA tensors, got {device.type}; on the CPU they run "
        "only under Triton's interpreter, with TRITON_INTERPRET=1 set before "
        "cgnet.inference.kernels is imported"
    )


def _check(name: str, t: Tensor) -> Tensor:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected an NCHW tensor, got shape {tuple(t.shape)}")
    check_device(t.device)
    return t.contiguous()


def _tiles(channels: int, pixels: int, block: int) -> tuple[int, int]:
    """(channels, pixels) per program, powers of two. On the GPU a program covers ``block`` pixels of
    one channel; the interpreter runs each program as a few numpy passes whatever its size, so there
    one program takes every channel and as many pixels as fit in 2**16 elements."""
    if INTERPRETED:
        block_c = triton.next_power_of_2(channels)
        return block_c, triton.next_power_of_2(max(1, min(pixels, (1 << 16) // block_c)))
    return 1, triton.next_power_of_2(max(1, min(pixels, block)))


def _param(t: Tensor, device: torch.device) -> Tensor:
    """A weight as the kernels read it (contiguous float32 on ``device``); the folded network's
    buffers already are, and pass through without a copy (each call's host time counts at batch 1)."""
    if t.dtype == torch.float32 and t.device == device and t.is_contiguous():
        return t
    return t.detach().to(device, torch.float32).contiguous()


def _slopes(slope: Tensor | None, channels: int, device: torch.device) -> Tensor | None:
    """PReLU slopes as the kernels read them: ``channels`` float32 values (one shared slope
    repeated); None for ReLU."""
    if slope is None:
        return None
    slope = slope.reshape(-1)
    return _param(slope if slope.numel() == channels else slope.expand(channels), device)


def _operand(t: Tensor, like: Tensor) -> Tensor:
    """A matrix the tensor cores multiply with ``like``: on its device, in its dtype, contiguous."""
    return t.detach().to(like.device, like.dtype).contiguous()


def _output(
    name: str, out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A new output, or the caller's after checking it is one the kernel can fill in place."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"{name}: out must be {list(shape)} {dtype} on {device}, got "
            f"{list(out.shape)} {out.dtype} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError(f"{name}: out must be contiguous")
    return out


# --------------------------------------------------------------------------------------------------
# f_loc + f_sur + f_joi (+ f_glo's sums)
# --------------------------------------------------------------------------------------------------


@triton.jit
def _cg_joint_kernel(
    y_ptr,
    w_loc_ptr,
    b_loc_ptr,
    w_sur_ptr,
    b_sur_ptr,
    slope_ptr,
    out_ptr,
    sums_ptr,
    C,
    H,
    W,
    DIL,
    TILES_W,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HAS_SLOPE: tl.constexpr,
    WITH_SUMS: tl.constexpr,
):
    # One program: BLOCK_C channels x a BLOCK_H x BLOCK_W tile of pixels of one image of y. It writes
    # those channels c of the joint output (f_loc) and channels C + c (f_sur), so each input pixel
    # is read once for both convolutions. Rows and columns are tested against the border once per
    # tap as vectors, so a pixel costs a load and a multiply-add per tap, not its own index sums.
    tile = tl.program_id(0)
    b = tl.program_id(1)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = (tile // TILES_W) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = (tile % TILES_W) * BLOCK_W + tl.arange(0, BLOCK_W)
    c_ok = cs < C
    c3 = c_ok[:, None, None]
    inside = c3 & (rows < H)[None, :, None] & (cols < W)[None, None, :]
    plane = (b * C + cs).to(tl.int64)[:, None, None] * (H * W)
    src = y_ptr + plane
    loc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=tl.float32)
    sur = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            w_loc = tl.load(w_loc_ptr + cs * 9 + (i * 3 + j), mask=c_ok, other=0.0)[:, None, None]
            w_sur = tl.load(w_sur_ptr + cs * 9 + (i * 3 + j), mask=c_ok, other=0.0)[:, None, None]
            hh = rows + (i - 1)
            ww = cols + (j - 1)
            ok = c3 & ((hh >= 0) & (hh < H))[None, :, None] & ((ww >= 0) & (ww < W))[None, None, :]
            v = tl.load(src + (hh * W)[None, :, None] + ww[None, None, :], mask=ok, other=0.0)
            v = v.to(tl.float32)
            loc += v * w_loc
            if i * 3 + j == 4:
                sur += v * w_sur  # the shared centre tap
            else:
                hh = rows + (i - 1) * DIL
                ww = cols + (j - 1) * DIL
                ok = (
                    c3
                    & ((hh >= 0) & (hh < H))[None, :, None]
                    & ((ww >= 0) & (ww < W))[None, None, :]
                )
                v = tl.load(src + (hh * W)[None, :, None] + ww[None, None, :], mask=ok, other=0.0)
                sur += v.to(tl.float32) * w_sur
    loc += tl.load(b_loc_ptr + cs, mask=c_ok, other=0.0)[:, None, None]
    sur += tl.load(b_sur_ptr + cs, mask=c_ok, other=0.0)[:, None, None]
    if HAS_SLOPE:
        slope_loc = tl.load(slope_ptr + cs, mask=c_ok, other=0.0)[:, None, None]
        slope_sur = tl.load(slope_ptr + C + cs, mask=c_ok, other=0.0)[:, None, None]
        loc = tl.where(loc >= 0, loc, loc * slope_loc)
        sur = tl.where(sur >= 0, sur, sur * slope_sur)
    else:
        loc = tl.maximum(loc, 0.0)
        sur = tl.maximum(sur, 0.0)
    pixel = (rows * W)[None, :, None] + cols[None, None, :]
    dst = out_ptr + (plane + b.to(tl.int64) * C * (H * W)) + pixel
    tl.store(dst, loc.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(dst + C * (H * W), sur.to(out_ptr.dtype.element_ty), mask=inside)
    if WITH_SUMS:
        row = sums_ptr + b * 2 * C + cs
        loc_sums = tl.sum(tl.sum(tl.where(inside, loc, 0.0), axis=2), axis=1)
        sur_sums = tl.sum(tl.sum(tl.where(inside, sur, 0.0), axis=2), axis=1)
        tl.atomic_add(row, loc_sums, mask=c_ok)
        tl.atomic_add(row + C, sur_sums, mask=c_ok)


def cg_joint(
    y: Tensor,
    w_loc: Tensor,
    b_loc: Tensor,
    w_sur: Tensor,
    b_sur: Tensor,
    slope: Tensor | None,
    dilation: int,
    *,
    with_sums: bool = False,
    sums: Tensor | None = None,
    out: Tensor | None = None,
    block: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """f_joi(cat(f_loc(y), f_sur(y))) in one pass, with f_joi's BatchNorm folded into the biases.

    Args:
        y: conv_in's output ``[B, C, H, W]``.
        w_loc, w_sur: depthwise 3x3 weights ``[C, 1, 3, 3]`` (f_joi's scale folded in).
        b_loc, b_sur: their biases ``[C]`` (f_joi's shift).
        slope: f_joi's PReLU slopes ``[2C]`` (or one shared slope); None for ReLU.
        dilation: f_sur's dilation (its zero padding equals it, as in the CG block).
        with_sums: also return float32 ``[B, 2C]`` sums over H x W of the output (f_glo's pooling).
        sums: with ``with_sums``, a zeroed contiguous float32 ``[B, 2C]`` buffer to add them into
            (:func:`block_seam` zeroes the next block's); else a new one.
        out: a contiguous ``[B, 2C, H, W]`` tensor of y's dtype to write into (else a new one).
        block: pixels per program on the GPU.

    Returns:
        The joint features ``[B, 2C, H, W]`` in y's dtype, and the sums or None.
    """
    y = _check("cg_joint", y)
    n, c, h, w = y.shape
    for name, t in (("w_loc", w_loc), ("w_sur", w_sur)):
        if t.numel() != 9 * c:
            raise ValueError(f"cg_joint: {name} must hold {c} 3x3 kernels, got {tuple(t.shape)}")
    weights = [_param(t, y.device) for t in (w_loc, b_loc, w_sur, b_sur)]
    slope = _slopes(slope, 2 * c, y.device)
    out = _output("cg_joint", out, (n, 2 * c, h, w), y.dtype, y.device)
    if not with_sums:
        sums = None
    elif sums is None:
        sums = torch.zeros((n, 2 * c), dtype=torch.float32, device=y.device)
    elif tuple(sums.shape) != (n, 2 * c) or sums.dtype != torch.float32 or not sums.is_contiguous():
        raise ValueError(f"cg_joint: sums must be a contiguous float32 [{n}, {2 * c}] buffer")
    if out.numel() == 0:
        return out, sums
    block_c, block_hw = _tiles(c, h * w, block)
    block_w = min(triton.next_power_of_2(w), 128, block_hw)
    block_h = min(triton.next_power_of_2(h), max(1, block_hw // block_w))
    tiles_w = triton.cdiv(w, block_w)
    grid = (triton.cdiv(h, block_h) * tiles_w, n, triton.cdiv(c, block_c))
    _cg_joint_kernel[grid](
        y,
        *weights,
        slope if slope is not None else weights[1],  # unread without slopes
        out,
        sums if sums is not None else out,  # unread without sums
        c,
        h,
        w,
        int(dilation),
        tiles_w,
        BLOCK_C=block_c,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        HAS_SLOPE=slope is not None,
        WITH_SUMS=with_sums,
    )
    return out, sums


# --------------------------------------------------------------------------------------------------
# f_glo: gate and residual
# --------------------------------------------------------------------------------------------------


@triton.jit
def _sigmoid(x):
    """A sigmoid that never overflows ``exp``."""
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


@triton.jit
def _fglo_gate_kernel(
    sums_ptr,
    scale,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    gate_ptr,
    C,
    HID,
    BLOCK_C: tl.constexpr,
    BLOCK_HID: tl.constexpr,
):
    # One program per image: mean -> fc1 -> ReLU -> fc2 -> sigmoid, all in registers.
    b = tl.program_id(0)
    cs = tl.arange(0, BLOCK_C)
    hs = tl.arange(0, BLOCK_HID)
    c_ok = cs < C
    h_ok = hs < HID
    both = h_ok[:, None] & c_ok[None, :]
    mean = tl.load(sums_ptr + b * C + cs, mask=c_ok, other=0.0) * scale
    w1 = tl.load(w1_ptr + hs[:, None] * C + cs[None, :], mask=both, other=0.0)  # [HID, C]
    hidden = tl.sum(w1 * mean[None, :], axis=1) + tl.load(b1_ptr + hs, mask=h_ok, other=0.0)
    hidden = tl.maximum(hidden, 0.0)
    w2t = tl.load(w2_ptr + cs[None, :] * HID + hs[:, None], mask=both, other=0.0)  # fc2^T [HID, C]
    logit = tl.sum(w2t * hidden[:, None], axis=0) + tl.load(b2_ptr + cs, mask=c_ok, other=0.0)
    tl.store(gate_ptr + b * C + cs, _sigmoid(logit), mask=c_ok)


def fglo_gate(sums: Tensor, scale: float, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """f_glo's channel gate ``sigmoid(fc2(relu(fc1(sums * scale))))`` as float32 ``[B, C]``.

    ``scale`` turns the sums into means (``1 / (H * W)``; 1 when ``sums`` already holds means).
    """
    if sums.dim() != 2:
        raise ValueError(f"fglo_gate: expected [B, C] sums, got shape {tuple(sums.shape)}")
    check_device(sums.device)
    n, c = sums.shape
    hid = w1.shape[0]
    if tuple(w1.shape) != (hid, c) or tuple(w2.shape) != (c, hid):
        raise ValueError(
            f"fglo_gate: fc shapes {tuple(w1.shape)} and {tuple(w2.shape)} do not fit {c} channels"
        )
    sums = sums.float().contiguous()
    params = [_param(t, sums.device) for t in (w1, b1, w2, b2)]
    gate = torch.empty((n, c), dtype=torch.float32, device=sums.device)
    if n == 0:
        return gate
    _fglo_gate_kernel[(n,)](
        sums,
        float(scale),
        *params,
        gate,
        c,
        hid,
        BLOCK_C=triton.next_power_of_2(c),
        BLOCK_HID=triton.next_power_of_2(hid),
    )
    return gate


@triton.jit
def _gate_residual_kernel(
    y_ptr,
    gate_ptr,
    x_ptr,
    out_ptr,
    ROWS,
    HW,
    BLOCK_R: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    # One program: BLOCK pixels of BLOCK_R (image, channel) planes (one on the GPU), each plane with
    # its own gate, so no pixel needs dividing to find its plane.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = (rows < ROWS)[:, None] & (pixels < HW)[None, :]
    offs = rows.to(tl.int64)[:, None] * HW + pixels[None, :]
    gate = tl.load(gate_ptr + rows, mask=rows < ROWS, other=0.0)[:, None]
    v = tl.load(y_ptr + offs, mask=inside, other=0.0).to(tl.float32) * gate
    if HAS_RESIDUAL:
        v += tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=inside)


def gate_residual(
    y: Tensor,
    gate: Tensor,
    x: Tensor | None = None,
    *,
    out: Tensor | None = None,
    block: int = 1024,
) -> Tensor:
    """f_glo's channel re-weighting and the global residual in one pass: ``x + y * gate``.

    ``gate`` is ``[B, C]`` (float32 from :func:`fglo_gate`); without ``x`` the result is ``y * gate``.
    The output takes the promoted dtype of y and x, as ``torch.addcmul`` would; ``out`` may name a
    contiguous tensor of that shape and dtype to write into.
    """
    y = _check("gate_residual", y)
    n, c, h, w = y.shape
    if gate.numel() != n * c:
        raise ValueError(f"gate_residual: gate must be [{n}, {c}], got {tuple(gate.shape)}")
    gate = gate.to(y.device, torch.float32).contiguous()
    dtype = y.dtype
    if x is not None:
        x = _check("gate_residual", x)
        if x.shape != y.shape:
            raise ValueError(f"gate_residual: x {tuple(x.shape)} and y {tuple(y.shape)} differ")
        dtype = torch.promote_types(dtype, x.dtype)
    out = _output("gate_residual", out, (n, c, h, w), dtype, y.device)
    if out.numel() == 0:
        return out
    block_r, tile = _tiles(n * c, h * w, block)
    _gate_residual_kernel[(triton.cdiv(n * c, block_r), triton.cdiv(h * w, tile))](
        y,
        gate,
        x if x is not None else y,
        out,
        n * c,
        h * w,
        BLOCK_R=block_r,
        BLOCK=tile,
        HAS_RESIDUAL=x is not None,
    )
    return out


# --------------------------------------------------------------------------------------------------
# Between two CG blocks: gate + residual of one, conv_in of the next
# --------------------------------------------------------------------------------------------------


@triton.jit
def _block_seam_kernel(
    y_ptr,
    x_ptr,
    sums_ptr,
    scale,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    w_ptr,
    b_ptr,
    slope_ptr,
    out_ptr,
    h_ptr,
    zero_ptr,
    C,
    HW,
    CO,
    HID,
    ZERO_N,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_HID: tl.constexpr,
    BLOCK_ALL: tl.constexpr,
    BLOCK_ZERO: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
):
    # One program: BLOCK_P pixels of one image, every channel. It finishes block i (f_glo's gate from
    # the pooled sums, then out = x + y * gate) and starts block i + 1 (its 1x1 conv_in on out, bias
    # and PReLU), so out is read from registers instead of memory, and zeroes the sums that block
    # i + 1's joint kernel accumulates into.
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    pid_co = tl.program_id(2)  # output channels beyond one tile: the first tile writes out
    if (pid_p == 0) & (pid_co == 0):
        zs = tl.arange(0, BLOCK_ZERO)
        tl.store(zero_ptr + b * ZERO_N + zs, tl.zeros([BLOCK_ZERO], tl.float32), mask=zs < ZERO_N)
    # f_glo's hidden layer from all C means of this image (a few hundred multiply-adds)
    call = tl.arange(0, BLOCK_ALL)
    hs = tl.arange(0, BLOCK_HID)
    h_ok = hs < HID
    mean = tl.load(sums_ptr + b * C + call, mask=call < C, other=0.0) * scale
    w1 = tl.load(
        w1_ptr + hs[:, None] * C + call[None, :],
        mask=h_ok[:, None] & (call < C)[None, :],
        other=0.0,
    )
    hidden = tl.sum(w1 * mean[None, :], axis=1) + tl.load(b1_ptr + hs, mask=h_ok, other=0.0)
    hidden = tl.maximum(hidden, 0.0)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = ps < HW
    cos = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = cos < CO
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_ok = cs < C
        w2 = tl.load(
            w2_ptr + cs[:, None] * HID + hs[None, :], mask=c_ok[:, None] & h_ok[None, :], other=0.0
        )
        logit = tl.sum(w2 * hidden[None, :], axis=1) + tl.load(b2_ptr + cs, mask=c_ok, other=0.0)
        gate = _sigmoid(logit)
        offs = (b * C + cs).to(tl.int64)[None, :] * HW + ps[:, None]
        ok = p_ok[:, None] & c_ok[None, :]
        v = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32) * gate[None, :]
        v += tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        v = v.to(out_ptr.dtype.element_ty)
        first_tile = (tl.zeros([BLOCK_C], tl.int32) + pid_co) == 0
        tl.store(out_ptr + offs, v, mask=ok & first_tile[None, :])
        w_ok = c_ok[:, None] & co_ok[None, :]
        w = tl.load(w_ptr + cos[None, :] * C + cs[:, None], mask=w_ok, other=0.0)
        acc = _mma(acc, v, w, DOT)
    acc = _bias_act(acc, b_ptr, slope_ptr, cos, co_ok, ACT)
    dst = h_ptr + (b * CO + cos).to(tl.int64)[None, :] * HW + ps[:, None]
    tl.store(dst, acc.to(h_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


def block_seam(
    y: Tensor,
    sums: Tensor,
    x: Tensor,
    fglo: tuple[Tensor, Tensor, Tensor, Tensor],
    conv_in: tuple[Tensor, Tensor, Tensor | None],
    next_sums: Tensor,
    *,
    block: int = 64,
) -> tuple[Tensor, Tensor]:
    """The seam between two CG blocks with global residuals, in one pass: block i's f_glo gate and
    residual, ``out = x + y * sigmoid(fc2(relu(fc1(mean(y)))))``, then block i + 1's 1x1 conv_in
    (folded BatchNorm bias, PReLU) on ``out``. It also zeroes ``next_sums`` for block i + 1's
    :func:`cg_joint`, which then needs no zeroed buffer of its own.

    Args:
        y: block i's joint features ``[B, C, H, W]``; ``sums`` their float32 sums ``[B, C]`` over H x W.
        x: block i's input (the residual), like y.
        fglo: block i's f_glo ``(w1 [HID, C], b1, w2 [C, HID], b2)``, float32.
        conv_in: block i + 1's ``(weight [CO, C, 1, 1], bias [CO], PReLU slopes [CO] or None for
            ReLU)``; the weight in y's dtype (converted if not), the rest float32.
        next_sums: a contiguous float32 ``[B, N]`` buffer to zero.
        block: pixels per program on the GPU.

    Returns:
        ``out`` (block i's output, block i + 1's residual) and block i + 1's conv_in output
        ``[B, CO, H, W]``, both in y's dtype.
    """
    y, x = _check("block_seam", y), _check("block_seam", x)
    n, c, h, w = y.shape
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"block_seam: x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)} differ")
    if tuple(sums.shape) != (n, c):
        raise ValueError(f"block_seam: sums must be [{n}, {c}], got {tuple(sums.shape)}")
    w1, b1, w2, b2 = (_param(t, y.device) for t in fglo)
    hid = w1.shape[0]
    if tuple(w1.shape) != (hid, c) or tuple(w2.shape) != (c, hid):
        raise ValueError(
            f"block_seam: f_glo shapes {tuple(w1.shape)}, {tuple(w2.shape)} do not fit {c}"
        )
    weight, bias, slope = conv_in
    if weight.dim() != 4 or weight.shape[1:] != (c, 1, 1):
        raise ValueError(
            f"block_seam: conv_in must be a 1x1 over {c} channels, got {tuple(weight.shape)}"
        )
    co = weight.shape[0]
    weight, bias, slope = _operand(weight, y), _param(bias, y.device), _slopes(slope, co, y.device)
    if next_sums.dtype != torch.float32 or not next_sums.is_contiguous() or next_sums.shape[0] != n:
        raise ValueError("block_seam: next_sums must be a contiguous float32 [B, N] buffer")
    out = torch.empty_like(y)
    h_out = torch.empty((n, co, h, w), dtype=y.dtype, device=y.device)
    if y.numel() == 0:
        next_sums.zero_()
        return out, h_out
    block_c = 32 if c >= 32 else 16
    block_p = block
    if INTERPRETED:
        block_c = max(16, triton.next_power_of_2(c))
        block_p = (1 << 14) // block_c
    block_p = max(16, min(block_p, triton.next_power_of_2(h * w)))
    block_co = max(16, min(64, triton.next_power_of_2(co)))
    _block_seam_kernel[(triton.cdiv(h * w, block_p), n, triton.cdiv(co, block_co))](
        y,
        x,
        sums.float().contiguous(),
        1.0 / (h * w),
        w1,
        b1,
        w2,
        b2,
        weight,
        bias,
        slope if slope is not None else bias,  # unread without slopes
        out,
        h_out,
        next_sums,
        c,
        h * w,
        co,
        hid,
        next_sums.shape[1],
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        BLOCK_CO=block_co,
        BLOCK_HID=max(2, triton.next_power_of_2(hid)),
        BLOCK_ALL=triton.next_power_of_2(c),
        BLOCK_ZERO=triton.next_power_of_2(max(1, next_sums.shape[1])),
        ACT=2 if slope is not None else 1,
        DOT=_dot_precision(y),
    )
    return out, h_out


# --------------------------------------------------------------------------------------------------
# Joins: concatenation + BatchNorm + activation
# --------------------------------------------------------------------------------------------------


@triton.jit
def _join_part_kernel(
    src_ptr,
    scale_ptr,
    shift_ptr,
    slope_ptr,
    out_ptr,
    ROWS,
    C,
    HW,
    OUT_C,
    OFFSET,
    BLOCK_R: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_SLOPE: tl.constexpr,
):
    # One program: BLOCK pixels of BLOCK_R (image, channel) planes of one part (one on the GPU);
    # channel c of image b lands in channel OFFSET + c of the output.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < ROWS
    inside = row_ok[:, None] & (pixels < HW)[None, :]
    ch = OFFSET + rows % C
    v = tl.load(src_ptr + rows.to(tl.int64)[:, None] * HW + pixels[None, :], mask=inside, other=0.0)
    scale = tl.load(scale_ptr + ch, mask=row_ok, other=0.0)[:, None]
    v = v.to(tl.float32) * scale + tl.load(shift_ptr + ch, mask=row_ok, other=0.0)[:, None]
    if HAS_SLOPE:
        v = tl.where(v >= 0, v, v * tl.load(slope_ptr + ch, mask=row_ok, other=0.0)[:, None])
    else:
        v = tl.maximum(v, 0.0)
    dst_rows = (rows // C) * OUT_C + ch
    dst = out_ptr + dst_rows.to(tl.int64)[:, None] * HW + pixels[None, :]
    tl.store(dst, v.to(out_ptr.dtype.element_ty), mask=inside)


def join(
    parts: list[Tensor], scale: Tensor, shift: Tensor, slope: Tensor | None, *, block: int = 1024
) -> Tensor:
    """``act(cat(parts, 1) * scale + shift)`` without the concatenation: each part's channels are
    written, affine and activation applied, straight into their place in the output.

    ``scale``/``shift`` are the join BatchNorm's per-channel affine, ``slope`` its PReLU (None for
    ReLU). The output has the promoted dtype of the parts.
    """
    parts = [_check("join", p) for p in parts]
    n, _, h, w = parts[0].shape
    if any(p.shape[0] != n or p.shape[2:] != (h, w) for p in parts):
        raise ValueError(f"join: parts differ in batch or size: {[tuple(p.shape) for p in parts]}")
    total = sum(p.shape[1] for p in parts)
    device = parts[0].device
    scale, shift = (_param(t.reshape(-1), device) for t in (scale, shift))
    if scale.numel() != total or shift.numel() != total:
        raise ValueError(f"join: scale and shift must have {total} channels")
    slope = _slopes(slope, total, device)
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    out = torch.empty((n, total, h, w), dtype=dtype, device=device)
    offset = 0
    for part in parts:
        if part.numel():
            rows = n * part.shape[1]
            block_r, tile = _tiles(rows, h * w, block)
            _join_part_kernel[(triton.cdiv(rows, block_r), triton.cdiv(h * w, tile))](
                part,
                scale,
                shift,
                slope if slope is not None else scale,  # unread without slopes
                out,
                rows,
                part.shape[1],
                h * w,
                total,
                offset,
                BLOCK_R=block_r,
                BLOCK=tile,
                HAS_SLOPE=slope is not None,
            )
        offset += part.shape[1]
    return out


# --------------------------------------------------------------------------------------------------
# Dense convolutions: conv + folded BatchNorm bias + activation
# --------------------------------------------------------------------------------------------------


@triton.jit
def _mma(acc, a, w, DOT: tl.constexpr):
    """``acc + a @ w`` on the tensor cores: native half precision, TF32, or exact float32."""
    if DOT == "tf32":
        acc += tl.dot(a, w, input_precision="tf32")
    elif DOT == "ieee":
        acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    else:
        acc += tl.dot(a, w)
    return acc


@triton.jit
def _bias_act(acc, b_ptr, slope_ptr, cos, co_ok, ACT: tl.constexpr):
    """A ``[pixels, channels]`` accumulator plus its per-channel bias, then nothing (ACT 0), ReLU
    (1) or PReLU (2)."""
    acc += tl.load(b_ptr + cos, mask=co_ok, other=0.0)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        slope = tl.load(slope_ptr + cos, mask=co_ok, other=0.0)[None, :]
        acc = tl.where(acc >= 0, acc, acc * slope)
    return acc


@triton.jit
def _conv_act_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    slope_ptr,
    out_ptr,
    CIN,
    H,
    W,
    COUT,
    OH,
    OW,
    STRIDE,
    PAD,
    DIL,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
):
    # An implicit GEMM: output pixels x (tap, input channel) times (tap, input channel) x output
    # channels. Taps are the outer, unrolled loop: a tap's rows, columns and border test are worked
    # out once per pixel, and its input channels then come in chunks at one offset per pixel. Each
    # chunk is multiplied on the tensor cores into a float32 accumulator; bias and activation are
    # applied once, before the only write.
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    cos = tl.program_id(2) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = ps < OH * OW
    co_ok = cos < COUT
    top = (ps // OW) * STRIDE - PAD
    left = (ps % OW) * STRIDE - PAD
    src = x_ptr + b.to(tl.int64) * CIN * H * W
    w_rows = w_ptr + cos[None, :] * (CIN * KH * KW)
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            ih = top + i * DIL
            iw = left + j * DIL
            ok_p = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            pixel = ih * W + iw
            for c0 in range(0, CIN, BLOCK_K):
                cs = c0 + tl.arange(0, BLOCK_K)
                c_ok = cs < CIN
                a_ok = ok_p[:, None] & c_ok[None, :]
                a = tl.load(src + cs[None, :] * (H * W) + pixel[:, None], mask=a_ok, other=0.0)
                taps = (cs * (KH * KW) + (i * KW + j))[:, None]
                w = tl.load(w_rows + taps, mask=c_ok[:, None] & co_ok[None, :], other=0.0)
                acc = _mma(acc, a, w, DOT)
    acc = _bias_act(acc, b_ptr, slope_ptr, cos, co_ok, ACT)
    dst = out_ptr + (b * COUT + cos).to(tl.int64)[None, :] * (OH * OW) + ps[:, None]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & co_ok[None, :])


def _dot_precision(x: Tensor) -> str:
    """How conv_act's kernel multiplies: "native" in half precision, "tf32" or "ieee" in float32."""
    if x.dtype == torch.float32:
        return "tf32" if x.is_cuda and torch.backends.cudnn.allow_tf32 else "ieee"
    if x.dtype == torch.bfloat16 and INTERPRETED:
        return "ieee"
    return "native"


def conv_act(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    slope: Tensor | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    activation: bool = True,
    block: int = 128,
) -> Tensor:
    """``act(conv2d(x, weight, bias))`` for a dense (groups=1) convolution in one pass, the bias and
    activation applied before the only write: the stem, conv_in, CG-Down's reduce, the classifier.

    Args:
        x: ``[B, CIN, H, W]``.
        weight: ``[COUT, CIN, KH, KW]`` (a BatchNorm folded in), in x's dtype (converted if not) as
            the tensor cores take it, like cuDNN's in a half-precision network.
        bias: ``[COUT]``.
        slope: PReLU slopes ``[COUT]`` (or one shared slope); None for ReLU.
        stride, padding, dilation: as ``conv2d``'s (the same along both axes).
        activation: False for a plain convolution (slope is then ignored).
        block: output pixels per program on the GPU.

    float32 inputs multiply in TF32 on CUDA exactly when cuDNN's convolutions do
    (``torch.backends.cudnn.allow_tf32``), so both forms round alike. Under the interpreter,
    bfloat16 products are taken in float32 (exact for bfloat16 inputs), as its bfloat16 ``dot`` is
    wrong.
    """
    x = _check("conv_act", x)
    n, cin, h, w = x.shape
    if weight.dim() != 4 or weight.shape[1] != cin:
        raise ValueError(
            f"conv_act: weight must be [COUT, {cin}, KH, KW] for a {cin}-channel input, got "
            f"{tuple(weight.shape)}"
        )
    cout, _, kh, kw = weight.shape
    weight, bias = _operand(weight, x), _param(bias, x.device)
    if bias.numel() != cout:
        raise ValueError(f"conv_act: bias must have {cout} channels, got {bias.numel()}")
    slope = _slopes(slope, cout, x.device) if activation else None
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.empty((n, cout, max(oh, 0), max(ow, 0)), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_co = max(16, min(64, triton.next_power_of_2(cout)))
    block_k = 16 if cin <= 16 else 32
    if INTERPRETED:  # few, large programs: the interpreter pays per program, not per element
        block_co = max(16, triton.next_power_of_2(cout))
        block = (1 << 14) // block_co
    block_p = max(16, min(block, triton.next_power_of_2(oh * ow)))
    grid = (triton.cdiv(oh * ow, block_p), n, triton.cdiv(cout, block_co))
    _conv_act_kernel[grid](
        x,
        weight,
        bias,
        slope if slope is not None else bias,  # unread without slopes
        out,
        cin,
        h,
        w,
        cout,
        oh,
        ow,
        int(stride),
        int(padding),
        int(dilation),
        KH=kh,
        KW=kw,
        BLOCK_P=block_p,
        BLOCK_CO=block_co,
        BLOCK_K=block_k,
        ACT=0 if not activation else (1 if slope is None else 2),
        DOT=_dot_precision(x),
    )
    return out


INTERPRETED: bool = not isinstance(_cg_joint_kernel, triton.runtime.JITFunction)
"""Whether the kernels were decorated for Triton's interpreter (CPU tensors) rather than compiled for
the GPU: fixed when this module is imported."""


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def time_forward(module: torch.nn.Module, x: Tensor, iters: int = 50, warmup: int = 10) -> float:
    """Mean milliseconds per ``module(x)`` on CUDA, timed with CUDA events after ``warmup`` calls
    (Triton compiles and cuDNN tunes on the first calls)."""
    if x.device.type != "cuda":
        raise ValueError("time_forward times CUDA work; got a tensor on " + x.device.type)
    for _ in range(warmup):
        module(x)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        module(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters
