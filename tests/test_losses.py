"""The deterministic loss path that CUDA takes under ``trainer.deterministic=true``, checked on the CPU
against PyTorch's own cross-entropy and bilinear upsampling (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cgnet.losses import SegmentationLoss, deterministic_cross_entropy
from cgnet.models.upsample import upsample_bilinear, upsample_bilinear_by_matrices


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    """The mode Lightning sets: the reference kernels must accept it on the CPU too."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def batch(classes: int, shape: tuple[int, ...], ignore_share: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], classes, *shape[1:], generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignore_share] = 255
    return logits, target


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    ("shape", "ignore_share"), [((2, 17, 23), 0.3), ((1, 8, 8), 0.0), ((3, 5, 40), 0.9)]
)
def test_deterministic_cross_entropy_equals_pytorch(
    weighted: bool, shape: tuple[int, ...], ignore_share: float
) -> None:
    logits, target = batch(19, shape, ignore_share, seed=len(shape) + int(weighted))
    weight = torch.rand(19, dtype=torch.float64) * 10 + 0.1 if weighted else None
    mine = logits.clone().requires_grad_(True)
    ref = logits.clone().requires_grad_(True)
    loss = deterministic_cross_entropy(mine, target, weight, ignore_index=255)
    expected = F.cross_entropy(ref, target, weight=weight, ignore_index=255)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-12)
    ignored = target == 255
    if ignored.any():  # ignored pixels get no gradient at all
        assert mine.grad.movedim(1, -1)[ignored].abs().max() == 0


def test_all_pixels_ignored_gives_nan_like_pytorch() -> None:
    logits = torch.randn(1, 4, 3, 3)
    target = torch.full((1, 3, 3), 255)
    assert deterministic_cross_entropy(logits, target).isnan()
    assert F.cross_entropy(logits, target, ignore_index=255).isnan()


def test_segmentation_loss_keeps_the_checkpoint_buffer_and_pytorch_on_cpu() -> None:
    weight = torch.linspace(0.5, 2.0, 5)
    loss = SegmentationLoss(weight=weight, ignore_index=255)
    assert list(loss.state_dict()) == ["weight"]  # checkpoints keep criterion.weight
    logits, target = batch(5, (2, 6, 7), 0.2, seed=3)
    torch.testing.assert_close(
        loss(logits.float(), target),
        F.cross_entropy(logits.float(), target, weight=weight, ignore_index=255),
    )


@pytest.mark.parametrize(
    ("size_in", "size_out"), [((9, 11), (72, 88)), ((85, 85), (680, 680)), ((5, 7), (13, 30))]
)
def test_upsampling_by_matrices_equals_interpolate(
    size_in: tuple[int, int], size_out: tuple[int, int]
) -> None:
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    mine, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = upsample_bilinear_by_matrices(mine, size_out)
    expected = F.interpolate(ref, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-10)


def test_cpu_and_inference_keep_pytorch_upsampling() -> None:
    """The matrix form is for CUDA backward passes only; exports and CPU runs trace F.interpolate."""
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    graph = torch.jit.trace(lambda t: upsample_bilinear(t, (8, 8)), x)
    assert "upsample_bilinear2d" in str(graph.graph)
