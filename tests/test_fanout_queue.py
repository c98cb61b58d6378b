"""How long a segment job may wait in RunPod's queue before its parent takes the segment back
(worker/render/remote.py: queue_deadline_for, RemoteSegments._watch), without ComfyUI: the endpoint is a stand-in
that answers /status with the states given (tests/test_fanout.py runs the real thing with three workers)."""

from __future__ import annotations

import threading
import types

import pytest

from worker.planning.segment_plan import Segment
from worker.render import remote
from worker.render.remote import RemoteSegments, queue_deadline_for
from worker.request.settings import WorkerSettings
from worker.templates.template import load_template


class QueueStandIn:
    """RunPod's /status and /cancel for one segment job: the states in order, the last one repeated."""

    endpoint_id = "endpoint"

    def __init__(self, *states: str):
        self.rp_client, self.states, self.cancelled = self, list(states), []

    def get(self, path: str) -> dict:
        return {"status": self.states.pop(0) if len(self.states) > 1 else self.states[0]}

    def post(self, path: str, body) -> None:
        self.cancelled.append(path)


def segments(settings: WorkerSettings, endpoint: QueueStandIn, load_s: float) -> RemoteSegments:
    job = types.SimpleNamespace(template=types.SimpleNamespace(load_s=load_s), cancel=threading.Event(),
                                deadline_s=lambda segment: 600.0)
    others = RemoteSegments(job, plan=None, settings=settings, workers=1)
    others.endpoint = endpoint
    return others


@pytest.fixture
def settings(tmp_path, monkeypatch) -> WorkerSettings:
    monkeypatch.setattr(remote, "POLL_S", 0.01)
    return WorkerSettings(job_work_dir=tmp_path, runpod_api_key="key", runpod_endpoint_id="endpoint",
                          fanout_queue_deadline_s=90, fanout_cold_start_s=20)


def test_the_queue_deadline_grows_by_a_cold_start_where_workers_warm_up_first(settings):
    """A worker RunPod starts for a segment job takes jobs only after WARMUP_SIZE's warm-up, which loads the
    template's models: the job stays queued that long, and must not be taken back for "no free worker"."""
    load_s = load_template("infinitetalk_image_single").load_s
    assert load_s >= 60  # what the template declares for a cold instance (H200: the DiT, umt5, compile)
    assert queue_deadline_for(settings, load_s) == 90
    warming = settings.model_copy(update={"warmup": "832x480"})
    assert queue_deadline_for(warming, load_s) == 90 + 20 + load_s
    assert queue_deadline_for(warming, 0.0) == 110  # a template that declares no load time


def test_a_segment_job_queued_past_the_deadline_is_cancelled_and_taken_back(settings):
    endpoint = QueueStandIn("IN_QUEUE")
    others = segments(settings, endpoint, load_s=70.0)
    segment = Segment(3, 0, 81)
    started = remote.time.monotonic() - 100  # queued 100 s: past FANOUT_QUEUE_DEADLINE_S
    assert others._watch(segment, "job-1", started) is None
    assert others.no_free_worker and endpoint.cancelled == ["endpoint/cancel/job-1"]
    assert "still queued after 90 s (FANOUT_QUEUE_DEADLINE_S): no other worker was free" in others.errors[3]


def test_with_warm_up_the_same_wait_is_a_cold_start_and_the_job_is_kept(settings):
    endpoint = QueueStandIn("IN_QUEUE", "IN_QUEUE", "COMPLETED")
    others = segments(settings.model_copy(update={"warmup": "832x480"}), endpoint, load_s=70.0)
    assert others.queue_deadline_s == 180
    started = remote.time.monotonic() - 100  # the same 100 s in the queue: a worker still warming up
    assert others._watch(Segment(3, 0, 81), "job-1", started) == {"status": "COMPLETED"}
    assert not others.no_free_worker and endpoint.cancelled == [] and others.errors == {}
