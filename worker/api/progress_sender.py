"""A job's progress to RunPod, in the order it was made.

The SDK's `runpod.serverless.progress_update` sends each update from a new thread of its own, so two updates made
a few milliseconds apart (a segment ends, then stitching begins) can reach RunPod in either order, and its /status
shows whichever came last: a percent that goes back until the next update. ProgressSender sends from one thread,
one update after the other, and an update made while another is on its way replaces any still waiting: RunPod
gets the newest, never an older one after it. The job never waits for a send.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("progress")


class ProgressSender:
    def __init__(self, send: Callable[[Any], None], name: str = "job"):
        self._send = send
        self._name = name
        self._waiting: Any = None  # the newest update not yet sent
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"progress-sender-{name}", daemon=True)
        self._thread.start()

    def put(self, update: Any) -> None:
        """Sends `update` after the one on its way, if any; one still waiting is dropped for it."""
        with self._changed:
            if not self._closed:
                self._waiting = update
                self._changed.notify()

    def close(self) -> None:
        """No more updates: one still waiting is dropped (the job's result follows). A send on its way ends by
        itself; close() does not wait for it."""
        with self._changed:
            self._closed, self._waiting = True, None
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._waiting is None and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                update, self._waiting = self._waiting, None
            try:
                self._send(update)
            except Exception as exc:  # the job goes on; the next update may get through
                log.warning("job %s: a progress update could not be sent: %s: %s", self._name,
                            type(exc).__name__, exc)
