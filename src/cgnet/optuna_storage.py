"""Let several Optuna sweeps open one study database at the same time.

optuna<3 (the version the Hydra Optuna sweeper pins) sets up a fresh database without guarding against
a second process doing the same: of two sweeps started together on a new ``sqlite:///study.db``, about
one in four dies with ``table ... already exists`` or ``UNIQUE constraint failed: alembic_version``.
:class:`PrepareOptunaStorage`, a Hydra callback that ``hparams_search=depth_optuna`` installs, opens
``hydra.sweeper.storage`` before the sweeper does and retries those races; the sweeper then finds the
tables in place and joins the study (it creates studies with ``load_if_exists=True``).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# What two processes racing through optuna's first-time setup (or a busy SQLite file) raise.
_RACES = ("already exists", "unique constraint failed", "database is locked")


def _is_race(error: Exception) -> bool:
    return any(text in str(error).lower() for text in _RACES)


def prepare_storage(url: str, attempts: int = 20, wait_s: float = 0.25) -> None:
    """Create optuna's tables and schema stamp in ``url`` if missing, retrying other processes' races.

    Raises what optuna raises for anything else (a wrong URL, a missing driver) at once.
    """
    import optuna
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    if int(sqlalchemy.__version__.split(".")[0]) >= 2:
        log.error(
            "optuna %s's database storage needs SQLAlchemy<2 (found %s): "
            "pip install 'sqlalchemy>=1.4,<2' (the `sweep` extra pins it)",
            optuna.__version__,
            sqlalchemy.__version__,
        )
    for attempt in range(1, attempts + 1):
        try:
            storage = optuna.storages.RDBStorage(url)
        except SQLAlchemyError as error:
            if attempt == attempts or not _is_race(error):
                raise
            # Jitter, so that two losers do not collide again on the next try.
            time.sleep(wait_s * (1.0 + random.random()))
        else:
            storage.engine.dispose()
            return


class PrepareOptunaStorage(Callback):
    """Hydra callback: set up ``hydra.sweeper.storage`` before the Optuna sweeper opens it."""

    def __init__(self, attempts: int = 20, wait_s: float = 0.25) -> None:
        self.attempts = attempts
        self.wait_s = wait_s

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        url = OmegaConf.select(config, "hydra.sweeper.storage")
        if isinstance(url, str) and url:
            prepare_storage(url, self.attempts, self.wait_s)
