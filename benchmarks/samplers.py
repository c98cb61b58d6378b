"""Peak memory samplers for benchmarks: `with PeakRss() as rss: ...` then `rss.peak`."""

from __future__ import annotations

import threading
import time

import psutil


class PeakSampler:
    """Calls sample() every interval_s in a background thread while the with-block runs."""

    interval_s = 0.1

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PeakRss(PeakSampler):
    """This process's peak resident memory, in bytes."""

    interval_s = 0.02

    def __init__(self):
        super().__init__()
        self.peak = 0
        self._me = psutil.Process()

    def sample(self) -> None:
        self.peak = max(self.peak, self._me.memory_info().rss)


class PeakVram(PeakSampler):
    """Each listed GPU's peak used memory (NVML, whoever uses it)."""

    def __init__(self, indices: list[int]):
        super().__init__()
        import pynvml
        self.nvml = pynvml
        if indices:
            pynvml.nvmlInit()
        self.handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        self.peak = {i: 0 for i in indices}

    def sample(self) -> None:
        for i, handle in self.handles.items():
            self.peak[i] = max(self.peak[i], self.nvml.nvmlDeviceGetMemoryInfo(handle).used)

    def peaks_gb(self) -> list[float]:
        return [round(self.peak[i] / 2**30, 2) for i in sorted(self.peak)]
