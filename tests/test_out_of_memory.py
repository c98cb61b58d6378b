"""Out of memory is told apart from a crash and not retried into the same wall: a node whose allocation
fails (real ComfyUI, a graph that asks for petabytes), and an instance the kernel's OOM killer kills (real
ComfyUI in a memory cgroup with a low limit, where the machine lets the test make one)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from comfy_manager.oom import MemoryCgroup, ProcessEnd, kernel_oom_kill, oom_line, out_of_memory
from media_samples.factory import make_image, make_tone
from tests.test_faults import slow_job, wait_pool_idle, wait_until
from worker.request.errors import JobFailed
from worker.job import run_job

# A template that asks EmptyImage for 4096 frames of 16384 x 16384: the CPU allocator refuses at once.
GREEDY_GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
    "2": {"class_type": "EmptyImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 4096, "color": 0}},
    "5": {"class_type": "SaveSegmentVideo", "inputs": {"images": ["2", 0], "fps": 25.0, "filename_prefix": "segment",
                                                       "crf": 12, "preset": "ultrafast"}},
}
GREEDY_BINDINGS = {
    "description": "Asks for more memory than any machine has (tests only).", "input_type": "image",
    "overlap_frames": 0, "output_node": "5",
    "bindings": {"image": [{"node": "1", "input": "image"}], "fps": [{"node": "5", "input": "fps"}],
                 "filename_prefix": [{"node": "5", "input": "filename_prefix"}]},
}


def prompts_run(pool) -> int:
    """Prompts the pool's instances have run (their /history), to see whether a segment was tried again."""
    import requests
    return sum(len(requests.get(i.url + "/history", timeout=10).json()) for i in pool.instances)


def test_a_node_that_cannot_allocate_fails_the_job_as_out_of_memory_without_a_retry(pool, settings, media_dir,
                                                                                     tmp_path):
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "greedy.json").write_text(json.dumps(GREEDY_GRAPH))
    (workflows / "greedy.bindings.json").write_text(json.dumps(GREEDY_BINDINGS))
    greedy = settings.model_copy(update={"extra_workflow_dirs": (workflows,)})
    job = {"workflow": "greedy", "input_type": "image", "image": str(make_image(media_dir / "face.png")),
           "audio": str(make_tone(media_dir / "two.wav", 2.0)), "width": 128, "height": 64, "gpu_count": 1,
           "output": {"destination": "volume"}}
    wait_pool_idle(pool)
    pids, before = [i.process.pid for i in pool.instances], prompts_run(pool)
    with pytest.raises(JobFailed) as failure:
        run_job(job, pool, greedy, "greedy")
    message = str(failure.value)
    assert message.startswith("out of memory on cpu:") and "segment 0 (frames 0-50 (50 frames) at 128x64)" in message
    assert "reduce width/height, or the frames per segment" in message and "Not retried" in message
    assert "DefaultCPUAllocator: can't allocate memory" in message  # the allocator's own words, as evidence
    assert "internal error" not in message
    assert prompts_run(pool) == before + 1  # one try only
    wait_pool_idle(pool)
    assert [i.process.pid for i in pool.instances] == pids  # the processes survived: nothing to restart


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A memory cgroup of its own (v1 or v2) with a hard limit; skips the test where none can be made."""
    name = f"comfy-oom-test-{os.getpid()}"
    v1 = Path("/sys/fs/cgroup/memory")
    try:
        if (v1 / "cgroup.procs").exists():
            group = v1 / name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        else:
            group = Path("/sys/fs/cgroup") / name
            group.mkdir()
            (group / "memory.max").write_text(str(limit_bytes))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here ({exc}); the kernel-OOM path is covered by the unit tests")
    try:
        yield group
    finally:
        deadline = time.monotonic() + 30
        while True:  # the killed process leaves the group a moment after it dies
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_an_instance_the_kernel_kills_for_memory_fails_the_job_as_out_of_memory(pool, settings, media_dir):
    wait_pool_idle(pool)
    held = pool.acquire(timeout_s=10)  # the job's one segment goes to the other instance: the victim
    victim = next(i for i in pool.instances if i is not held)
    old_pid = victim.process.pid
    try:
        with memory_cgroup(120 * 2**20) as group:  # 120 MB more than it holds idle
            (group / "cgroup.procs").write_text(str(old_pid))
            with pytest.raises(JobFailed) as failure:
                run_job(slow_job(media_dir, frames=200, size=(320, 192), gpu_count=1), pool, settings, "oomkill")
            wait_until(lambda: victim.process.pid != old_pid, 30, "the victim's restart")
    finally:
        pool.release(held)
    message = str(failure.value)
    assert message.startswith(f"out of memory on {victim.name}: segment 0 (frames 0-200 (200 frames) at 320x192)")
    assert f"killed by the kernel's OOM killer (Memory cgroup out of memory: Killed process {old_pid} " in message
    assert "Not retried" in message and "internal error" not in message
    wait_pool_idle(pool)  # restarted, outside the cgroup
    assert victim.is_responding()
    assert list(settings.job_work_dir.iterdir()) == []


def test_oom_evidence(tmp_path):
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("6,100,5,-;eth0: link up\n"
                    "3,101,6,-;Memory cgroup out of memory: Killed process 4242 (python) total-vm:1kB\n"
                    "6,102,7,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=python,pid=777,uid=0\n")
    assert kernel_oom_kill(4242, kmsg).startswith("Memory cgroup out of memory: Killed process 4242 (python)")
    assert kernel_oom_kill(777, kmsg).startswith("oom-kill:")
    assert kernel_oom_kill(424, kmsg) is None and kernel_oom_kill(1, tmp_path / "unreadable") is None

    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    cgroup = MemoryCgroup(counter)
    assert cgroup.oom_kills() == 2
    sigkill = -signal.SIGKILL
    nothing = tmp_path / "empty-kmsg"
    nothing.write_text("")
    assert out_of_memory(ProcessEnd(5, sigkill, 2, cgroup, "got prompt"), nothing) is None  # a kill -9 by someone
    counter.write_text("oom_kill 3\n")
    assert "oom_kill 2 -> 3" in out_of_memory(ProcessEnd(5, sigkill, 2, cgroup, "got prompt"), nothing)
    assert out_of_memory(ProcessEnd(4242, sigkill, None, None, ""), kmsg).startswith("killed by the kernel's OOM")
    cuda = "got prompt\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert out_of_memory(ProcessEnd(5, 1, None, None, cuda), nothing) == (
        "its log says: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert oom_line("Prompt executed in 2.1 seconds") is None
    assert oom_line("Got an OOM, unloading all loaded models.") is not None
