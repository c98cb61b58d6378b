"""The pool owns its instances' health (real CPU ComfyUI instances): an instance killed while idle is back
before the next job; one whose restarts keep failing leaves service and jobs plan for the rest; with none
left, jobs fail at once naming each instance and the handler asks RunPod for a fresh worker; waiting
segments are served in arrival order and stop the moment their job is cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from comfy_manager import CancelEvent, Health, InstancePool, NoInstanceLeft
from comfy_manager.pool import RestartBudget
from media_samples.factory import read_indices
from tests.conftest import pool_settings, shifted_port
from tests.test_faults import running_instance, slow_job, wait_pool_idle, wait_until
from worker.request.errors import JobCancelled, WorkerUnhealthy
from worker.job import run_job


def kill(instance) -> int:
    """SIGKILLs the instance's process and waits until it is gone; returns its pid."""
    pid = instance.process.pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not instance.is_alive(), 10, f"{instance.name} to die")
    return pid


def test_restart_budget_backs_off_and_runs_out():
    budget = RestartBudget(limit=3, window_s=100, backoff_s=2)
    delays = []
    for now in (0, 1, 2):
        delays.append(budget.next_delay(now))
        budget.spend(now)
    assert delays == [0.0, 2.0, 4.0]  # the first at once, then doubling
    assert budget.next_delay(50) is None  # three within the window: spent
    assert budget.next_delay(100.5) == 4.0  # the first one left the window: two remain
    assert RestartBudget(limit=20, window_s=1e9, backoff_s=2, times=deque(range(10))).next_delay(10) == 60.0  # cap


def test_an_instance_killed_while_idle_is_back_in_service_before_the_next_job(pool, settings, media_dir, caplog):
    wait_pool_idle(pool)
    victim = pool.instances[0]
    caplog.set_level(logging.WARNING, logger="comfy_manager.pool")
    old_pid = kill(victim)
    wait_until(lambda: victim.process.pid != old_pid and pool.free_count() == pool.size == 2, 120,
               "the watcher to restart the idle instance")
    assert victim.is_responding()
    assert f"ComfyUI {victim.name} killed by SIGKILL while idle; restarting it" in caplog.text
    output = run_job(slow_job(media_dir, frames=60, size=(128, 64)), pool, settings, "afterkill")
    assert [s["attempts"] for s in output["segments"]] == [1, 1]  # no segment was sent to a dead instance
    assert read_indices(Path(output["video_path"])) == list(range(60))


def test_waiters_are_served_in_arrival_order(pool):
    wait_pool_idle(pool)
    held = [pool.acquire(timeout_s=10) for _ in range(pool.size)]
    served: list[str] = []

    def wait_for(name: str):
        instance = pool.acquire(timeout_s=60)
        served.append(name)
        return instance

    with ThreadPoolExecutor(3) as executor:
        futures = {}
        for n, name in enumerate(("first", "second", "third"), start=1):
            futures[name] = executor.submit(wait_for, name)
            wait_until(lambda: pool.waiting() == n, 10, f"{name} to wait")
        pool.release(held[0])
        wait_until(lambda: served == ["first"], 10, "the first waiter to be served")
        pool.release(held[1])
        wait_until(lambda: served == ["first", "second"], 10, "the second waiter to be served")
        pool.release(futures["first"].result())
        wait_until(lambda: served == ["first", "second", "third"], 10, "the third waiter to be served")
        pool.release(futures["second"].result())
        pool.release(futures["third"].result())
    assert pool.waiting() == 0 and pool.free_count() == pool.size


