"""The logging lane: calls in order off the step's thread; the first failure raised."""

import threading
import time

import pytest

from fraud_detection.hardening.logging_lane import LoggingLane


def test_the_logging_lane_runs_calls_in_order_off_the_callers_thread():
    done, threads = [], set()

    def call(number):
        threads.add(threading.get_ident())
        done.append(number)

    with LoggingLane() as lane:
        for number in range(20):
            lane.submit(call, number)
    assert done == list(range(20))
    assert threading.get_ident() not in threads


def test_the_logging_lane_raises_the_first_failure_and_drops_what_was_queued_after_it():
    release, done = threading.Event(), []

    def blocked():
        release.wait(timeout=30)
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError, match="server gone"), LoggingLane() as lane:
        lane.submit(blocked)
        lane.submit(done.append, "queued after the failure")
        lane.check()  # nothing has finished yet: no failure to raise
        release.set()
    assert done == []


def test_check_raises_a_finished_failure_on_the_callers_thread():
    def failing():
        raise ValueError("bad batch")

    with pytest.raises(ValueError), LoggingLane() as lane:  # and again when the lane ends
        lane.submit(failing)
        with pytest.raises(ValueError, match="bad batch"):
            for _ in range(3000):
                lane.check()
                time.sleep(0.01)


def test_when_the_step_fails_queued_calls_are_dropped_and_scratch_folders_removed():
    release, done = threading.Event(), []
    with pytest.raises(RuntimeError, match="fit failed"), LoggingLane() as lane:
        scratch = lane.scratch_dir()
        (scratch / "checkpoint.json").write_text("{}")
        lane.submit(release.wait, 30)
        lane.submit(done.append, "never sent")
        threading.Timer(0.5, release.set).start()  # after the lane has dropped the queue
        raise RuntimeError("fit failed")
    assert done == []
    assert not scratch.exists()
