"""Training throughput: images per second of plain eager and of the project's training-step settings.

The step is the one :class:`cgnet.module.SegmentationModule` runs (normalise, forward, CE loss,
backward, Adam), without Lightning's loop, so the figure is the network's and the optimiser's, not
the logger's. Steps of the settings are timed round-robin, each setting in its own worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cgnet.benchmark.measure import Latency, profile_call, synchronize
from cgnet.benchmark.settings import TrainThroughputSettings
from cgnet.benchmark.variants import ModelSpec
from cgnet.benchmark.worker import Worker, request_profile
from cgnet.models import CGNet, use_cpu_prelu, use_fused_context, use_space_to_batch
from cgnet.normalization import Normalize
from cgnet.runtime import reuse_cpu_memory

IGNORE_INDEX = 255


class TrainJob:
    """Full training steps at one setting, on seeded random uint8 images and masks."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        *,
        batch: int,
        crop: Sequence[int],
        channels_last: bool,
        compile: bool,
        reuse_memory: bool,
        space_to_batch: bool = False,
        bf16: bool = False,
        fused_context: bool = False,
        cpu_prelu: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if bf16 and self.device.type != "cuda":
            raise ValueError("bf16-mixed training is measured on CUDA only")
        self.bf16 = bf16
        if reuse_memory and self.device.type == "cpu":
            reuse_cpu_memory()
        torch.manual_seed(spec.seed)
        net = CGNet(spec.num_classes, **spec.model).to(self.device).train()
        use_space_to_batch(net, space_to_batch)
        use_fused_context(net, fused_context)
        use_cpu_prelu(net, cpu_prelu)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=self.fmt)
        self.forward: Callable[[Tensor], Tensor] = torch.compile(net) if compile else net  # type: ignore[assignment]
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-4)
        self.normalize = Normalize().to(self.device)  # the official mean and std, as training uses
        gen = torch.Generator().manual_seed(spec.seed)
        height, width = (int(v) for v in crop)
        images = torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)
        masks = torch.randint(0, spec.num_classes, (batch, height, width), generator=gen)
        masks[:, :8] = IGNORE_INDEX  # some ignored pixels, as real labels have
        self.images, self.masks = images.to(self.device), masks.to(self.device)

    def step(self) -> float:
        """One timed training step in milliseconds."""
        synchronize(self.device)
        start = time.perf_counter()
        x = self.normalize(self.images).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(x).float()
            loss = F.cross_entropy(logits, self.masks, ignore_index=IGNORE_INDEX)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        synchronize(self.device)
        return (time.perf_counter() - start) * 1e3

    def profile(self, top: int = 12) -> list[dict[str, Any]]:
        """Self time per op of one training step, the largest first."""
        return profile_call(self.step, self.device, top)


def compared_settings(
    tt: TrainThroughputSettings, device: torch.device
) -> dict[str, dict[str, bool]]:
    """Plain eager (the baseline) and the project's training-step settings, as TrainJob keywords;
    with ``fused_context``, the project's settings once more with the fused f_loc + f_sur op."""
    plain_eager = {
        "channels_last": False,
        "compile": False,
        "reuse_memory": False,
        "space_to_batch": False,
        "cpu_prelu": False,
    }
    project = {
        # null: as SegmentationModule, channels-last on GPUs only
        "channels_last": device.type == "cuda" if tt.channels_last is None else tt.channels_last,
        "compile": tt.compile,
        "reuse_memory": tt.reuse_memory,
        "space_to_batch": tt.space_to_batch,
        "cpu_prelu": tt.cpu_prelu and device.type == "cpu",
        "bf16": tt.bf16,
    }
    settings = {"plain eager": plain_eager, "project settings": project}
    if tt.fused_context:
        settings["project + fused f_loc/f_sur"] = {**project, "fused_context": True}
    return settings


def benchmark_training(
    spec: ModelSpec,
    *,
    device: torch.device,
    batch: int,
    crop: Sequence[int],
    steps: int,
    warmup: int,
    settings: dict[str, dict[str, bool]],
    isolate: bool = True,
    threads: int | None = None,
    profile: bool = False,
) -> list[dict[str, Any]]:
    """Images per second of each training-step setting, steps timed round-robin; with ``profile``,
    also where one step of each spends its time."""
    workers: dict[str, Worker] = {}
    rows = []
    try:
        for name, setting in settings.items():
            kwargs = {"spec": spec, "device": str(device), "batch": batch, "crop": list(crop)}
            workers[name] = Worker(
                TrainJob, {**kwargs, **setting}, isolate=isolate, threads=threads
            )
        first = {name: w.request("step") / 1e3 for name, w in workers.items()}
        for worker in workers.values():
            for _ in range(warmup):
                worker.request("step")
        times: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(steps):
            for name, worker in workers.items():
                times[name].append(worker.request("step"))
        profiles = {name: request_profile(w) for name, w in workers.items()} if profile else {}
    finally:
        for worker in workers.values():
            worker.close()
    for name, setting in settings.items():
        stats = Latency.stats(times[name])
        rows.append(
            {
                "setting": name,
                **setting,
                "batch": batch,
                "crop": [int(v) for v in crop],
                "step_ms": stats,
                "images_per_s": batch * 1e3 / stats["median"],
                "first_step_s": first[name],
            }
        )
        if name in profiles:
            rows[-1]["profile"], error = profiles[name]
            if error:
                rows[-1]["profile_error"] = error
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_over_eager"] = row["images_per_s"] / base
    return rows


__all__ = ["TrainJob", "benchmark_training", "compared_settings"]
