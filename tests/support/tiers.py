"""The suite's two tiers, and the watch that keeps the fast one honest.

A test is marked `comfy` when it starts ComfyUI (directly, or through the real worker, which starts its
own), `image` when it builds the container image or resolves its environments for the production Python
(test_dockerfile.py: pip reads about 1 GB of wheels). conftest.py marks a test by the fixtures it uses
(HEAVY_FIXTURES there, fixtures of fixtures included); a test that starts ComfyUI without them carries
the marker itself. The fast tier is the rest: `make test-fast`, `pytest -m "not comfy and not image"`.

In a run that selected no `comfy` or `image` test, ComfyUIWatch looks at pytest's descendant processes
several times a second: a ComfyUI server (`main.py ... --port`) or an image tool (buildah, podman, docker,
mmdebstrap) among them fails the test that was running, since it needs a marker it lacks.
"""

from __future__ import annotations

import os
import threading

import psutil

TIERS = ("comfy", "image")
FAST_TIER = "not comfy and not image"
IMAGE_TOOLS = {"buildah", "podman", "docker", "mmdebstrap"}
STAND_IN_ENV = "TIERS_STAND_IN"  # on a process with ComfyUI's command line that starts nothing heavy: not counted


def heavy_process(cmdline: list[str]) -> str | None:
    """What the command line starts, where it is a ComfyUI server or an image tool; else None."""
    if not cmdline:
        return None
    if any(os.path.basename(arg) == "main.py" for arg in cmdline) and "--port" in cmdline:
        return "a ComfyUI process"
    if os.path.basename(cmdline[0]) in IMAGE_TOOLS:
        return f"an image tool ({os.path.basename(cmdline[0])})"
    return None


class ComfyUIWatch:
    """Polls this process's descendants; `found` lists (test, what, command line) for each heavy one."""

    def __init__(self, interval_s: float = 0.2, count_stand_ins: bool = False):
        self.interval_s = interval_s
        self.count_stand_ins = count_stand_ins
        self.current = "(between tests)"
        self.found: list[tuple[str, str, str]] = []
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fast-tier-watch", daemon=True)

    def start(self) -> "ComfyUIWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def poll(self) -> None:
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid in self._seen:
                continue
            self._seen.add(child.pid)
            try:
                cmdline = child.cmdline()
                what = heavy_process(cmdline)
                if what and not self.count_stand_ins and STAND_IN_ENV in child.environ():
                    continue
            except psutil.Error:
                continue
            if what:
                self.found.append((self.current, what, " ".join(cmdline)[:160]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def found_during(self, test: str) -> list[str]:
        return [f"{what}: {cmdline}" for name, what, cmdline in self.found if name == test]
