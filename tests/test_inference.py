"""The fast inference path equals eager, and the TTA predictors do what mmseg's do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cgnet.inference import (
    FastCGNet,
    class_softmax,
    fold_network,
    optimize,
    predict_logits,
    sliding_window_logits,
)
from cgnet.models import CGNet
from cgnet.models.weights import load_weights
from cgnet.runtime import reuse_cpu_memory
from helpers import randomize_statistics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


torch.set_flush_denormal(True)


def agreement(a: Tensor, b: Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.fixture(scope="module")
def official(reference_dir: Path) -> CGNet:
    net = CGNet(11)
    load_weights(net, reference_dir / "cgnet_official_camvid_m3n21.pth")
    return net.eval()


def test_official_weights_fast_equals_eager(official: CGNet) -> None:
    # The official input scale: raw RGB minus the mean, std 1.
    x = torch.randn(2, 3, 96, 128) * 50
    with torch.no_grad():
        expected = official(x)
        for channels_last in (True, False):
            got = optimize(official, channels_last=channels_last)(x)
            assert (got - expected).abs().max() <= 1e-4
            assert agreement(got, expected) >= 0.9999


def test_official_reference_logits_through_fast_path(official: CGNet, reference_dir: Path) -> None:
    cases = torch.load(reference_dir / "official_camvid_logits.pt")
    fast = optimize(official)
    for case in cases.values():
        got = fast(case["input"])
        assert (got - case["logits"]).abs().max() <= 1e-4


SWITCHES: list[dict[str, Any]] = [
    {"M": 3, "N": 4},
    {"M": 2, "N": 3, "activation": "relu", "residual": "local"},
    {"M": 2, "N": 2, "input_injection": False, "use_f_glo": False},
    {"M": 1, "N": 1, "residual": "none", "head_bias": True},
    {"M": 2, "N": 3, "widths": (16, 32, 64), "dilations": (3, 5), "bn_eps": 1e-5},
]


@pytest.mark.parametrize("kwargs", SWITCHES)
def test_random_network_fast_equals_eager(kwargs: dict[str, Any]) -> None:
    net = randomize_statistics(CGNet(7, **kwargs))
    if kwargs.get("head_bias"):
        nn.init.normal_(net.classifier.bias)
    x = torch.randn(2, 3, 67, 93)
    with torch.no_grad():
        expected = net(x)
        got = optimize(net)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4
    assert agreement(got, expected) >= 0.9999


def test_folded_network_has_no_batchnorm_and_no_parameters() -> None:
    net = randomize_statistics(CGNet(5, M=2, N=3))
    folded = fold_network(net)
    assert isinstance(folded, FastCGNet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not list(folded.parameters())
    # conv->BN pairs and the f_joi BNs fold; only the three joins after a PReLU stay as affines.
    affines = [n for n, _ in folded.named_buffers() if n.endswith(".scale")]
    assert sorted(affines) == ["join1.scale", "join2.scale", "join3.scale"]


def test_optimize_leaves_the_model_untouched() -> None:
    net = randomize_statistics(CGNet(5, M=2, N=3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimize(net)
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_and_cuda_graphs_are_gpu_only() -> None:
    net = CGNet(5, M=1, N=1)
    with pytest.raises(ValueError, match="CUDA"):
        optimize(net, bf16=True)
    with pytest.raises(ValueError, match="cuda"):
        optimize(net, cuda_graphs=True)


def test_reuse_cpu_memory_is_idempotent() -> None:
    first = reuse_cpu_memory()
    assert reuse_cpu_memory() == first


# ---------------------------------------------------------------------------------------- predictors


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    return optimize(randomize_statistics(CGNet(6, M=2, N=3)))


def test_single_view_is_the_plain_forward(small: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(predict_logits(small, x, num_classes=6), small(x))


def test_flip_is_consistent(small: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = predict_logits(small, x, flip=True)
        b = predict_logits(small, x.flip(-1), flip=True)
        mean = (small(x).softmax(1) + small(x.flip(-1)).flip(-1).softmax(1)) / 2
    assert torch.allclose(a, b.flip(-1), atol=1e-6)
    assert torch.allclose(a, mean, atol=1e-6)


def test_multi_scale_merges_softmax_or_logits(small: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 96)
    scales = (0.5, 1.0, 1.5)
    with torch.no_grad():
        views = []
        for s in scales:
            size = (int(64 * s + 0.5), int(96 * s + 0.5))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            views.append(F.interpolate(small(xs), size=(64, 96), mode="bilinear"))
        probs = predict_logits(small, x, scales=scales)
        logits = predict_logits(small, x, scales=scales, merge="logits")
    assert probs.shape == (1, 6, 64, 96)
    assert torch.allclose(probs, torch.stack([v.softmax(1) for v in views]).mean(0), atol=1e-6)
    assert torch.allclose(logits, torch.stack(views).mean(0), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(1, 64, 96), atol=1e-5)


def test_window_covering_the_image_is_whole_image(small: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        whole = small(x)
        for window in ((64, 96), (80, 200)):
            got = predict_logits(small, x, window=window, stride=(32, 32))
            assert torch.allclose(got, whole, atol=1e-6)


def test_sliding_window_averages_overlaps() -> None:
    # A per-pixel network (1x1 conv) gives the same logits from every window that covers a pixel, so
    # the overlap average must reproduce the whole-image output; a position-stamping network checks
    # the count map: each pixel's value is its number of covering windows divided by itself.
    conv = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        got = sliding_window_logits(conv, x, (32, 32), (16, 24), window_batch=3)
        assert torch.allclose(got, conv(x), atol=1e-6)
    ones = sliding_window_logits(lambda t: torch.ones_like(t[:, :1]), x, (32, 32), (16, 24))
    assert torch.allclose(ones, torch.ones(2, 1, 50, 70))


def test_sliding_window_grid_matches_mmseg() -> None:
    seen: list[tuple[int, int]] = []

    def record(t: Tensor) -> Tensor:
        seen.append(tuple(t.shape[-2:]))
        return t[:, :2]

    x = torch.randn(1, 3, 100, 100)
    sliding_window_logits(record, x, (60, 60), (30, 30), window_batch=1)
    # mmseg: grids = max(100 - 60 + 30 - 1, 0) // 30 + 1 = 3 per axis, every crop 60x60.
    assert seen == [(60, 60)] * 9


def test_bad_arguments() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError):
        predict_logits(nn.Identity(), x, scales=())
    with pytest.raises(ValueError):
        predict_logits(nn.Identity(), x, stride=(4, 4))
    with pytest.raises(ValueError):
        sliding_window_logits(nn.Identity(), x, (0, 4), (4, 4))


def test_class_softmax_in_both_layouts() -> None:
    scores = torch.randn(2, 5, 7, 9)
    channels_last = scores.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(class_softmax(scores), scores.softmax(1), atol=1e-6)
    assert torch.allclose(class_softmax(channels_last), scores.softmax(1), atol=1e-6)
