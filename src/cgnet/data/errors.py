"""The one exception broken data raises, so callers can catch data problems apart from bugs."""

from __future__ import annotations

from cgnet.errors import UserError


class DataError(UserError):
    """A dataset on disk is missing, incomplete or malformed.

    The message always names the offending path and what was expected there. The constructor takes a
    single message so the exception survives DataLoader workers (PyTorch re-raises a worker's error
    by calling its type with the formatted message).
    """

    kind = "data error"
