"""Random-number states inside checkpoints, so a resumed run draws what an uninterrupted one would.

Lightning restores weights, optimiser, scheduler and loop counters, but not the global RNGs that pick
the shuffle order and seed the DataLoader workers (and through them the augmentations). Without them a
run killed after epoch k and resumed diverges from the uninterrupted run at epoch k + 1.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch (CPU) and torch.cuda, as tensors and plain types
    (so ``torch.load(weights_only=True)``, Lightning's default, still reads the checkpoint)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class RNGStateCheckpoint(Callback):
    """Saves the RNG states with each checkpoint and restores them on resume (single process).

    Under DDP the checkpoint holds rank 0's states only; each rank then keeps its own seeded stream
    (DistributedSampler shuffles from its seed and epoch, not from these states).
    """

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks just before it rebuilds the training DataLoader iterator, whose
        # shuffle order and worker seeds are the first draws that must match the uninterrupted run.
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            set_rng_states(state_dict)
