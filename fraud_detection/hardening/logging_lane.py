"""A background thread that sends a step's logging calls while the step goes on computing.

Guards against: tracking that doubles a train step's time. Measured with
``bench/tracking_overhead.py`` against a local ``mlflow server``: the first tracked train step
took 50% longer than the same computation untracked; with this lane (and ``datasets``) 12% at
the default size, 5.7% at four times the data (``docs/performance.md``). MLflow's own
asynchronous logging (``synchronous=False``) queues ``log_batch`` calls only; creating runs,
datasets and artifacts stay blocking there.

A fork may remove it by calling the queued functions directly where they are submitted: the
step then waits for every request as it is made.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from fraud_detection.hardening.outages import retry_while_stores_down


class LoggingLane:
    """Logging calls sent one after another from a background thread, off the critical path.

    A step hands the lane what it can log while it goes on computing (datasets, finished child
    runs, checkpoints, curves) and waits for it only where it must read back what was logged.
    MLflow's own asynchronous logging (``synchronous=False``) queues ``log_batch`` calls only;
    creating runs, datasets and artifacts stay blocking there, hence this lane.

    Calls must name their run (``MlflowClient`` with a run id): MLflow's active run is per
    thread. The first failure is raised on the caller's thread by the next ``check``, ``drain``
    or the end of the ``with`` block, and the calls queued after it are dropped: against a
    server that is gone, each would wait its whole retry budget. When the block itself raises,
    queued calls are dropped and the one under way is waited for.

    A call that fails because a store behind the server is down (not the server itself) is
    repeated until the store is back or the store retry budget is spent
    (``outages.retry_while_stores_down``): every call handed to the lane must be safe to repeat.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logging-lane")
        self._pending: list[Future] = []
        self._failed = threading.Event()
        self._abandoned = threading.Event()  # the step failed: stop waiting out an outage
        self._scratch = contextlib.ExitStack()

    def __enter__(self) -> LoggingLane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.drain()
            else:
                self._abandoned.set()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._scratch.close()

    def submit(self, call: Callable[..., object], *args: object) -> None:
        """Queue ``call(*args)``; first raise any failure of the calls already finished."""
        self.check()
        self._pending.append(self._pool.submit(self._call, call, args))

    def check(self) -> None:
        """Raise the first failure among the calls finished so far."""
        for future in self._pending:
            if not future.done():  # one worker: the finished calls come first
                return
            future.result()

    def drain(self) -> None:
        """Wait until every queued call is done; raise the first failure."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def scratch_dir(self) -> Path:
        """A temporary folder that lives as long as the lane: for files a queued call uploads."""
        return Path(self._scratch.enter_context(tempfile.TemporaryDirectory()))

    def _call(self, call: Callable[..., object], args: tuple[object, ...]) -> None:
        if self._failed.is_set():
            return  # dropped: an earlier call failed, and that failure is the one raised
        try:
            retry_while_stores_down(lambda: call(*args), abandon=self._abandoned)
        except BaseException:
            self._failed.set()
            raise
