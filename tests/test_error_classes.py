"""How a segment's failure is classified, with real CPU ComfyUI instances behind a proxy that injects one
fault: an instance fault (a 5xx, a reset while taking outputs, a socket error outside the websocket) is
retried on another instance and the instance restarted; a request fault (a 4xx) ends the job with an
error that says what to change, without a retry or a restart. No error path's text says "internal error"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from comfy_manager import (AcquireCancelled, ComfyClient, ComfyError, ComfyInstance, ComfyOutputFile, Health,
                           InstanceFault, NoInstanceLeft)
from comfy_manager.client import PromptFailed
from comfy_manager.instance import InstanceSpec
from media_samples.factory import read_indices
from tests.support.fault_proxy import Fault, FaultProxy
from tests.test_faults import slow_job, wait_pool_idle
from worker.render import segments
from worker.request.errors import JobCancelled, JobFailed, JobInputError, WorkerUnhealthy
from worker.job import run_job
from worker.planning.segment_plan import Segment

REPO = Path(__file__).resolve().parent.parent

INSTANCE_FAULTS = {
    "a 5xx answer to POST /prompt": Fault("POST", "/prompt", "500"),
    "a 5xx answer to an upload": Fault("POST", "/upload/image", "503"),
    "a reset while taking the segment's output": Fault("GET", "/view", "reset"),
    "a socket error outside the websocket (GET /history reset)": Fault("GET", "/history", "reset"),
}
REQUEST_FAULTS = {
    "POST /prompt answered 413": (Fault("POST", "/prompt", "413"),
                                  "the workflow is larger than ComfyUI accepts", "COMFY_EXTRA_ARGS"),
    "an upload answered 413": (Fault("POST", "/upload/image", "413"),
                               "as too large", "--max-upload-size"),
    "POST /prompt answered 403": (Fault("POST", "/prompt", "403"),
                                  "ComfyUI refused the workflow (POST /prompt answered 403", "injected fault"),
}


def route_through_proxy(monkeypatch, victim: ComfyInstance, fault: Fault, outputs_over_http: Path | None = None):
    """Sends everything for `victim` through a FaultProxy; with outputs_over_http (an empty folder), the
    worker does not find the victim's outputs on disk and takes them over HTTP (GET /view)."""
    proxy = FaultProxy(victim.spec.port, fault)
    url, output_dir = ComfyInstance.url, ComfyInstance.output_dir
    monkeypatch.setattr(ComfyInstance, "url", property(lambda self: proxy.url if self is victim else url.fget(self)))
    if outputs_over_http is not None:
        monkeypatch.setattr(ComfyInstance, "output_dir", property(
            lambda self: outputs_over_http if self is victim else output_dir.fget(self)))
    return proxy


@pytest.mark.parametrize("case", INSTANCE_FAULTS)
def test_an_instance_fault_is_retried_elsewhere_and_the_instance_restarted(case, pool, settings, media_dir,
                                                                         monkeypatch, tmp_path):
    wait_pool_idle(pool)
    victim = pool.instances[0]
    old_pid = victim.process.pid
    fault = INSTANCE_FAULTS[case]
    proxy = route_through_proxy(monkeypatch, victim, fault, tmp_path if fault.path == "/view" else None)
    try:
        output = run_job(slow_job(media_dir, frames=60, size=(128, 64)), pool, settings, "instancefault")
        assert fault.hits == 1, proxy.requests
        assert sum(s["attempts"] for s in output["segments"]) == len(output["segments"]) + 1
        assert read_indices(Path(output["video_path"])) == list(range(60))
    finally:
        monkeypatch.undo()
        proxy.close()
    wait_pool_idle(pool)
    assert victim.process.pid != old_pid and victim.is_responding()  # restarted


@pytest.mark.parametrize("case", REQUEST_FAULTS)
def test_a_request_fault_ends_the_job_naming_what_to_change_without_retry_or_restart(case, pool, settings, media_dir,
                                                                                   monkeypatch):
    wait_pool_idle(pool)
    victim = pool.instances[0]
    old_pid = victim.process.pid
    fault, *expected = REQUEST_FAULTS[case]
    proxy = route_through_proxy(monkeypatch, victim, fault)
    try:
        # The fault hits once only: had the segment been tried again, the job would have succeeded.
        with pytest.raises(JobFailed) as failure:
            run_job(slow_job(media_dir, frames=60, size=(128, 64)), pool, settings, "requestfault")
    finally:
        monkeypatch.undo()
        proxy.close()
    message = str(failure.value)
    assert fault.hits == 1 and all(text in message for text in expected), message
    assert "internal error" not in message and "attempt" not in message
    wait_pool_idle(pool)
    assert victim.process.pid == old_pid and pool.health()[victim.name] == (Health.SERVING, "")  # not restarted
    assert list(settings.job_work_dir.iterdir()) == []


