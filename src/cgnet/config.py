"""Config validation against the code's own signatures, before any heavy work starts.

The schema of each config group is the type-hinted signature of the thing it builds (the ``_target_``
class, ``CGNet`` for ``model``, the torch optimiser for ``optimizer``), so there is one source of truth:
a typo'd key or a value of the wrong type becomes one clear line naming the key, instead of a
traceback from deep inside a library after data loading has started.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import pathlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from cgnet.errors import ConfigError

__all__ = [
    "ConfigError",
    "build_target",
    "check_arguments",
    "check_settings",
    "check_target_node",
    "matches",
    "plain",
]


_SEQUENCES = (
    list,
    tuple,
    collections.abc.Sequence,
    collections.abc.Iterable,
    collections.abc.Collection,
)
_MAPPINGS = (dict, collections.abc.Mapping)


def matches(value: Any, annotation: Any) -> bool:
    """Whether a plain YAML value fits a type annotation; unknown (non-YAML) types are let through."""
    if annotation in (Any, inspect.Parameter.empty, object):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (pathlib.Path, pathlib.PurePath):
        return isinstance(value, str)
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],)
        if origin is tuple and args and len(args) != 1:
            return len(value) == len(args) and all(map(matches, value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in _MAPPINGS or annotation in _MAPPINGS:
        return isinstance(value, dict)
    if isinstance(
        annotation, type
    ):  # a class (Tensor, Accelerator, ...): only an instance or a node
        return isinstance(value, annotation) or (isinstance(value, dict) and "_target_" in value)
    return True  # TypeVars, Protocols and other typing forms: the library will judge


def describe(annotation: Any) -> str:
    """Readable form of an annotation for error messages."""
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    return getattr(annotation, "__name__", text) if isinstance(annotation, type) else text


def signature_parameters(
    target: Callable[..., Any],
) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Named parameters and their type hints; a class's ``**kwargs`` is followed up its bases, so a
    subclass that adds a few keywords and forwards the rest is checked against the whole set."""
    if inspect.isclass(target):
        # Only our own classes forward **kwargs to their base by convention; a library's **kwargs
        # (WandbLogger's go to wandb.init) stays open.
        chain = [c for c in inspect.getmro(target) if "__init__" in c.__dict__]
        ours = [c for c in chain if c.__module__.startswith("cgnet.")]
        functions = [
            c.__dict__["__init__"] for c in (ours if chain and chain[0] in ours else chain[:1])
        ]
    else:
        functions = [target]
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    open_kwargs = True
    for function in functions:
        own = inspect.signature(function).parameters
        for name, param in own.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                params.setdefault(name, param)
        try:
            for name, hint in typing.get_type_hints(function).items():
                hints.setdefault(name, hint)
        except Exception:  # unresolvable forward references: key checks only
            pass
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in own.values())
        if not open_kwargs:
            break
    return params, hints, open_kwargs


def check_arguments(
    values: Mapping[str, Any],
    signature_of: Callable[..., Any],
    where: str,
    *,
    skip: Iterable[str] = (),
) -> None:
    """Check keys and value types of ``values`` against the type-hinted signature of ``signature_of``."""
    params, hints, open_kwargs = signature_parameters(signature_of)
    accepted = list(params)
    name = getattr(signature_of, "__qualname__", str(signature_of))
    prefix = f"{where}." if where else ""
    for key, value in values.items():
        if key.startswith("_") or key in skip:
            continue
        if key not in params:
            if open_kwargs:
                continue
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{prefix}{key}: unknown key for {name}{hint} (known keys: {', '.join(accepted)})"
            )
        annotation = hints.get(key, params[key].annotation)
        if not matches(value, annotation):
            raise ConfigError(
                f"{prefix}{key}: expected {describe(annotation)}, got {type(value).__name__} {value!r}"
            )


def check_target_node(node: DictConfig | Mapping[str, Any], where: str) -> None:
    """Validate a ``_target_`` node (data module, trainer, callback, logger) against its class."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    assert isinstance(values, dict)
    target = values.get("_target_")
    if not isinstance(target, str):
        raise ConfigError(f"{where}: missing '_target_' (the class this config builds)")
    try:
        cls = get_class(target)
    except Exception as err:
        raise ConfigError(f"{where}._target_: cannot import {target!r} ({err})") from None
    check_arguments(values, cls, where)


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (None stays None)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_settings(
    cfg: DictConfig, schema: Callable[..., Any], *, groups: Iterable[str] = ()
) -> None:
    """The top-level keys of a command's config (its groups and ``hydra`` aside) against ``schema``,
    a dataclass naming each key and its type: a typo or a wrong type is one line naming the key."""
    skip = {*groups, "hydra"}
    values = {k: v for k, v in (plain(cfg) or {}).items() if k not in skip}
    check_arguments(values, schema, "")


def build_target(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """``instantiate(node)``, with the class's own complaint about a value as one line naming
    ``where`` (Hydra would wrap it in a multi-line InstantiationException)."""
    from cgnet.errors import UserError

    try:
        return instantiate(node, **kwargs)
    except Exception as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            message = str(cause).splitlines()[0]
            raise ConfigError(
                message if message.startswith(where) else f"{where}: {message}"
            ) from None
        raise
