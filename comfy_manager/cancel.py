"""A job's stop signal that can wake whoever waits for it, without polling."""

from __future__ import annotations

import threading
from typing import Callable


class CancelEvent(threading.Event):
    """A threading.Event that also runs callbacks when set (the pool wakes a waiting acquire with one).

    Everything that reads an Event (is_set, wait) works as before; where a plain threading.Event is given
    instead, waiters notice it at short intervals (InstancePool.acquire).
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._callbacks_lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Runs callback once when the event is set (at once if it is already); returns an unsubscribe."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._unsubscribe(callback)
        callback()
        return lambda: None

    def _unsubscribe(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
