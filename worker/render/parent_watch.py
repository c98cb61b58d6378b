"""A segment job's watch on its parent: the job on another worker that sent it (worker/render/remote.py).

A parent that is alive cancels its segment jobs itself when it ends early (RemoteSegments.cancel_all). One whose
worker died cannot: without this watch its segment jobs would render on until their own executionTimeout, holding
a GPU for a result nobody reads. So every FANOUT_PARENT_CHECK_S a segment job asks the endpoint for its parent's
/status, and stops (its cancel event) where the parent
  - has ended: COMPLETED, FAILED, CANCELLED or TIMED_OUT;
  - is queued again (a parent that has sent segments is queued again only where it is retried: its worker is gone);
  - runs on a worker other than the one that sent the segment (its progress names its worker; seen at two checks in
    a row): a new run of the parent plans and sends its segments again;
  - reports nothing new for FANOUT_STALL_S while IN_PROGRESS (a running parent publishes its progress every
    PROGRESS_INTERVAL_S): its worker is gone, whatever RunPod shows of it yet.
Anything else changes nothing: IN_PROGRESS on the sending worker, a 404 (a parent that is not a job of this endpoint,
such as a local API job, or one whose result has expired), or an endpoint that does not answer.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Callable

log = logging.getLogger(__name__)

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def why_stop(state: dict | None, parent_job: str, parent_worker: str) -> str | None:
    """Why a segment job of `parent_job` (sent from `parent_worker`, '' where unknown) should stop, from the
    parent's /status body (None: the endpoint does not know it); None: go on."""
    if not isinstance(state, dict):
        return None
    status = state.get("status")
    if status in ENDED:
        return f"its parent job {parent_job} has ended ({status})"
    if status == "IN_QUEUE":
        return f"its parent job {parent_job} is queued again (its worker {parent_worker or '?'} was lost)"
    worker = other_worker(state, parent_worker)
    if worker:
        return f"its parent job {parent_job} runs again on worker {worker}, not on {parent_worker} that sent it"
    return None


def other_worker(state: dict, parent_worker: str) -> str | None:
    """The worker the parent's progress names where it runs on one other than `parent_worker` that sent the
    segment ('' where unknown: never another); None: it does not."""
    output = state.get("output")
    worker = output.get("worker") if state.get("status") == "IN_PROGRESS" and isinstance(output, dict) else None
    return worker if worker and parent_worker and worker != parent_worker else None


class ParentWatch:
    """Checks the parent every `interval_s` on a thread of its own while the segment job runs (a context manager);
    sets `cancel` and keeps the reason in `reason` where why_stop() gives one. `status_of(job_id)` returns the
    /status body, None for a 404, or raises where the endpoint does not answer."""

    def __init__(self, parent_job: str, parent_worker: str, status_of: Callable[[str], dict | None],
                 cancel: threading.Event, interval_s: float, stall_s: float = float("inf"),
                 clock: Callable[[], float] = time.monotonic):
        self.parent_job, self.parent_worker = parent_job, parent_worker
        self.status_of, self.cancel, self.interval_s = status_of, cancel, interval_s
        self.stall_s, self.clock = stall_s, clock
        self.reason: str | None = None
        self._last_output: object = None
        self._last_change = clock()
        self._elsewhere = False  # the last check saw the parent on another worker
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"parent-watch-{parent_job}", daemon=True)
        self._failing = False

    def __enter__(self) -> ParentWatch:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def check(self) -> str | None:
        """One look at the parent; the reason to stop, if there is one (set once, with the cancel)."""
        try:
            state = self.status_of(self.parent_job)
        except Exception as exc:  # the endpoint did not answer: asked again at the next check
            if not self._failing and not self._done.is_set():
                log.warning("could not check parent job %s (asked again every %.0f s): %s", self.parent_job,
                            self.interval_s, exc)
            self._failing = True
            return None
        self._failing = False
        if self._done.is_set():  # the segment job has ended meanwhile: nothing to stop
            return None
        reason = why_stop(state, self.parent_job, self.parent_worker)
        elsewhere = isinstance(state, dict) and other_worker(state, self.parent_worker) is not None
        if elsewhere and not self._elsewhere:  # once could be a new run's first moments: twice is sure
            reason = None
        self._elsewhere = elsewhere
        reason = reason or self._stalled(state)
        if reason and self.reason is None:
            self.reason = reason
            log.warning("segment job stops: %s", reason)
            self.cancel.set()
        return reason

    def _stalled(self, state: dict | None) -> str | None:
        """Why the parent counts as gone although RunPod shows it running: its progress has not changed for
        stall_s (it changes every PROGRESS_INTERVAL_S while the parent's worker lives)."""
        now = self.clock()
        if not isinstance(state, dict) or state.get("status") != "IN_PROGRESS" or state.get("output") != self._last_output:
            self._last_output = state.get("output") if isinstance(state, dict) else None
            self._last_change = now
            return None
        if now - self._last_change > self.stall_s:
            return (f"its parent job {self.parent_job} has reported nothing for {now - self._last_change:.0f} s "
                    "(FANOUT_STALL_S): its worker is gone")
        return None

    def _run(self) -> None:
        while not self.cancel.is_set():  # a first look at once: the parent may have ended while this job queued
            if self.check() or self._done.wait(self.interval_s):
                return


def endpoint_status(endpoint_id: str, api_key: str) -> Callable[[str], dict | None]:
    """status_of for ParentWatch through the runpod SDK's endpoint client (RUNPOD_ENDPOINT_BASE_URL moves its base
    URL): remote.job_status, the read the parent's own watch on its segment jobs makes."""
    import runpod

    from worker.render.remote import job_status

    return partial(job_status, runpod.Endpoint(endpoint_id, api_key=api_key))
