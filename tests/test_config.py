"""Config validation: typos and wrong types become one clear line naming the key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytest

from cgnet.config import ConfigError, check_arguments, matches
from cgnet.models import CGNet


@pytest.mark.parametrize(
    ("value", "annotation", "ok"),
    [
        (3, int, True),
        (True, int, False),
        ("3", int, False),
        (3, float, True),
        (0.5, int, False),
        (None, int | None, True),
        ([1, 2], Sequence[int], True),
        ([1, "a"], Sequence[int], False),
        ("ab", Sequence[int], False),
        ((1.0, 2), tuple[float, ...], True),
        ("prelu", Literal["prelu", "relu"], True),
        ("gelu", Literal["prelu", "relu"], False),
        ({"a": 1}, dict[str, int], True),
        (1, Literal[True], False),
    ],
)
def test_matches(value: object, annotation: object, ok: bool) -> None:
    assert matches(value, annotation) is ok


def test_typo_names_the_key_and_suggests_the_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.redisual: unknown key .*did you mean 'model\.residual'"
    ):
        check_arguments({"redisual": "global"}, CGNet, "model")


def test_wrong_type_names_the_key_and_the_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"model\.M: expected int, got str 'three'"):
        check_arguments({"M": "three"}, CGNet, "model")
    with pytest.raises(ConfigError, match=r"model\.residual: expected .*got str 'both'"):
        check_arguments({"residual": "both"}, CGNet, "model")


def test_valid_arguments_pass() -> None:
    check_arguments({"M": 3, "N": 21, "widths": [32, 64, 128], "dropout": 0}, CGNet, "model")


def test_every_command_schema_resolves_its_type_hints() -> None:
    """A hint that does not resolve where the dataclass lives turns every type check of that command
    off without a word (keys are still checked): each schema's hints must resolve."""
    import typing

    from cgnet.benchmark.settings import BenchmarkSettings, TrainThroughputSettings
    from cgnet.data.check import CheckSettings
    from cgnet.data.prepare import PrepareSettings
    from cgnet.data.synthetic import SyntheticSettings
    from cgnet.eval import EvalSettings
    from cgnet.export import ExportSettings
    from cgnet.models.summary import SummarySettings
    from cgnet.predict import PredictSettings

    for schema in (
        BenchmarkSettings,
        TrainThroughputSettings,
        CheckSettings,
        PrepareSettings,
        SyntheticSettings,
        EvalSettings,
        ExportSettings,
        SummarySettings,
        PredictSettings,
    ):
        hints = typing.get_type_hints(schema.__init__)
        assert hints, schema
