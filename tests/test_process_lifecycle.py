"""No ComfyUI process outlives the worker: SIGTERM or SIGINT to the real handler (while it serves, or while
its instances start) stops them and frees their ports; a worker killed outright takes them with it (the
kernel's parent-death signal), including an instance the pool restarted from a thread that has ended."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.conftest import shifted_port
from tests.test_faults import wait_until
from local_platform.workers import REPO, WorkerApi

pytestmark = pytest.mark.comfy  # every test starts the worker or a pool


def port_is_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
        return True
    except OSError:
        return False


def is_gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_serving_handler_stops_every_comfyui_process(signum, tmp_path):
    comfy_port = shifted_port(8420)
    api = WorkerApi(tmp_path, api_port=shifted_port(8041), comfy_port=comfy_port, instances=1)
    try:
        api.start()
        assert len(api.comfy_processes()) == 1 and not port_is_free(comfy_port)
        api.process.send_signal(signum)
        api.process.wait(timeout=60)
        assert api.comfy_processes() == []
        assert port_is_free(comfy_port) and port_is_free(shifted_port(8041))
        assert "ComfyUI cpu:%d stopped" % comfy_port in api.log_tail(20000)  # stopped by the worker, not orphaned
    finally:
        api.stop()


def test_sigterm_while_the_instances_start_stops_them(tmp_path):
    comfy_port = shifted_port(8425)
    api = WorkerApi(tmp_path, api_port=shifted_port(8042), comfy_port=comfy_port, instances=1).launch()
    try:
        wait_until(lambda: api.comfy_processes(), 60, "ComfyUI to be started")
        assert not api.log_tail(20000).count("ready after")  # still starting
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(timeout=60) == -signal.SIGTERM
        assert api.comfy_processes() == [] and port_is_free(comfy_port)
        assert "SIGTERM: stopping the ComfyUI instances" in api.log_tail(20000)
    finally:
        api.stop()


PARENT = textwrap.dedent("""
    import os, signal, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from comfy_manager import InstancePool
    from tests.conftest import pool_settings

    pool = InstancePool(pool_settings(Path(sys.argv[1]), int(sys.argv[2]), cpu_instances=1))
    pool.start()
    instance = pool.instances[0]
    first = instance.process.pid
    os.kill(first, signal.SIGKILL)  # the pool restarts it from a thread of its own
    while instance.process.pid == first or pool.free_count() != 1:
        time.sleep(0.2)
    while any(t.name.startswith("restart-") for t in threading.enumerate()):
        time.sleep(0.1)  # that thread has ended: the new process must not die with it
    time.sleep(2)
    print(instance.process.pid, instance.is_alive(), flush=True)
    time.sleep(600)
""")


def test_comfyui_dies_with_a_worker_killed_outright(tmp_path):
    comfy_port = shifted_port(8430)
    instances_dir = tmp_path / "instances"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(instances_dir), str(comfy_port), str(REPO)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()  # bounded: the pool's start-up deadline, then the script exits
        pid, alive = line.split()
        pid = int(pid)
        assert alive == "True" and not is_gone(pid) and not port_is_free(comfy_port)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: is_gone(pid), 10, "ComfyUI to die with its parent")
        wait_until(lambda: port_is_free(comfy_port), 10, "its port to be free")
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in psutil.process_iter(["cmdline"]):
            if str(instances_dir) in " ".join(proc.info["cmdline"] or []):
                os.kill(proc.pid, signal.SIGKILL)
