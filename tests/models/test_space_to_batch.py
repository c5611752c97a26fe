"""f_sur's space-to-batch form must be the dilated convolution itself, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cgnet.models import CGNet, use_space_to_batch
from cgnet.models.space_to_batch import DilatedDepthwiseConv2d, space_to_batch_depthwise_conv2d


@pytest.mark.parametrize(
    ("shape", "dilation"),
    [
        ((2, 8, 12, 16), 4),
        ((2, 8, 45, 61), 4),
        ((1, 5, 7, 9), 2),
        ((3, 4, 3, 2), 4),
        ((1, 3, 9, 9), 3),
    ],
)
def test_equals_the_dilated_convolution_forward_and_backward(
    shape: tuple[int, int, int, int], dilation: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[1], 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, w, None, 1, dilation, dilation, shape[1])
    got = space_to_batch_depthwise_conv2d(x, w, dilation)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    ref_grads = torch.autograd.grad(ref, (x, w), grad_out)
    got_grads = torch.autograd.grad(got, (x, w), grad_out)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_only_cpu_training_steps_take_the_space_to_batch_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    original = space_to_batch_depthwise_conv2d

    def counting(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        calls.append(dilation)
        return original(x, weight, dilation)

    monkeypatch.setattr("cgnet.models.space_to_batch.space_to_batch_depthwise_conv2d", counting)
    net = CGNet(5, M=2, N=3)
    f_surs = [m for m in net.modules() if isinstance(m, DilatedDepthwiseConv2d)]
    assert len(f_surs) == 5  # stage 2: down + 1 block (d=2); stage 3: down + 2 blocks (d=4)
    x = torch.randn(2, 3, 40, 56)

    net.train()
    net(x)
    assert calls == []  # off unless asked: the network alone is the paper's
    assert use_space_to_batch(net) == 5
    net(x).sum().backward()
    assert calls == [2, 2, 4, 4, 4]
    calls.clear()
    with torch.no_grad():
        net(x)
    net.eval()
    net(x)
    assert calls == []  # evaluation keeps the plain dilated convolution (and ONNX/TorchScript too)
    use_space_to_batch(net, False)
    net.train()
    net(x)
    assert calls == []


def test_training_step_gradients_match_the_plain_network() -> None:
    torch.manual_seed(0)
    plain = CGNet(4, M=2, N=3).train()
    fast = CGNet(4, M=2, N=3).train()
    fast.load_state_dict(plain.state_dict())  # same keys: checkpoints do not care
    use_space_to_batch(fast)
    x = torch.randn(2, 3, 45, 61)
    target = torch.randint(0, 4, (2, 45, 61))
    for net in (plain, fast):
        F.cross_entropy(net(x), target).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
