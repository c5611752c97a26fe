"""Non-finite losses and gradients, watched on the device so that a training step never waits for
the host: each step folds its flags into a device tensor, and the host reads it every N steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

What = Literal["loss", "gradients"]
_WHAT: tuple[What, ...] = ("loss", "gradients")


@dataclass(frozen=True)
class NonFinite:
    """The first non-finite value since the last read: what it was, at which step, in which batch."""

    what: What
    step: int
    ids: tuple[str, ...]
    count: int  # steps with a non-finite value since the last read


class NonFiniteWatch:
    """Device-side record of the first step whose loss or gradients were not finite.

    ``record`` costs a few tiny kernels and no synchronisation; ``read`` (one host sync) returns the
    first such step since the previous read and forgets it. Batch ids are kept for unread steps only.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ValueError(f"module.nonfinite_check_every must be >= 1, got {every}")
        self.every = every
        self._first: torch.Tensor | None = None  # step * 2 + what index, or -1
        self._count: torch.Tensor | None = None
        self._ids: dict[int, tuple[str, ...]] = {}
        self._step = -1
        self._step_bad: torch.Tensor | None = None  # loss or gradients of self._step not finite

    def due(self, step: int) -> bool:
        """Whether the host should read the flags after ``step`` (0-based)."""
        return (step + 1) % self.every == 0

    def record(self, bad: torch.Tensor, step: int, what: What, ids: Sequence[str]) -> None:
        """Fold ``bad`` (a 0-dim bool tensor) for ``step`` into the record, without a sync."""
        if self._first is None or self._count is None or self._first.device != bad.device:
            self._first = torch.full((), -1, dtype=torch.long, device=bad.device)
            self._count = torch.zeros((), dtype=torch.long, device=bad.device)
        code = step * 2 + _WHAT.index(what)
        self._first = torch.where((self._first < 0) & bad, code, self._first)
        if step != self._step:
            self._flush_step()
            self._step = step
        self._step_bad = bad if self._step_bad is None else self._step_bad | bad
        self._ids[step] = tuple(ids)

    def _flush_step(self) -> None:
        """Count the last recorded step once, whether its loss, its gradients or both were bad."""
        if self._step_bad is not None and self._count is not None:
            self._count = self._count + self._step_bad.long()
        self._step_bad = None

    def read(self) -> NonFinite | None:
        """The first non-finite value since the last read (one host sync), then a clean record."""
        if self._first is None or self._count is None:
            return None
        self._flush_step()
        first, count = int(self._first.item()), int(self._count.item())
        ids, self._ids = self._ids, {}
        self._first.fill_(-1)
        self._count.zero_()
        if first < 0:
            return None
        step, what = divmod(first, 2)
        return NonFinite(_WHAT[what], step, ids.get(step, ()), count)