def test_a_segment_that_fails_for_good_stops_the_other_segments(pool, settings, media_dir, monkeypatch):
    wait_pool_idle(pool)
    victim, other = pool.instances
    before = set(requests.get(other.url + "/history", timeout=10).json())
    proxy = route_through_proxy(monkeypatch, victim, Fault("POST", "/prompt", "413"))
    try:
        with pytest.raises(JobFailed, match="the workflow is larger than ComfyUI accepts"):
            run_job(slow_job(media_dir, frames=300, size=(320, 192)), pool, settings, "stopothers")
    finally:
        monkeypatch.undo()
        proxy.close()
    history = requests.get(other.url + "/history", timeout=10).json()
    ran = [entry["status"] for key, entry in history.items() if key not in before]
    # The other segment's prompt was interrupted (or dequeued before it ran), not run to its end.
    assert all(any(name == "execution_interrupted" for name, _ in status["messages"]) for status in ran), ran
    wait_pool_idle(pool)


def all_subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in all_subclasses(direct)]


def test_no_error_path_reaches_the_user_as_internal_error(tmp_path, monkeypatch):
    """Every kind of failure a segment can meet is judged (retry, or an error the user can read); the
    handler's last-resort "internal error" is the only place those words are written."""
    instance = ComfyInstance(InstanceSpec(0, 1, None, tmp_path), tmp_path, "python", [])
    ctx = SimpleNamespace(template=SimpleNamespace(name="restyle"), request=SimpleNamespace(width=128, height=64),
                          job_id="j", progress=SimpleNamespace(where=lambda index: "in node 6 SaveSegmentVideo"))
    segment = Segment(0, 0, 50)
    failures = [cls(f"{cls.__name__} happened") for cls in all_subclasses(ComfyError)]
    failures += [OSError(28, "No space left on device"), FileNotFoundError(2, "No such file"),
                 JobFailed("a named failure"), JobCancelled("the job was cancelled")]
    judged = {}
    for failure in failures:
        final = segments._final_error(ctx, segment, instance, failure)
        assert final is None or isinstance(final, (JobFailed, JobCancelled)), (failure, final)
        judged[type(failure).__name__] = "retry" if final is None else str(final)
    assert judged["ConnectionLost"] == judged["InstanceFault"] == judged["PromptTimedOut"] == "retry"
    assert judged["OSError"].startswith("segment 0 (frames 0-50 (50 frames)) on cpu:1: a file could not be")
    assert "out of memory on cpu:1" in segments._final_error(ctx, segment, instance, PromptFailed(
        "node 2 (EmptyImage) failed: RuntimeError: DefaultCPUAllocator: not enough memory")).args[0]
    # The pool's failures, as a waiting segment meets them.
    for pool_error, job_error in ((NoInstanceLeft("none left"), WorkerUnhealthy),
                                  (AcquireCancelled("cancelled"), JobCancelled)):
        def acquire(cancel=None, timeout_s=None, error=pool_error):
            raise error
        with pytest.raises(job_error) as raised:
            segments._acquire(SimpleNamespace(pool=SimpleNamespace(acquire=acquire), cancel=None, job_id="j"), segment)
        judged[type(pool_error).__name__] = str(raised.value)
    assert all("internal error" not in text for text in judged.values()), judged

    # What the handler answers for each error a job can end with.
    import handler
    for error in (JobInputError("width", "must be a multiple of 16"), JobFailed("a named failure"),
                  JobCancelled("the job was cancelled"), WorkerUnhealthy("no ComfyUI instance can serve")):
        def fail(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(handler, "run_job", fail)
        answer = handler.run_one({"id": "j", "input": {}}, None)
        assert answer["error"] == str(error) and "internal error" not in answer["error"]
        assert answer.get("refresh_worker", False) is isinstance(error, WorkerUnhealthy)

    lines = [f"{path.relative_to(REPO)}: {line.strip()}"
             for path in [REPO / "handler.py", *(REPO / "worker").rglob("*.py"), *(REPO / "comfy_manager").rglob("*.py")]
             for line in path.read_text().splitlines() if "internal error" in line.lower()]
    assert lines == ['handler.py: return {"error": f"internal error: {type(exc).__name__}: {exc}"}'], lines


def test_a_broken_answer_is_the_instances_fault(pool):
    """Classified at the client: a 404 for an output the instance reported, an answer that is not JSON."""
    client = ComfyClient(pool.instances[0].url)
    with pytest.raises(InstanceFault, match="answered 404"):
        client.download(ComfyOutputFile("9", "images", "no-such-file.mp4", "", "output"), Path("/dev/null"))
    proxy = FaultProxy(pool.instances[0].spec.port, Fault("POST", "/prompt", "200"))  # a 200 with a text body
    try:
        with pytest.raises(InstanceFault, match="POST /prompt answered something that is not JSON"):
            ComfyClient(proxy.url).queue_prompt({})
    finally:
        proxy.close()
