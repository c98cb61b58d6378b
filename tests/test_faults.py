"""Faults with real CPU ComfyUI instances: a killed instance, a dropped websocket, a hung segment,
a cancelled job, an instance that cannot boot, and two jobs at once."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from comfy_manager import ComfyClient, InstancePool
from media_samples.factory import make_index_video, make_tone, read_indices
from tests.conftest import pool_settings, shifted_port
from tests.support.fault_proxy import accept_forever, relay
from worker.request.errors import JobCancelled, JobFailed
from worker.job import run_job
from worker.templates.template import available_templates


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_pool_idle(pool: InstancePool) -> None:
    wait_until(lambda: pool.free_count() == pool.size, 120, "every instance to be free again")
    for instance in pool.instances:
        wait_until(lambda: not requests.get(instance.url + "/queue", timeout=5).json()["queue_running"], 30,
                   f"{instance.name}'s queue to empty")


def slow_job(media: Path, frames: int = 200, size=(320, 192), **extra) -> dict:
    """A restyle job that keeps each CPU instance busy for a few seconds."""
    video = make_index_video(media / f"slow_{frames}.mp4", frames, 25, *size)
    audio = make_tone(media / f"slow_{frames}.wav", frames / 25)
    return {"workflow": "restyle", "input_type": "video", "video": str(video), "audio": str(audio),
            "width": size[0], "height": size[1], "fps": 25, "output": {"destination": "volume"}, **extra}


def running_instance(pool: InstancePool):
    """The first instance that is executing a prompt right now, or None."""
    for instance in pool.instances:
        try:
            if requests.get(instance.url + "/queue", timeout=2).json()["queue_running"]:
                return instance
        except requests.RequestException:
            continue
    return None


def test_a_killed_instance_is_restarted_and_its_segment_rerun(pool, settings, media_dir):
    job = slow_job(media_dir)
    with ThreadPoolExecutor(1) as executor:
        future = executor.submit(run_job, job, pool, settings, "killjob")
        victim = None

        def find_victim():
            nonlocal victim
            victim = running_instance(pool)
            return victim is not None

        wait_until(find_victim, 60, "a segment to start")
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)
        output = future.result(timeout=300)
    assert read_indices(Path(output["video_path"])) == list(range(200))
    assert sum(s["attempts"] for s in output["segments"]) == len(output["segments"]) + 1
    wait_pool_idle(pool)
    assert victim.process.pid != old_pid and victim.is_responding()


def test_a_segment_past_its_deadline_is_interrupted_and_the_error_says_so(pool, settings, media_dir):
    # 10 ms: every try is past its deadline at the first check after it is queued, however fast the CPU
    hurried = settings.model_copy(update=dict(segment_timeout_s=0.01, segment_timeout_per_frame_s=0.0,
                                              segment_retries=1))
    with pytest.raises(JobFailed) as failure:
        run_job(slow_job(media_dir), pool, hurried, "hungjob")
    message = str(failure.value)
    assert "failed 2 times" in message and "did not finish within 0 s" in message
    assert "SEGMENT_TIMEOUT_S" in message
    wait_pool_idle(pool)
    assert run_job(slow_job(media_dir, frames=50, size=(128, 64)), pool, settings)["frames"] == 50


def test_a_cancelled_job_stops_its_segments_and_leaves_nothing_behind(pool, settings, media_dir):
    cancel = threading.Event()
    with ThreadPoolExecutor(1) as executor:
        future = executor.submit(run_job, slow_job(media_dir), pool, settings, "canceljob", None, cancel)
        wait_until(lambda: running_instance(pool) is not None, 60, "a segment to start")
        cancelled_at = time.monotonic()
        cancel.set()
        with pytest.raises(JobCancelled):
            future.result(timeout=60)
    assert time.monotonic() - cancelled_at < 10
    wait_pool_idle(pool)
    assert list(settings.job_work_dir.iterdir()) == []
    for instance in pool.instances:
        assert [p.name for p in instance.input_dir.iterdir() if "canceljob" in p.name] == []
    assert run_job(slow_job(media_dir, frames=50, size=(128, 64)), pool, settings)["frames"] == 50


class DroppingProxy:
    """A TCP proxy to a ComfyUI instance that can cut every websocket connection passing through it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.websockets: list[socket.socket] = []
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        accept_forever(self.server, self._pipe)

    def _pipe(self, client: socket.socket):
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        first = client.recv(65536)
        if b"upgrade: websocket" in first.lower():
            self.websockets.append(client)
        upstream.sendall(first)
        try:
            relay(client, upstream)
        finally:
            client.close()
            upstream.close()

    def drop_websockets(self):
        for sock in self.websockets:
            sock.shutdown(socket.SHUT_RDWR)
            self.dropped += 1
        self.websockets.clear()

    def close(self):
        self.server.close()


def test_a_dropped_websocket_falls_back_to_history_polling(pool, media_dir):
    instance = pool.acquire(timeout_s=120)
    proxy = DroppingProxy(instance.spec.port)
    try:
        video = make_index_video(media_dir / "drop.mp4", 150, 25, 320, 192)
        client = ComfyClient(f"http://127.0.0.1:{proxy.port}")
        name = client.upload(video, "dropped_socket.mp4")
        graph = available_templates()["restyle"].bind(
            {"video": name, "width": 320, "height": 192, "fps": 25, "filename_prefix": "dropped/out"})
        result_box = {}
        worker = threading.Thread(target=lambda: result_box.update(r=client.run_prompt(graph, timeout_s=120)))
        worker.start()
        wait_until(lambda: proxy.websockets and running_instance(pool) is instance, 30, "the prompt to run")
        proxy.drop_websockets()
        worker.join(timeout=150)
        assert proxy.dropped == 1
        outputs = result_box["r"].outputs
        assert [o.filename.endswith(".mp4") for o in outputs] == [True]
        assert read_indices(instance.output_dir / outputs[0].subfolder / outputs[0].filename) == list(range(150))
    finally:
        proxy.close()
        pool.release(instance)


@pytest.mark.comfy  # a pool of its own
def test_an_instance_that_cannot_boot_is_left_out_and_the_rest_serve(tmp_path, media_dir, settings):
    base_port = shifted_port(8350)
    blocker = socket.create_server(("127.0.0.1", base_port + 1))  # instance 1's port is taken
    degraded = InstancePool(pool_settings(tmp_path / "instances", base_port))
    try:
        degraded.start()
        assert [i.spec.port for i in degraded.instances] == [base_port]
        output = run_job(slow_job(media_dir, frames=60, size=(128, 64)), degraded, settings)
        assert output["instances_available"] == 1 and output["segments_processed"] == 1
        assert read_indices(Path(output["video_path"])) == list(range(60))
    finally:
        blocker.close()
        degraded.shutdown()


def test_two_jobs_at_once_share_the_instances_and_both_finish(pool, settings, media_dir):
    first = slow_job(media_dir, frames=120, size=(192, 128))
    second = {**slow_job(media_dir, frames=90, size=(192, 128))}
    with ThreadPoolExecutor(2) as executor:
        a = executor.submit(run_job, first, pool, settings, "first")
        time.sleep(0.2)
        b = executor.submit(run_job, second, pool, settings, "second")
        outputs = [a.result(timeout=300), b.result(timeout=300)]
    assert [read_indices(Path(o["video_path"])) for o in outputs] == [list(range(120)), list(range(90))]
    assert all(o["segments_processed"] == 2 for o in outputs)
