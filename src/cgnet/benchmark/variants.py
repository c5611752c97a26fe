"""The inference variants the benchmark compares, and the one network every worker builds.

Each variant is a callable (normalised float NCHW -> logits) built from the same seeded or loaded
network, so any difference in speed or output is the variant's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cgnet.checkpoint import load_network
from cgnet.inference import optimize
from cgnet.inference.autotune import tuned
from cgnet.models import CGNet
from cgnet.runtime import reuse_cpu_memory

GPU_ONLY_VARIANTS = (
    "cuda_graphs",
    "compile_cuda_graphs",
    "bf16",
    "fused",
    "fused_convs",
    "auto_fp16",
    "auto_bf16",
)
Forward = Callable[[Tensor], Tensor]

VARIANT_HELP = {
    "eager": "the CGNet module as trained, NCHW, glibc's default allocator",
    "eager_reuse": "eager + cgnet.runtime.reuse_cpu_memory (isolates the allocator's share)",
    "folded": "BatchNorms folded, NCHW (isolates the folding's share)",
    "fast": "cgnet.inference.optimize(net): folded + channels_last + heap reuse (+ the fused C++ kernels on the CPU)",
    "fast_ops": "optimize(net, cpu_kernels=False): the fast path on torch's ops alone (isolates the kernels' share)",
    "compile": "optimize(net, compile=True): the fast path through torch.compile (freezing)",
    "onnxruntime": "the folded network exported to ONNX, run by onnxruntime",
    "cuda_graphs": "optimize(net, cuda_graphs=True) (GPU)",
    "compile_cuda_graphs": "optimize(net, compile=True, cuda_graphs=True) (GPU)",
    "bf16": "optimize(net, bf16=True): bfloat16 autocast (GPU)",
    "fused": "optimize(net, kernels=True, cuda_graphs=True): fused Triton CG blocks, NCHW (GPU)",
    "fused_convs": "fused + conv_kernels=True: Triton's dense convolutions and chained CG blocks (GPU)",
    "auto": "cgnet.inference.tuned(net): the fastest exact fp32 form, measured per shape",
    "auto_fp16": "tuned(net, precision='fp16'): the fastest float16 form (GPU)",
    "auto_bf16": "tuned(net, precision='bf16'): the fastest bfloat16 form (GPU)",
}


@dataclass(frozen=True)
class ModelSpec:
    """How every worker builds the same network: from a checkpoint, or seeded random init."""

    num_classes: int
    model: dict[str, Any]
    ckpt_path: str | None = None
    seed: int = 0
    trust: bool = False  # whether a checkpoint whose pickle would run code may be read

    def build(self) -> CGNet:
        """The network in eval mode; workers call this themselves instead of unpickling weights."""
        if self.ckpt_path:
            loaded = load_network(self.ckpt_path, self.num_classes, self.model, trust=self.trust)
            return loaded.net.eval()
        torch.manual_seed(self.seed)
        return CGNet(self.num_classes, **self.model).eval()


class OnnxRuntimeForward:
    """The BN-folded network exported to ONNX and run by onnxruntime (CPU, or CUDA if it has it)."""

    def __init__(self, net: CGNet, device: torch.device, workdir: Path) -> None:
        import onnxruntime as ort

        from cgnet.deploy import INPUT_NAME, deployable, export_onnx

        path = export_onnx(deployable(net), workdir / f"cgnet-{os.getpid()}.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = INPUT_NAME
        self.device = device

    def __call__(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(self.device)


def build_variant(name: str, net: CGNet, device: torch.device, workdir: Path) -> Forward:
    """One inference variant of ``net`` as a callable (normalised float NCHW -> logits)."""
    if name not in VARIANT_HELP:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANT_HELP)}")
    if name in GPU_ONLY_VARIANTS and device.type != "cuda":
        raise ValueError(f"variant {name!r} needs a CUDA device")
    if name in ("eager", "eager_reuse"):
        if name == "eager_reuse" and device.type == "cpu":
            reuse_cpu_memory()
        return net.to(device).eval()
    if name == "folded":
        return optimize(net, device=device, channels_last=False)
    if name == "onnxruntime":
        return OnnxRuntimeForward(net, device, workdir)
    if name.startswith("auto"):
        precision = name.removeprefix("auto_") if "_" in name else "fp32"
        return tuned(net, device, precision)  # type: ignore[arg-type]
    if name in ("fused", "fused_convs"):
        return optimize(
            net,
            device=device,
            kernels=True,
            conv_kernels=name == "fused_convs",
            cuda_graphs=True,
        )
    if name == "fast_ops":
        return optimize(net, device=device, cpu_kernels=False)
    return optimize(
        net,
        device=device,
        compile=name in ("compile", "compile_cuda_graphs"),
        cuda_graphs=name in ("cuda_graphs", "compile_cuda_graphs"),
        bf16=name == "bf16",
    )


__all__ = [
    "GPU_ONLY_VARIANTS",
    "VARIANT_HELP",
    "Forward",
    "ModelSpec",
    "OnnxRuntimeForward",
    "build_variant",
]
