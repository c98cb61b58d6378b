"""Shared fixtures: a real pool of CPU ComfyUI instances, worker settings in a temp folder, media; and the
tiers (tests/support/tiers.py): a test that uses a fixture of HEAVY_FIXTURES, or a fixture that does, gets its
marker, so `make test-fast` (-m "not comfy and not image") leaves it out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfy_manager import InstancePool, PoolSettings
from tests.support.tiers import TIERS, ComfyUIWatch
from worker.request.settings import WorkerSettings

# Tests start their own instances on ports of their own, away from a running worker (8188...).
# TEST_PORT_OFFSET shifts every port the tests use, so two test runs on one machine do not collide: the
# tests' ports lie within 1000 of each other, so the shift is 10 x the offset (offset 100 -> +1000).
PORT_OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0"))


def shifted_port(port: int) -> int:
    """A port the tests use, shifted by 10 x TEST_PORT_OFFSET."""
    return port + 10 * PORT_OFFSET


# The fixtures that start ComfyUI processes or build the image, by the module that defines them and their name
# (a light fixture of the same name elsewhere does not count), and the marker each gives a test.
HEAVY_FIXTURES = {
    ("conftest", "pool"): "comfy",  # below: two CPU ComfyUI instances
    ("conftest", "worker"): "comfy",  # below: the real worker (handler.py --rp_serve_api), with its own instances
    ("test_client", "local_api"): "comfy",  # the same
    ("test_client_runpod", "platform"): "comfy",  # the real worker in RunPod's queue mode
    ("test_gpu_standin", "standin"): "comfy",  # ComfyUI with the tiny stand-in weights
    ("test_infinitetalk", "it_pool"): "comfy",  # ComfyUI with the InfiniteTalk wrapper and random weights
    ("test_image", "image"): "image",  # builds the container image (and runs ComfyUI inside it)
}


def heavy_markers(item) -> set[str]:
    """The markers of HEAVY_FIXTURES that the fixtures a test needs give it (fixtures of its fixtures included:
    fixturenames is the whole closure; the definition that applies to the test is the last one)."""
    markers = set()
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name)
        if definitions:
            module = definitions[-1].func.__module__.rsplit(".", 1)[-1]
            if (module, name) in HEAVY_FIXTURES:
                markers.add(HEAVY_FIXTURES[module, name])
    return markers


@pytest.hookimpl(tryfirst=True)  # before -m deselects by markers
def pytest_collection_modifyitems(items):
    for item in items:
        for marker in sorted(heavy_markers(item)):
            item.add_marker(marker)


_watch: ComfyUIWatch | None = None


def pytest_collection_finish(session):
    """A run without any `comfy` or `image` test (the fast tier, or a light file on its own) watches that no
    ComfyUI process or image build appears."""
    global _watch
    if (session.items and not session.config.option.collectonly
            and not any(item.get_closest_marker(tier) for item in session.items for tier in TIERS)):
        _watch = ComfyUIWatch().start()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _watch:
        _watch.current = item.nodeid
    try:
        return (yield)
    finally:
        if _watch:
            _watch.current = "(between tests)"


@pytest.fixture(autouse=True)
def _light_tests_start_no_comfyui(request):
    yield
    if _watch:
        _watch.poll()
        found = _watch.found_during(request.node.nodeid)
        if found:
            pytest.fail("a test without the `comfy` or `image` marker started " + "; ".join(found)
                        + ": mark it (pytest.mark.comfy / pytest.mark.image) or use a fixture of HEAVY_FIXTURES "
                        "(tests/conftest.py)", pytrace=False)


def pytest_sessionfinish(session):
    if _watch:
        _watch.stop()
        late = [f"{what} ({cmdline})" for test, what, cmdline in _watch.found if test == "(between tests)"]
        if late:
            print("\nstarted between tests, in a run that should start none: " + "; ".join(late))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


TEST_BASE_PORT = int(os.environ.get("TEST_COMFY_BASE_PORT", str(shifted_port(8300))))


def pool_settings(instances_dir: Path, base_port: int, cpu_instances: int = 2) -> PoolSettings:
    """CPU instances of the installed ComfyUI (COMFYUI_HOME / COMFYUI_PATH) in a folder and on ports of the test's."""
    return PoolSettings(instances_dir=instances_dir, base_port=base_port, cpu_instances=cpu_instances, force_cpu=True,
                        startup_timeout_s=180)


@pytest.fixture(scope="session")
def pool(tmp_path_factory) -> InstancePool:
    """Two real ComfyUI instances on the CPU, shared by the whole test session. Many tests kill one of them on
    purpose, far more often than a real crash loop, which COMFY_RESTART_WINDOW_S (10 minutes) would then meet
    with ever longer back-offs and, after COMFY_RESTART_LIMIT restarts, the end of service. This pool counts
    restarts within a second only, so each kill is restarted at once; back-off and limit are tested on pools
    of their own (test_pool_health.py)."""
    settings = pool_settings(tmp_path_factory.mktemp("instances"), TEST_BASE_PORT).model_copy(
        update={"restart_window_s": 1.0})
    instances = InstancePool(settings)
    instances.start()
    yield instances
    instances.shutdown()


@pytest.fixture(scope="session")
def worker(tmp_path_factory):
    """The real worker, `python handler.py --rp_serve_api`, with its own two CPU ComfyUI instances.

    Its limits are set low so the bad-input tests can reach them with small files; its progress is sent every
    0.2 s, so that the progress tests see jobs of a few seconds several times in each stage.
    """
    from local_platform.workers import WorkerApi

    api = WorkerApi(tmp_path_factory.mktemp("worker"), api_port=shifted_port(8031), comfy_port=shifted_port(8400),
                    env={"MAX_DURATION_S": "30", "MAX_INPUT_MB": "2", "PROGRESS_INTERVAL_S": "0.2"}).start()
    yield api
    api.stop()


@pytest.fixture()
def media_dir(tmp_path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


@pytest.fixture()
def settings(tmp_path, media_dir) -> WorkerSettings:
    return WorkerSettings(job_work_dir=tmp_path / "jobs", allowed_input_roots=(media_dir.resolve(),),
                          output_volume_dir=tmp_path / "volume", segment_timeout_s=300)