def test_two_jobs_waiting_for_one_instance_run_in_arrival_order(pool, settings, media_dir):
    wait_pool_idle(pool)
    held = [pool.acquire(timeout_s=10) for _ in range(pool.size)]
    job = slow_job(media_dir, frames=100, size=(192, 128), gpu_count=1)
    finished: list[str] = []
    with ThreadPoolExecutor(2) as executor:
        def run(name: str) -> dict:
            output = run_job(job, pool, settings, name)
            finished.append(name)
            return output

        first = executor.submit(run, "first")
        wait_until(lambda: pool.waiting() == 1, 30, "the first job to wait")
        second = executor.submit(run, "second")
        wait_until(lambda: pool.waiting() == 2, 30, "the second job to wait")
        pool.release(held[1])
        wait_until(lambda: running_instance(pool) is held[1], 30, "a segment to run on the released instance")
        assert pool.waiting() == 1  # the second job still waits: the first arrived first
        outputs = {"first": first.result(timeout=120), "second": second.result(timeout=120)}
    pool.release(held[0])
    assert finished == ["first", "second"]
    assert [o["segments"][0]["instance"] for o in outputs.values()] == [held[1].name] * 2
    assert all(read_indices(Path(o["video_path"])) == list(range(100)) for o in outputs.values())


def test_a_job_waiting_for_an_instance_stops_as_soon_as_it_is_cancelled(pool, settings, media_dir):
    wait_pool_idle(pool)
    held = [pool.acquire(timeout_s=10) for _ in range(pool.size)]
    cancel = CancelEvent()
    try:
        with ThreadPoolExecutor(1) as executor:
            future = executor.submit(run_job, slow_job(media_dir, frames=60, size=(128, 64)), pool, settings,
                                     "waitcancel", None, cancel)
            wait_until(lambda: pool.waiting() >= 1, 30, "the job's segments to wait")
            cancelled_at = time.monotonic()
            cancel.set()
            with pytest.raises(JobCancelled):
                future.result(timeout=10)
        assert time.monotonic() - cancelled_at < 1.0
        assert pool.waiting() == 0
    finally:
        for instance in held:
            pool.release(instance)
    assert list(settings.job_work_dir.iterdir()) == []


@pytest.mark.comfy  # a pool of its own
def test_an_instance_whose_restarts_keep_failing_leaves_service_and_jobs_plan_for_the_rest(tmp_path, settings,
                                                                                             media_dir):
    base_port = shifted_port(8360)
    fragile = InstancePool(pool_settings(tmp_path / "instances", base_port).model_copy(
        update=dict(restart_limit=2, restart_backoff_s=0.5)))
    fragile.start()
    blocker = None
    try:
        victim = fragile.instances[1]
        kill(victim)
        deadline = time.monotonic() + 10
        while blocker is None:  # take its port before the restart can
            try:
                blocker = socket.create_server(("127.0.0.1", victim.spec.port))
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        wait_until(lambda: fragile.health()[victim.name][0] is Health.OUT, 180, "the victim to leave service")
        health, reason = fragile.health()[victim.name]
        assert "2 restarts within 600 s" in reason and "restart failed" in reason
        assert fragile.size == 1
        output = run_job(slow_job(media_dir, frames=60, size=(128, 64)), fragile, settings, "degraded")
        assert output["instances_available"] == 1 and output["segments_processed"] == 1
        assert output["segments"][0]["instance"] == fragile.instances[0].name
        assert read_indices(Path(output["video_path"])) == list(range(60))
    finally:
        if blocker is not None:
            blocker.close()
        fragile.shutdown()


