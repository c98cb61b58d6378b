"""Child processes that cannot outlive the worker, however it ends.

A ComfyUI process runs in a session of its own (so that stopping it stops everything it started) and
holds a GPU, so nothing stops it when the worker dies by a signal (atexit handlers do not run then) or
is killed outright. Linux can send a child a signal when its parent dies (PR_SET_PDEATHSIG); two details
shape how it is used here:

- It is set inside the child before it runs ComfyUI. Popen's preexec_fn could do that, but it is not
  safe in a process with threads (the worker has many), so a tiny script (die_with_parent.py) sets it
  and then execs ComfyUI's Python.
- The "parent" it watches is the thread that forked the child, not the process: a child started from a
  restart thread would be killed when that thread ends. So every child is forked by one thread that
  lives as long as the worker (spawn below), and only the worker's death kills them.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

SHIM = Path(__file__).resolve().parent / "die_with_parent.py"


class _Spawner:
    """One daemon thread that runs every Popen of the process, for the life of the process."""

    def __init__(self):
        self._requests: queue.SimpleQueue[tuple[Future, list[str], dict[str, Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="process-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._requests.put((future, args, kwargs))
        return future.result()

    def _run(self) -> None:
        while True:
            future, args, kwargs = self._requests.get()
            try:
                future.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:  # handed to the caller, the thread goes on
                future.set_exception(exc)


_spawner = _Spawner()


def spawn_tied(args: list[str], python: str | None = None, **popen_kwargs: Any) -> subprocess.Popen:
    """Starts args[0] with args[1:] so that it is killed (SIGKILL) when this process dies.

    python: the interpreter that runs the small shim (default: this one). The child keeps the pid the
    returned Popen has: the shim execs the program in place.
    """
    # -I -S: the shim needs only the standard library, so skip site-packages and the environment.
    command = [python or sys.executable, "-I", "-S", str(SHIM), str(os.getpid()), *args]
    return _spawner.popen(command, **popen_kwargs)
