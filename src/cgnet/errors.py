"""The mistakes a user can make, as exceptions the entry points turn into one line and exit status 2.

Everything that is the user's to fix (a config key, a data tree, a checkpoint file) raises a
:class:`UserError` whose message names the key or file and the fix; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message names the key or file and what was expected."""

    kind = "error"


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the fix."""

    kind = "config error"


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be read, or would run code to be read."""

    kind = "checkpoint error"