@pytest.mark.comfy  # a pool of its own
def test_with_no_instance_left_jobs_fail_at_once_and_the_worker_asks_to_be_replaced(tmp_path, settings, media_dir,
                                                                                    monkeypatch):
    from runpod.serverless.modules import rp_job

    import handler

    base_port = shifted_port(8370)
    doomed = InstancePool(pool_settings(tmp_path / "instances", base_port, cpu_instances=1).model_copy(
        update=dict(restart_limit=2, restart_backoff_s=0.2)))
    doomed.start()
    try:
        instance = doomed.instances[0]
        held = doomed.acquire(timeout_s=10)
        with ThreadPoolExecutor(1) as executor:
            waiting = executor.submit(run_job, slow_job(media_dir, frames=60, size=(128, 64)), doomed, settings,
                                      "waiting")
            wait_until(lambda: doomed.waiting() == 1, 30, "the job to wait for the only instance")
            broken = tmp_path / "broken-python"
            broken.write_text("#!/bin/sh\necho 'broken python: cannot start ComfyUI' >&2\nexit 3\n")
            broken.chmod(0o755)
            instance.python = str(broken)  # its executable is broken: every restart fails
            kill(instance)
            with pytest.raises(WorkerUnhealthy) as waited:
                waiting.result(timeout=60)  # the waiting job fails as soon as the last instance is out
        doomed.release(held)
        assert doomed.size == 0
        message = str(waited.value)
        assert message.startswith("no ComfyUI instance can serve; ") and instance.name in message
        assert "restart failed" in message and "broken python: cannot start ComfyUI" in message  # its log lines

        monkeypatch.setattr(handler, "pool", doomed)
        monkeypatch.setattr(handler, "settings", settings)
        started = time.monotonic()
        result = asyncio.run(rp_job.run_job(handler.handler, {"id": "next", "input": slow_job(media_dir, frames=60,
                                                                                              size=(128, 64))}))
        assert time.monotonic() - started < 5
        assert result["stopPod"] is True  # the SDK's form of refresh_worker: RunPod replaces the worker
        assert result["error"].startswith("no ComfyUI instance can serve; ") and instance.name in result["error"]
        assert "broken python: cannot start ComfyUI" in result["error"]
        assert "internal error" not in result["error"]
        with pytest.raises(NoInstanceLeft):
            doomed.acquire(timeout_s=1)
        assert list(settings.job_work_dir.iterdir()) == []
    finally:
        doomed.shutdown()


def settled_rss_mb(instance, settle_s: float = 4.0) -> float:
    """The instance's RSS a moment after it went idle (POST /free is applied between prompts, then a gc)."""
    time.sleep(settle_s)
    return psutil.Process(instance.process.pid).memory_info().rss / 2**20


def test_an_idle_instance_gives_back_what_its_last_job_held(pool, settings, media_dir):
    wait_pool_idle(pool)
    held = pool.acquire(timeout_s=10)  # the jobs below run on the other instance
    instance = next(i for i in pool.instances if i is not held)
    job = slow_job(media_dir, frames=200, size=(320, 192), gpu_count=1)
    free_when_idle = pool.settings
    try:
        before = settled_rss_mb(instance, 0)
        pool.settings = free_when_idle.model_copy(update={"free_when_idle": False})
        assert run_job(job, pool, settings, "kept")["segments"][0]["instance"] == instance.name
        kept = settled_rss_mb(instance)
        pool.settings = free_when_idle
        assert run_job(job, pool, settings, "freed")["segments"][0]["instance"] == instance.name
        freed = settled_rss_mb(instance)
    finally:
        pool.settings = free_when_idle
        pool.release(held)
    assert kept - before > 100, (before, kept)  # ComfyUI kept the job's frames (its cache of node outputs)
    assert freed - before < (kept - before) / 2, (before, kept, freed)


@pytest.mark.comfy  # a pool of its own
def test_another_comfyui_on_the_port_is_not_taken_for_ours(tmp_path):
    """Something that answers /system_stats like ComfyUI already holds the instance's port (a leftover
    ComfyUI of an earlier worker): the instance does not pass for ready on its answers. Ours cannot bind the
    port and dies, and the pool says so with its log."""
    import http.server
    import json
    import threading

    class ForeignComfy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"argv": ["main.py", "--input-directory", "/elsewhere/input"]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = shifted_port(8690)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), ForeignComfy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pool = InstancePool(pool_settings(tmp_path / "instances", port, cpu_instances=1))
    try:
        with pytest.raises(RuntimeError) as failure:
            pool.start()
        message = str(failure.value)
        assert f"cpu:{port}" in message, message
        assert "address already in use" in message.lower() or "errno 98" in message.lower(), message
    finally:
        pool.shutdown()
        server.shutdown()
        server.server_close()
