"""Command-line overrides checked before Hydra composes them: a mistyped key or option is one line.

Hydra reports ``model.MM=3`` as a multi-line "Key 'MM' is not in struct" and ``data=citiscapes`` as a
listing; composing the overrides once beforehand lets the entry layer name the key, the nearest real
key or option, and the ``+`` that adds a new key, as one :class:`cgnet.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cgnet.errors import ConfigError

CONFIG_MODULE = "cgnet.conf"


def omegaconf_message(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without its multi-line context, with the key it happened at."""
    first = str(err).split("\n")[0].strip()
    key = getattr(err, "full_key", None)
    return f"{key}: {first}" if key and str(key) not in first else first


def _first_values(overrides: Sequence[str]) -> list[str]:
    """The overrides as one job would see them: a sweep (``a=1,2``) contributes its first value."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    single = []
    for override in parsed:
        if not override.is_sweep_override():
            single.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # an interval(...) sweep has no first value; a sweeper samples it
            continue
        single.append(f"{override.get_key_element()}={first}")
    return single


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _nearest(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def _missing_group_message(err: MissingConfigException, overrides: Sequence[str]) -> str:
    missing = str(err.missing_cfg_file or "")
    group, _, option = missing.rpartition("/")
    options = list(err.options or [])
    if not group or not options:
        return str(err).split("\n")[0]
    near = _nearest(option, options)
    hint = f"did you mean {group}={near}? " if near else ""
    return (
        f"{group}={option}: no such {group} config; {hint}(options: {', '.join(sorted(options))})"
    )


def _unknown_key_message(
    config_name: str, key: str, overrides: list[str], value: str | None
) -> str:
    """``model.MM``: which keys exist beside it, and the ``+`` that adds a new one."""
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = _compose(config_name, others)
    except Exception:
        cfg = None
    parent_key, _, leaf = key.rpartition(".")
    hint = ""
    if cfg is not None:
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig):
            near = _nearest(leaf, [str(k) for k in parent if str(k) != "hydra"])
            if near:
                hint = f"did you mean {parent_key + '.' if parent_key else ''}{near}? "
    add = f"+{key}={value}" if value is not None else f"+{key}=..."
    return f"{key}: no such key; {hint}(a new key needs a leading '+': {add})"


def check_overrides(config_name: str, argv: Sequence[str]) -> None:
    """Compose once before Hydra does, so a mistyped key or option is one line naming it.

    Arguments Hydra treats as flags (``--help``, ``--cfg``, ``-c``...) are left to Hydra.
    """
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return
    raw = [a for a in argv if not a.startswith("-")]
    try:
        overrides = _first_values(raw)
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse the overrides: {str(err).splitlines()[0]}") from None
    try:
        _compose(config_name, overrides)
    except MissingConfigException as err:
        raise ConfigError(_missing_group_message(err, overrides)) from None
    except ConfigCompositionException as err:
        text = str(err)
        for line in text.splitlines():
            if line.startswith("Could not override '"):
                key = line.split("'")[1]
                value = next(
                    (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), None
                )
                raise ConfigError(
                    _unknown_key_message(config_name, key, overrides, value)
                ) from None
            if line.startswith("Could not append to config. An item is already at '"):
                key = line.split("'")[1]
                raise ConfigError(f"+{key}: {key} already exists; set it without the '+'") from None
            if line.startswith("Could not delete from config."):
                raise ConfigError(line) from None
        cause = err.__cause__
        detail = text.splitlines()[0] if text else str(cause)
        raise ConfigError(detail) from None
    except OmegaConfBaseException as err:
        raise ConfigError(omegaconf_message(err)) from None
