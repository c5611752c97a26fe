"""The parts table against everything that names CGNet's parts: the model, the weight formats, the
summary and the folded network, so a part added in one place and not the others fails here."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cgnet.inference.fast import UNFOLDED_KINDS, FastCGNet
from cgnet.models import CGNet, export_weights, load_weights
from cgnet.models.blocks import BNAct, CGBlock, CGDownBlock, ConvBNAct, InputInjection
from cgnet.models.parts import (
    KINDS,
    PART_NAMES,
    PARTS,
    SUMMARY_ROWS,
    WEIGHTLESS_KINDS,
    foreign_pattern,
    split_key,
)
from cgnet.models.summary import summarize

VARIANTS: list[dict[str, Any]] = [
    {},
    {"M": 1, "N": 1},
    {"input_injection": False, "use_f_glo": False},
    {"dropout": 0.1, "head_bias": True, "residual": "local"},
]


def _is_kind(module: nn.Module, kind: str) -> bool:
    """Whether a module is what the table says its part is (the paper's building blocks)."""
    checks = {
        "stem": lambda m: isinstance(m, nn.Sequential) and all(isinstance(c, ConvBNAct) for c in m),
        "injection": lambda m: isinstance(m, InputInjection),
        "join": lambda m: isinstance(m, BNAct),
        "cg_down": lambda m: isinstance(m, CGDownBlock),
        "cg_blocks": lambda m: (
            isinstance(m, nn.ModuleList) and all(isinstance(c, CGBlock) for c in m)
        ),
        "dropout": lambda m: isinstance(m, nn.Dropout2d | nn.Identity),
        "classifier": lambda m: type(m) is nn.Conv2d and m.kernel_size == (1, 1),
    }
    return checks[kind](module)


def test_table_is_well_formed() -> None:
    assert len(set(PART_NAMES)) == len(PARTS)
    assert {p.kind for p in PARTS} == set(KINDS)
    for part in PARTS:
        named = [part.official, part.mmseg, part.sssegmentation]
        assert all(n is None for n in named) if part.kind in WEIGHTLESS_KINDS else all(named)
        # A list part's foreign names carry its element index, and only a list part's do.
        assert all(("{k" in n) == part.is_list for n in named if n is not None)


def test_summary_rows_follow_forward_order() -> None:
    """Each row's parts sit together in the table, so rows come out in forward order."""
    order = [p.row for p in PARTS]
    assert order == [row for row, parts in SUMMARY_ROWS.items() for _ in parts]
    assert [n for parts in SUMMARY_ROWS.values() for n in parts] == list(PART_NAMES)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_cgnet_registers_exactly_the_table_in_forward_order(kwargs: dict[str, Any]) -> None:
    model = CGNet(5, **kwargs)
    children = list(model.named_children())
    assert [n for n, _ in children] == list(PART_NAMES)
    for (name, module), part in zip(children, PARTS, strict=True):
        assert _is_kind(module, part.kind), (name, type(module).__name__, part.kind)
        state = len(module.state_dict())
        empty_list = part.is_list and len(module) == 0  # type: ignore[arg-type]  # M=1 or N=1
        assert bool(state) == (part.has_weights and not empty_list), name


def test_forward_uses_the_parts_in_table_order() -> None:
    """Hooks record the order the forward pass first calls each part (lists via their elements)."""
    model = CGNet(5, M=2, N=2, dropout=0.1).eval()
    calls: list[str] = []
    for part in PARTS:
        modules = list(getattr(model, part.name)) if part.is_list else [getattr(model, part.name)]
        for m in modules:
            m.register_forward_hook(lambda *_, name=part.name: calls.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert list(dict.fromkeys(calls)) == list(PART_NAMES)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_every_key_of_the_model_splits_into_a_part(kwargs: dict[str, Any]) -> None:
    model = CGNet(5, **kwargs)
    for key in model.state_dict():
        part, k, rest = split_key(key)
        prefix = f"{part.name}.{k}." if part.is_list else f"{part.name}."
        assert key == prefix + rest and part.has_weights


@pytest.mark.parametrize("key", ["stage2.x.f_loc.weight", "stage2.1", "foo.weight", "stem", "2.w"])
def test_foreign_keys_do_not_split(key: str) -> None:
    with pytest.raises(KeyError, match="not a parameter name"):
        split_key(key)


def test_foreign_names_fill_index_and_head() -> None:
    by_name = dict(zip(PART_NAMES, PARTS, strict=True))
    assert by_name["stem"].foreign("official", 2) == "level1_2"
    assert by_name["stage2"].foreign("official", 0) == "level2.0"
    assert by_name["stage3"].foreign("mmseg", 4) == "backbone.level2.5"
    assert by_name["stage3"].foreign("sssegmentation", 4) == "backbone_net.level2.5"
    assert by_name["classifier"].foreign("official", head=1) == "classifier.1.conv"
    assert by_name["classifier"].foreign("sssegmentation") == "decoder.1"
    with pytest.raises(KeyError, match="no weights"):
        by_name["dropout"].foreign("official")
    with pytest.raises(KeyError, match="a list"):
        by_name["stage2"].foreign("official")


@pytest.mark.parametrize(("M", "N"), [(3, 21), (2, 2)])
def test_exported_names_are_one_to_one_and_recognised(M: int, N: int) -> None:
    """Every key gets its own foreign name, each of which the layout's signature knows."""
    model = CGNet(19, M, N, head_bias=True)
    mmseg = export_weights(model, "mmseg")["state_dict"]
    assert len(mmseg) == len(model.state_dict())
    assert all(foreign_pattern("mmseg").match(k) for k in mmseg)
    plain = CGNet(19, M, N, dropout=0.1)
    official = export_weights(plain, "official")["model"]
    assert len(official) == len(plain.state_dict())
    assert all(foreign_pattern("official").match(k) for k in official)
    assert "classifier.1.conv.weight" in official  # after the authors' Dropout2d
    again = CGNet(19, M, N, dropout=0.1)
    assert load_weights(again, official).format == "official"
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in plain.state_dict().items())


def test_summary_rows_are_the_tables() -> None:
    summary = summarize(CGNet(5, M=1, N=1), size=(32, 32))
    assert [s.name for s in summary.stages][:-1] == list(SUMMARY_ROWS)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_folded_network_holds_the_foldable_parts(kwargs: dict[str, Any]) -> None:
    folded = FastCGNet(CGNet(5, **kwargs))
    names = [n for n, _ in folded.named_children()]
    assert names == ["pool", *(p.name for p in PARTS if p.kind not in UNFOLDED_KINDS)]
    # The forward's typed attributes are the same parts, so it cannot use a name the table lacks.
    assert list(FastCGNet.__annotations__) == names[1:]
