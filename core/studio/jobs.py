"""A background job with progress: run a long function in a daemon thread while the caller keeps going.

Used by the app to fit UMAP once per process while PCA is already shown, and to train students while the
researcher moves between pages. ``fn(progress)`` receives a ``progress(fraction, message)`` callback; the
job exposes its latest progress, result or error, an ETA, and a cancel flag ``fn`` may poll
(``job.cancelled``).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable

# Jobs still running when the interpreter exits: torch torn down under a daemon thread in the middle of a
# forward pass aborts the process (SIGABRT), so exit waits a little for them (``_join_at_exit``).
_RUNNING: "weakref.WeakSet[BackgroundJob]" = weakref.WeakSet()
EXIT_WAIT_S = 30.0
# The niceness a background job adds to its thread unless told otherwise (scores, UMAP, students, sweeps): the
# page being drawn and the browser drawing it come first; the jobs share what is left equally.
BACKGROUND_NICE = 10


class BackgroundJob:
    def __init__(self, fn: Callable[[Callable[[float, str], None]], Any], name: str = "job",
                 nice: int = BACKGROUND_NICE):
        """``nice``: added to the thread's scheduling niceness (Linux: per thread), so that background work
        gives the CPU to the page being drawn and the browser first (0: unchanged, for a job a page waits on)."""
        self._fn, self.name, self.nice = fn, name, nice
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.fraction, self.message = 0.0, "not started"
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancelled = False
        self.changed = threading.Condition()   # notified on every progress report and when the job ends

    def start(self) -> "BackgroundJob":
        """Start once; later calls do nothing."""
        with self._lock:
            if self._thread is None:
                self.started_at = time.perf_counter()
                self.message = "starting"
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                _RUNNING.add(self)
                self._thread.start()
        return self

    def _progress(self, fraction: float, message: str) -> None:
        with self.changed:
            self.fraction, self.message = float(fraction), message
            self.changed.notify_all()

    def _work(self) -> None:
        if self.nice and sys.platform.startswith("linux"):
            try:   # on Linux a thread is a task of its own (who 0: the calling thread): this lowers this thread only
                os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            except OSError:
                pass   # not permitted here: the job runs at the process's priority
        try:
            self.result = self._fn(self._progress)
            self._progress(1.0, "done")
        except BaseException as exc:  # reported to the caller through .error
            self.error = exc
            self.message = f"failed: {exc}"
        finally:
            with self.changed:
                self.finished_at = time.perf_counter()
                self.changed.notify_all()

    def cancel(self) -> None:
        """Ask ``fn`` to stop (it polls ``job.cancelled``); the job ends with the error ``fn`` raises."""
        self.cancelled = True

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the elapsed time and the fraction done (None before 2 %)."""
        if self.done or self.fraction < 0.02:
            return None
        return self.elapsed * (1.0 - self.fraction) / self.fraction

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def wait_until(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``condition()`` holds or the job is done (checked at each progress report and at the
        end; ``fn`` reports after changing what ``condition`` reads); whether ``condition()`` held. A job not
        started never changes: the answer is ``condition()`` at once. ``condition`` runs under the job's lock, so
        it must not take other locks."""
        if not self.started:
            return condition()
        with self.changed:
            self.changed.wait_for(lambda: condition() or self.done, timeout)
            return condition()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until done; return the result or raise the job's error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


@atexit.register
def _join_at_exit() -> None:
    """Ask running jobs to stop and wait up to ``EXIT_WAIT_S`` in all for them to end."""
    deadline = time.monotonic() + EXIT_WAIT_S
    jobs = list(_RUNNING)
    for job in jobs:
        job.cancel()
    for job in jobs:
        if job._thread is not None:
            job._thread.join(max(0.0, deadline - time.monotonic()))
