"""worker/render/parent_watch.py on its own: which /status answers about the parent stop a segment job, and the
watch's thread against a scripted endpoint (tests/test_fanout.py runs it with real workers, the parent's worker
killed)."""

from __future__ import annotations

import logging
import threading

import pytest

from worker.render.parent_watch import ParentWatch, why_stop


@pytest.mark.parametrize("state, stops", [
    ({"status": "IN_PROGRESS"}, None),
    ({"status": "IN_PROGRESS", "output": {"stage": "generating", "worker": "pod-a"}}, None),
    ({"status": "IN_PROGRESS", "output": {"stage": "generating"}}, None),  # a parent outside RunPod names no worker
    ({"status": "IN_PROGRESS", "output": {"worker": "pod-b"}}, "runs again on worker pod-b, not on pod-a that sent it"),
    ({"status": "IN_QUEUE"}, "is queued again (its worker pod-a was lost)"),
    ({"status": "COMPLETED", "output": {"video": "..."}}, "has ended (COMPLETED)"),
    ({"status": "FAILED", "error": "boom"}, "has ended (FAILED)"),
    ({"status": "CANCELLED"}, "has ended (CANCELLED)"),
    ({"status": "TIMED_OUT"}, "has ended (TIMED_OUT)"),
    (None, None),  # 404: not a job of this endpoint (a local API parent), or expired
    ({"status": "SOMETHING_NEW"}, None),
])
def test_what_about_the_parent_stops_a_segment_job(state, stops):
    reason = why_stop(state, "job-7", "pod-a")
    assert reason == (None if stops is None else f"its parent job job-7 {stops}")


def test_a_parent_that_does_not_name_the_sender_is_not_taken_for_another():
    assert why_stop({"status": "IN_PROGRESS", "output": {"worker": "pod-b"}}, "job-7", "") is None


class Endpoint:
    """/status of the parent: the answers in order (an exception is raised), the last one repeated."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), 0
        self.done = threading.Event()

    def __call__(self, job_id):
        assert job_id == "job-7"
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if len(self.answers) == 1:
            self.done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_watch_cancels_once_the_parent_has_ended():
    running = {"status": "IN_PROGRESS", "output": {"worker": "pod-a"}}
    endpoint = Endpoint(running, running, {"status": "FAILED"})
    cancel = threading.Event()
    with ParentWatch("job-7", "pod-a", endpoint, cancel, interval_s=0.01) as watch:
        assert cancel.wait(5)
    assert watch.reason == "its parent job job-7 has ended (FAILED)" and endpoint.asked == 3


def test_a_parent_seen_on_another_worker_twice_in_a_row_stops_the_segment_job():
    here, there = ({"status": "IN_PROGRESS", "output": {"worker": w, "elapsed_s": n}} for w, n in (("pod-a", 1),
                                                                                                    ("pod-b", 2)))
    watch = ParentWatch("job-7", "pod-a", Endpoint(there, here, there, there), threading.Event(), interval_s=30)
    assert [watch.check() for _ in range(4)] == [None, None, None, "its parent job job-7 runs again on worker pod-b, "
                                                                    "not on pod-a that sent it"]
    assert watch.cancel.is_set()


def test_a_parent_whose_progress_stops_counts_as_gone_while_runpod_shows_it_running():
    """A running parent publishes its progress every PROGRESS_INTERVAL_S (1 s); RunPod may go on showing a dead
    worker's job as IN_PROGRESS, with its last progress, until the job's own timeout."""
    now = [0.0]
    frozen = {"status": "IN_PROGRESS", "output": {"worker": "pod-a", "elapsed_s": 12.0}}
    moving = [{"status": "IN_PROGRESS", "output": {"worker": "pod-a", "elapsed_s": float(t)}} for t in range(3)]
    watch = ParentWatch("job-7", "pod-a", Endpoint(*moving, frozen), threading.Event(), interval_s=30, stall_s=60,
                        clock=lambda: now[0])
    seen = []
    for _ in range(8):
        seen.append(watch.check())
        now[0] += 30
    assert seen[:6] == [None] * 6  # changing, then unchanged for 30 and 60 s
    assert seen[6] == "its parent job job-7 has reported nothing for 90 s (FANOUT_STALL_S): its worker is gone"
    assert watch.cancel.is_set()


def test_a_check_that_returns_after_the_segment_job_ended_stops_nothing():
    watch = ParentWatch("job-7", "pod-a", Endpoint({"status": "FAILED"}), threading.Event(), interval_s=30)
    watch._done.set()
    assert watch.check() is None and not watch.cancel.is_set() and watch.reason is None


def test_an_endpoint_that_fails_or_does_not_know_the_parent_stops_nothing(caplog):
    endpoint = Endpoint(RuntimeError("502 Bad Gateway"), RuntimeError("timed out"), None, None)
    cancel = threading.Event()
    with caplog.at_level(logging.WARNING), ParentWatch("job-7", "pod-a", endpoint, cancel, interval_s=0.01) as watch:
        assert endpoint.done.wait(5)
        endpoint.done.clear()
        assert endpoint.done.wait(5)  # and asked again after that
    assert not cancel.is_set() and watch.reason is None
    warnings = [r.getMessage() for r in caplog.records if "could not check parent job" in r.getMessage()]
    assert len(warnings) == 1 and "502 Bad Gateway" in warnings[0]  # said once, not at every check


def test_the_watch_ends_with_the_segment_job_and_checks_nothing_after():
    endpoint = Endpoint({"status": "IN_PROGRESS"})
    cancel = threading.Event()
    with ParentWatch("job-7", "pod-a", endpoint, cancel, interval_s=30) as watch:
        assert endpoint.done.wait(5)  # the first look is at once
    assert not watch._thread.is_alive() and endpoint.asked == 1 and not cancel.is_set()


def test_no_watch_with_a_zero_interval():
    endpoint = Endpoint({"status": "FAILED"})
    with ParentWatch("job-7", "pod-a", endpoint, threading.Event(), interval_s=0) as watch:
        pass
    assert endpoint.asked == 0 and watch.reason is None
