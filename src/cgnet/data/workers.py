"""Per-worker seeding, so DataLoader workers, ranks and epochs never replay the same augmentations."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

RANK_STRIDE = 1_000_003  # keeps the seeds of different ranks apart


def process_rank() -> int:
    """This process's global rank under DDP (0 otherwise), also inside forked DataLoader workers."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: reseed numpy, random and the dataset's albumentations Compose.

    albumentations' Compose owns its RNG, which each forked worker would otherwise inherit unchanged,
    so all workers would draw the same crops and flips. torch gives each worker a
    distinct seed (base seed + worker id; a fresh base seed every epoch unless workers persist, in
    which case each worker's stream simply continues) derived from the global torch seed, so runs
    stay reproducible under `seed_everything`. `seed_everything` gives every DDP rank the same base
    seed, so the rank is mixed in as well.

    It deliberately leaves cv2.setNumThreads alone: called in a forked worker after the parent has
    used cv2's thread pool, it deadlocks (seen here with opencv 5.0).
    """
    seed = (torch.initial_seed() + RANK_STRIDE * process_rank()) % 2**63
    np.random.seed(seed % 2**32)
    random.seed(seed)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)
