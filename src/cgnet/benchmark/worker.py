"""A benchmark job in its own process, or in this one, behind the same request/answer interface.

Own processes keep process-wide settings (heap reuse, compiled code, onnxruntime's arena) from
flattering or penalising the other variants, and make peak memory a per-variant figure. The parent
sends ``(method, args)`` over a pipe; the worker answers ``("ok", value)`` or ``("error", text)``
and stops on ``("stop", ())`` or when the parent goes away.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from typing import Any

import torch

from cgnet.runtime import flush_denormals


def _serve(conn: Any, job_class: type, kwargs: dict[str, Any], threads: int | None) -> None:
    """Worker process: build the job, then answer (method, args) requests until told to stop."""
    flush_denormals()  # before any torch op, so the thread pool inherits it
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    try:
        job = job_class(**kwargs)
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ok", None))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # the parent went away
            return
        if method == "stop":
            return
        try:
            conn.send(("ok", getattr(job, method)(*args)))
        except Exception as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))


class Worker:
    """``job_class(**kwargs)`` in its own spawned process (``isolate=True``) or in this one.

    ``job_class`` must be importable by name (a module-level class), since a spawned process
    rebuilds it from its qualified name.
    """

    def __init__(
        self, job_class: type, kwargs: dict[str, Any], *, isolate: bool, threads: int | None
    ) -> None:
        self.process: Any = None
        self.job: Any = None
        if not isolate:
            if threads:
                torch.set_num_threads(threads)
            torch.backends.cudnn.benchmark = True
            self.job = job_class(**kwargs)
            return
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, job_class, kwargs, threads), daemon=True
        )
        self.process.start()
        child.close()
        self._answer()

    def _answer(self) -> Any:
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError("benchmark worker died (out of memory?)") from None
        if status == "error":
            raise RuntimeError(value)
        return value

    def request(self, method: str, *args: Any) -> Any:
        """Call ``job.method(*args)`` wherever the job lives and return its result."""
        if self.job is not None:
            return getattr(self.job, method)(*args)
        self.conn.send((method, args))
        return self._answer()

    def close(self) -> None:
        """Stop the worker (politely, then by force) so no process outlives the benchmark."""
        if self.process is not None and self.process.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(("stop", ()))
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.terminate()
        self.job = None


def request_profile(worker: Worker) -> tuple[list[dict[str, Any]], str | None]:
    """The job's ``profile()``, or why the profiler failed on it: the timings stand either way."""
    try:
        return worker.request("profile"), None
    except Exception as error:  # a profiler limitation must not cost the measured figures
        return [], f"{type(error).__name__}: {error}"


__all__ = ["Worker", "request_profile"]
