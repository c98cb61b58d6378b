"""worker/api/progress_sender.py: a job's updates reach RunPod one after the other, newest last, never an older one
after a newer; the job never waits for a send. (The real SDK's sending, to the RunPod stand-in, is exercised by
tests/test_client_runpod.py, whose updates must arrive in order.)"""

from __future__ import annotations

import threading
import time

from tests.test_faults import wait_until
from worker.api.progress_sender import ProgressSender


def test_updates_made_during_a_slow_send_are_sent_after_it_newest_only():
    sent, first_on_its_way, release = [], threading.Event(), threading.Event()

    def send(update):
        if update == 1:
            first_on_its_way.set()
            release.wait(5)
        sent.append(update)

    sender = ProgressSender(send)
    sender.put(1)
    assert first_on_its_way.wait(5)
    started = time.monotonic()
    for update in (2, 3, 4):  # while 1 is on its way: the job does not wait
        sender.put(update)
    assert time.monotonic() - started < 0.5
    release.set()
    wait_until(lambda: sent == [1, 4], 5, "1, then only the newest of 2-4 (4), to be sent")
    sender.put(5)
    wait_until(lambda: sent == [1, 4, 5], 5, "5 to be sent after them")
    sender.close()


def test_after_close_nothing_more_is_sent_and_a_failed_send_does_not_stop_the_rest(caplog):
    sent = []

    def send(update):
        if update == "bad":
            raise ConnectionError("endpoint unreachable")
        sent.append(update)

    sender = ProgressSender(send, "job-9")
    sender.put("bad")
    wait_until(lambda: "could not be sent" in caplog.text, 5, "the failed send to be logged")
    sender.put("good")
    wait_until(lambda: sent == ["good"], 5, "the next update to be sent")
    assert "job job-9: a progress update could not be sent: ConnectionError: endpoint unreachable" in caplog.text
    sender.close()
    sender.put("late")
    time.sleep(0.1)
    assert sent == ["good"]
    sender._thread.join(5)
    assert not sender._thread.is_alive()
