"""The layer every ``python -m cgnet.*`` command goes through.

An entry point is a plain function ``run(cfg) -> result`` plus a ``validate(cfg)`` that checks the
composed config against the signatures it feeds; :func:`hydra_command` turns the pair into a command:

- process-wide switches once, before Hydra or torch start threads (:mod:`cgnet.runtime`);
- every resolver the configs use registered before composition (so any command composes any config);
- overrides checked before Hydra composes them (:mod:`cgnet.overrides`), so ``model.MM=3`` or
  ``data=citiscapes`` is one line with a "did you mean" instead of Hydra's multi-line report;
- each job validated before it touches data; a :class:`cgnet.errors.UserError` (config, data,
  checkpoint) or a config interpolation error becomes one red line and exit status 2;
- a job that fails before writing anything leaves no run folder behind;
- W&B runs finished at the end of each job (a multirun's jobs share the process).

Commands that take plain arguments rather than a Hydra config (``cgnet.report``,
``cgnet.data.benchmark``) go through :func:`plain_command` for the same switches and errors.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from cgnet.errors import ConfigError, UserError
from cgnet.overrides import CONFIG_MODULE, check_overrides, omegaconf_message
from cgnet.runtime import configure_process

T = TypeVar("T")
Task = Callable[[DictConfig], T]

# stderr, so a command's own output (tables, JSON) stays clean on stdout
_console = Console(stderr=True, soft_wrap=True, highlight=False)
log = logging.getLogger("cgnet")


# ------------------------------------------------------------------------------------- resolvers
def _wandb_group() -> str | None:
    from cgnet.wandb_logging import wandb_group

    return wandb_group()


def _wandb_name() -> str | None:
    from cgnet.wandb_logging import wandb_name

    return wandb_name()


def _unless_steps(max_steps: Any, epochs: Any) -> Any:
    """Epochs bound a run only when no step count is given: ``trainer.max_steps=N`` means N steps."""
    return epochs if max_steps in (None, -1) else -1


def config_groups() -> str:
    """The config groups the running command composes, with their options (for ``--help``)."""
    if not HydraConfig.initialized():
        return ""
    choices = HydraConfig.get().runtime.choices
    root = resources.files(CONFIG_MODULE)
    lines = []
    for group in sorted(g for g in choices if not g.startswith("hydra")):
        folder = root.joinpath(group)
        options = sorted(
            p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
        )
        lines.append(f"  {group}: {', '.join(options)}   (now: {choices[group]})")
    return "\n".join(lines)


def register_resolvers() -> None:
    """Every ``${cgnet_*:}`` resolver the configs use; idempotent."""
    resolvers: dict[str, Callable[..., Any]] = {
        # a short random id per process: run folders of jobs started in the same second never
        # collide (Lightning's DDP launcher passes rank 0's resolved run dir to the other ranks)
        "cgnet_uid": lambda: uuid.uuid4().hex[:6],
        "cgnet_wandb_group": _wandb_group,
        "cgnet_wandb_name": _wandb_name,
        "cgnet_unless_steps": _unless_steps,
        "cgnet_config_groups": config_groups,
    }
    for name, function in resolvers.items():
        OmegaConf.register_new_resolver(name, function, use_cache=name == "cgnet_uid", replace=True)


register_resolvers()


# ----------------------------------------------------------------------------------------- errors
def fail(err: BaseException, kind: str | None = None) -> NoReturn:
    """One red line on stderr and exit status 2: the user's to fix, not a bug."""
    kind = kind or getattr(err, "kind", "error")
    message = " ".join(str(err).split("\n")[:3]).strip()
    _console.print(f"[bold red]{escape(kind)}:[/] {escape(message)}", markup=True)
    sys.exit(2)


# ------------------------------------------------------------------------------------ run folders
def _output_dir() -> Path | None:
    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def remove_empty_run_dir() -> None:
    """A job that failed before writing anything leaves no folder that looks like a run."""
    output_dir = _output_dir()
    if (
        output_dir is None
        or not output_dir.is_dir()
        or output_dir.resolve() == Path.cwd().resolve()
    ):
        return
    for path in output_dir.iterdir():
        if path.name == ".hydra":
            continue
        if path.suffix == ".log":
            continue
        return
    shutil.rmtree(output_dir, ignore_errors=True)


def log_to_file(lines: Iterable[str]) -> None:
    """Write lines to the run's log file only (the console already showed them, in colour)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for line in lines:
        record = logging.LogRecord("cgnet", logging.INFO, __file__, 0, line, None, None)
        for handler in handlers:
            handler.handle(record)


def route_library_logs_to_run_log() -> None:
    """Lightning logs through its own console handler and not to the root logger when imported before
    Hydra configures logging; hand its records to the root (Hydra's console + run log) instead."""
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def finish_loggers() -> None:
    """End the W&B run a job opened (without importing wandb if nothing did)."""
    if "wandb" in sys.modules:
        from cgnet.wandb_logging import finish_wandb

        finish_wandb()


# ---------------------------------------------------------------------------------------- commands
def hydra_command(
    config_name: str, validate: Callable[[DictConfig], None]
) -> Callable[[Task[T]], Callable[[], T | None]]:
    """Decorate ``run(cfg)``: the result is the command's ``main()`` (see the module docstring)."""

    def decorate(run: Task[T]) -> Callable[[], T | None]:
        @functools.wraps(run)
        def job(cfg: DictConfig) -> T:
            return _job(run, validate, cfg)

        hydra_main = hydra.main(
            version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name
        )(job)

        @functools.wraps(run)
        def main() -> T | None:
            configure_process()
            try:
                check_overrides(config_name, sys.argv[1:])
            except UserError as err:
                fail(err)
            return hydra_main()

        main.job = job  # type: ignore[attr-defined]
        return main

    return decorate


def _job(run: Task[T], validate: Callable[[DictConfig], None], cfg: DictConfig) -> T:
    """One job: validate, run, and turn the user's mistakes into one line."""
    route_library_logs_to_run_log()
    try:
        validate(cfg)
        return run(cfg)
    except UserError as err:
        remove_empty_run_dir()
        fail(err)
    except OmegaConfBaseException as err:
        remove_empty_run_dir()
        fail(ConfigError(omegaconf_message(err)))
    finally:
        finish_loggers()


def plain_command(main: Callable[..., T]) -> Callable[..., T]:
    """The same switches and one-line errors for commands with plain arguments (argparse)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        configure_process()
        try:
            return main(*args, **kwargs)
        except UserError as err:
            fail(err)

    return wrapper


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
