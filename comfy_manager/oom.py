"""Did an instance run out of memory? The evidence, from the surest to the weakest.

- The kernel's log names the process its OOM killer killed ("Killed process PID"), where it can be read
  (/dev/kmsg; root in most containers).
- The memory cgroup the process ran in counts OOM kills (cgroup v2 memory.events, v1 memory.oom_control);
  a SIGKILL while that count rose is most likely the OOM killer.
- The instance's own log, or a node's error, carries an allocator's words (CUDA out of memory, torch's
  OutOfMemoryError, the CPU allocator's "not enough memory"), when the process survived its OOM or
  printed it before dying.

A plain SIGKILL is not evidence by itself: people and tests kill processes too.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

OOM_TEXT = re.compile(
    r"CUDA out of memory|OutOfMemoryError|out of memory|DefaultCPUAllocator: (?:not enough|can't allocate) memory"
    r"|Cannot allocate memory|MemoryError|Allocation on device|Got an OOM",
    re.IGNORECASE)
KMSG = Path("/dev/kmsg")


def oom_line(text: str) -> str | None:
    """The first line of text that reads as an allocation failure, trimmed; None if there is none."""
    for line in text.splitlines():
        if OOM_TEXT.search(line):
            return line.strip()[:300]
    return None


def kernel_oom_kill(pid: int, kmsg: Path = KMSG) -> str | None:
    """The kernel log's line saying its OOM killer killed pid, if the log is readable and has one."""
    pattern = re.compile(rf"(?:Killed process {pid} \(|oom-kill:.*[,\s]pid={pid},)")
    found = None
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BrokenPipeError:  # a record was overwritten while reading: go on with the next
                continue
            except (BlockingIOError, OSError):
                break
            if not record:
                break
            # /dev/kmsg gives one "PRIORITY,SEQ,TIME,-;MESSAGE" record per read (a file: many lines).
            for line in record.decode(errors="replace").splitlines():
                message = line.split(";", 1)[-1].strip()
                if pattern.search(message):
                    found = message[:300]
    finally:
        os.close(fd)
    return found


@dataclass(frozen=True)
class MemoryCgroup:
    """The file where a process's memory cgroup counts its OOM kills."""

    counter_file: Path

    @classmethod
    def of_process(cls, pid: int, root: Path = Path("/sys/fs/cgroup")) -> MemoryCgroup | None:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):  # cgroup v1
                candidate = root / "memory" / path.lstrip("/") / "memory.oom_control"
            elif controllers == "":  # cgroup v2
                candidate = root / path.lstrip("/") / "memory.events"
            else:
                continue
            if candidate.exists():
                return cls(candidate)
        return None

    def oom_kills(self) -> int | None:
        try:
            for line in self.counter_file.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return None


@dataclass(frozen=True)
class ProcessEnd:
    """What is known of a finished ComfyUI process, to judge whether it ran out of memory."""

    pid: int
    returncode: int
    oom_kills_before: int | None  # its memory cgroup's count when it started
    cgroup: MemoryCgroup | None
    log_since_last_prompt: str  # its log from the last prompt it ran (or its start) to its end


def out_of_memory(end: ProcessEnd, kmsg: Path = KMSG) -> str | None:
    """Why the process is believed to have run out of memory, or None."""
    killed = end.returncode == -signal.SIGKILL
    if killed:
        line = kernel_oom_kill(end.pid, kmsg)
        if line:
            return f"killed by the kernel's OOM killer ({line})"
        after = end.cgroup.oom_kills() if end.cgroup else None
        if after is not None and end.oom_kills_before is not None and after > end.oom_kills_before:
            return (f"killed by SIGKILL while its memory cgroup counted an OOM kill "
                    f"({end.cgroup.counter_file}: oom_kill {end.oom_kills_before} -> {after})")
    line = oom_line(end.log_since_last_prompt)
    if line:
        return f"its log says: {line}"
    return None
