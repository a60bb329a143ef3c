"""The loop-thread helpers of loop.py, without a loop: pure bookkeeping."""

from __future__ import annotations

from zkwatcher_supervisor.loop import SingleFlight


class Job:
    """A slow job whose runs we finish by hand."""

    def __init__(self) -> None:
        self.started = 0
        self.flight = SingleFlight(self.start)

    def start(self) -> None:
        self.started += 1


def test_a_request_when_idle_starts_a_run():
    job = Job()
    job.flight.request()
    assert job.started == 1 and job.flight.busy
    assert job.flight.done() is False  # nobody asked meanwhile
    assert not job.flight.busy and job.started == 1


def test_requests_during_a_run_fold_into_one_rerun_after_it():
    job = Job()
    job.flight.request()
    for _ in range(5):
        job.flight.request()
    assert job.started == 1  # never two at once
    assert job.flight.done() is True  # the rerun started at once
    assert job.started == 2 and job.flight.busy
    assert job.flight.done() is False
    assert job.started == 2 and not job.flight.busy


def test_a_released_run_lets_the_next_request_start_and_keeps_the_ask():
    job = Job()
    job.flight.request()
    job.flight.request()  # asked during the run
    job.flight.release()  # given up on (it hangs): not counted any more
    assert not job.flight.busy and job.started == 1
    job.flight.request()
    assert job.started == 2  # started without waiting for the hung run
    # The ask made during the first run is still answered, after this one.
    assert job.flight.done() is True and job.started == 3


def test_rerun_if_asked_during_another_run_only_keeps_the_ask():
    job = Job()
    job.flight.request()
    job.flight.request()
    assert job.flight.rerun_if_asked() is True  # still busy: folded into the next rerun
    assert job.started == 1 and job.flight.busy
    assert job.flight.done() is True and job.started == 2
    assert job.flight.rerun_if_asked() is False
