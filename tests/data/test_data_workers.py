"""Each DataLoader worker and each epoch draws its own augmentations (forked workers would otherwise
inherit identical copies of albumentations' random state)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cgnet.data import CamVidDataModule
from cgnet.data.collate import collate


def _module(root: Path) -> CamVidDataModule:
    dm = CamVidDataModule(
        root=str(root), batch_size=1, num_workers=2, crop_size=[32, 32], scale_range=[0.5, 2.0]
    )
    dataset = dm.dataset("train")
    dataset.samples = [dataset.samples[0]] * 6  # one picture: any difference is the augmentation
    return dm


def _epoch(loader: DataLoader) -> list[torch.Tensor]:
    return [batch["image"][0].clone() for batch in loader]


def _all_different(crops: list[torch.Tensor]) -> bool:
    return all(not torch.equal(a, b) for i, a in enumerate(crops) for b in crops[i + 1 :])


def test_workers_and_epochs_draw_different_augmentations(camvid_tree: Path) -> None:
    dm = _module(camvid_tree)
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    first, second = _epoch(loader), _epoch(loader)
    assert _all_different(first)  # workers 0 and 1 alternate; none repeats the other
    assert _all_different(first + second)  # the next epoch continues, it does not replay

    torch.manual_seed(0)  # and the whole thing is reproducible from the torch seed
    assert all(
        torch.equal(a, b)
        for a, b in zip(first, _epoch(_module(camvid_tree).train_dataloader()), strict=True)
    )


def test_without_reseeding_workers_replay_each_other(camvid_tree: Path) -> None:
    """The trap itself: a plain DataLoader gives both workers the same Compose RNG state."""
    dataset = _module(camvid_tree).dataset("train")
    crops = _epoch(DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate))
    assert torch.equal(crops[0], crops[1]) and torch.equal(crops[2], crops[3])


def test_main_process_follows_the_torch_seed(camvid_tree: Path) -> None:
    def run() -> list[torch.Tensor]:
        torch.manual_seed(7)
        dm = _module(camvid_tree)
        dm.num_workers = 0
        return _epoch(dm.train_dataloader())

    a, b = run(), run()
    assert _all_different(a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
