"""The CGNet network (Wu et al., IEEE TIP 2020), defaulting to the authors' official M=3, N=21 layout.

The model takes a normalised float image (raw RGB minus the dataset mean, see ``cgnet.data``) and returns
logits at the input's own height and width. Every paper ablation is a constructor switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from cgnet.models.blocks import (
    OFFICIAL_BN_EPS,
    Activation,
    BNAct,
    CGBlock,
    CGDownBlock,
    ConvBNAct,
    InputInjection,
    Residual,
)
from cgnet.models.upsample import upsample_bilinear

Init = Literal["official", "mmseg"]


class CGNet(nn.Module):
    """Context Guided Network.

    Args:
        num_classes: output channels of the classifier.
        M: CG blocks in stage 2, counting its CG-Down block (the paper's M).
        N: CG blocks in stage 3, counting its CG-Down block (the paper's N).
        widths: channels of the stem, stage 2 and stage 3 (paper: 32, 64, 128).
        dilations: f_sur dilation in stage 2 and stage 3 (paper: 2, 4).
        reductions: f_glo reduction in stage 2 and stage 3 (paper: 8, 16).
        use_f_glo: keep the global context extractor (paper ablation, Table 3).
        input_injection: concatenate the down-sampled image into stages 2 and 3 (paper ablation).
        residual: 'global' (GRL), 'local' (LRL) or 'none' (paper ablation, Table 4).
        activation: 'prelu' (paper) or 'relu' (paper ablation, Table 5).
        dropout: Dropout2d rate before the classifier; 0 disables it (the official default).
        head_bias: give the classifier a bias, as mmsegmentation's and sssegmentation's heads have.
        bn_eps: BatchNorm eps (official and mmseg: 1e-3; sssegmentation trained with 1e-5).
        init: 'official' (kaiming fan_in on convs) or 'mmseg' (kaiming fan_out, PReLU slope 0).
    """

    def __init__(
        self,
        num_classes: int,
        M: int = 3,
        N: int = 21,
        *,
        widths: Sequence[int] = (32, 64, 128),
        dilations: Sequence[int] = (2, 4),
        reductions: Sequence[int] = (8, 16),
        use_f_glo: bool = True,
        input_injection: bool = True,
        residual: Residual = "global",
        activation: Activation = "prelu",
        dropout: float = 0.0,
        head_bias: bool = False,
        bn_eps: float = OFFICIAL_BN_EPS,
        init: Init = "official",
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("M", M), ("N", N)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CGNet: {name} must be an integer >= 1, got {value!r}")
        for name, seq in (("widths", widths), ("dilations", dilations), ("reductions", reductions)):
            expected = 3 if name == "widths" else 2
            if len(seq) != expected or any(int(v) < 1 for v in seq):
                raise ValueError(f"CGNet: {name} must be {expected} positive integers, got {seq!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CGNet: dropout must be in [0, 1), got {dropout!r}")
        w1, w2, w3 = (int(v) for v in widths)
        if w2 % 2 or w3 % 2:
            raise ValueError(
                f"CGNet: stage widths must be even (CG blocks split them), got {widths!r}"
            )
        d2, d3 = (int(v) for v in dilations)
        r2, r3 = (int(v) for v in reductions)
        inj = 3 if input_injection else 0
        act = {"activation": activation, "bn_eps": bn_eps}
        block = {"use_f_glo": use_f_glo, **act}

        self.num_classes = num_classes
        self.M, self.N = M, N
        self.input_injection = input_injection

        # The parts in forward order, as cgnet.models.parts.PARTS lists them (a test holds the two
        # together). Stage 1: three 3x3 convs, the first with stride 2.
        self.stem = nn.Sequential(
            ConvBNAct(3, w1, 3, stride=2, **act),
            ConvBNAct(w1, w1, 3, **act),
            ConvBNAct(w1, w1, 3, **act),
        )
        self.injection_2x = InputInjection(1)
        self.join1 = BNAct(w1 + inj, **act)
        # Stage 2 (the paper's M blocks, 1/4 resolution).
        self.stage2_down = CGDownBlock(w1 + inj, w2, d2, r2, **block)
        self.stage2 = nn.ModuleList(
            CGBlock(w2, d2, r2, residual=residual, **block) for _ in range(M - 1)
        )
        self.injection_4x = InputInjection(2)
        self.join2 = BNAct(2 * w2 + inj, **act)
        # Stage 3 (the paper's N blocks, 1/8 resolution).
        self.stage3_down = CGDownBlock(2 * w2 + inj, w3, d3, r3, **block)
        self.stage3 = nn.ModuleList(
            CGBlock(w3, d3, r3, residual=residual, **block) for _ in range(N - 1)
        )
        self.join3 = BNAct(2 * w3, **act)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(2 * w3, num_classes, 1, bias=head_bias)
        self.reset_parameters(init)

    def reset_parameters(self, init: Init = "official") -> None:
        """Initialise as the authors did (or as mmseg does), so from-scratch runs match their recipe."""
        if init not in ("official", "mmseg"):
            raise ValueError(f"CGNet: init must be 'official' or 'mmseg', got {init!r}")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                mode = "fan_in" if init == "official" else "fan_out"
                nn.init.kaiming_normal_(m.weight, mode=mode)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif init == "mmseg" and isinstance(m, nn.PReLU):
                nn.init.zeros_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1/8-resolution joint features that feed the classifier (2 * widths[2] channels)."""
        stem = self.stem(x)
        if self.input_injection:
            stem = torch.cat([stem, self.injection_2x(x)], 1)
        down2 = self.stage2_down(self.join1(stem))
        y = down2
        for blk in self.stage2:
            y = blk(y)
        parts = [y, down2, self.injection_4x(x)] if self.input_injection else [y, down2]
        down3 = self.stage3_down(self.join2(torch.cat(parts, 1)))
        y = down3
        for blk in self.stage3:
            y = blk(y)
        return self.join3(torch.cat([down3, y], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.dropout(self.forward_features(x)))
        return upsample_bilinear(logits, (x.shape[-2], x.shape[-1]))


def expected_num_parameters(num_classes: int, M: int = 3, N: int = 21) -> int:
    """Parameters of the authors' layout (496,306 for 19 classes at M=3, N=21), for checks and reports."""
    return 241_346 + 4_008 * (M - 1) + 12_104 * (N - 1) + 256 * num_classes
