"""A stopped verb (SIGTERM from `ray job stop`, or Ctrl-C) unwinds, marks its study run KILLED
in MLflow and says that the same command resumes. The job-level test is
tests/integration/test_job_submit.py::test_a_stopped_job_keeps_its_finished_trials_and_its_run_reads_killed."""

from __future__ import annotations

import os
import signal

import pytest

from rerank_ray.stopping import Stopped, on_stop, stop_on_sigterm


def test_sigterm_runs_the_stop_callbacks_then_unwinds_as_stopped():
    calls = []
    before = signal.getsignal(signal.SIGTERM)
    announced = lambda why: calls.append(f"announced {why}")  # noqa: E731
    with pytest.raises(Stopped, match="SIGTERM"), stop_on_sigterm(announced), on_stop(calls.append):
        with on_stop(lambda why: calls.append(f"inner {why}")):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # never reached past the handler
    assert calls == ["announced SIGTERM", "inner SIGTERM", "SIGTERM"]  # the line first, then newest first
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_stopped_study_run_ends_killed_with_its_running_children(tmp_path):
    import mlflow

    from rerank_ray.study.tracking import study_run

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("e")
    uri = mlflow.get_tracking_uri()
    with study_run(experiment, "s", tmp_path, uri) as done:
        pass
    assert client.get_run(done.run_id).info.status == "FINISHED"

    with pytest.raises(Stopped), stop_on_sigterm(), study_run(experiment, "s", tmp_path, uri) as parent:
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.run_id})
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    stopped = client.get_run(parent.run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags["interrupted"] == "SIGTERM"
    assert client.get_run(child.info.run_id).info.status == "KILLED"
    assert mlflow.active_run() is None

    with pytest.raises(KeyboardInterrupt), study_run(experiment, "s", tmp_path, uri) as parent:
        raise KeyboardInterrupt
    assert client.get_run(parent.run_id).info.status == "KILLED"


def test_the_stop_handler_is_reclaimed_after_a_library_replaces_it():
    """ray.init sets SIGTERM to sys.exit; start_ray puts the stop handler back."""
    from rerank_ray.stopping import reclaim_sigterm

    with stop_on_sigterm():
        ours = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # what ray.init does
        reclaim_sigterm()
        assert signal.getsignal(signal.SIGTERM) is ours
    before = signal.getsignal(signal.SIGTERM)
    reclaim_sigterm()  # outside a verb: nothing to reclaim
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_raised_while_stopping_counts_as_the_stop():
    """Ray's Cython code turns the handler's Stopped into a SystemError; it is still the stop."""
    from rerank_ray.stopping import stop_reason

    with stop_on_sigterm():
        assert stop_reason(SystemError("returned a result with an exception set")) is None
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        assert stop_reason(SystemError("returned a result with an exception set")) == "SIGTERM"
    assert (
        stop_reason(KeyboardInterrupt()) == "KeyboardInterrupt" and stop_reason(Stopped("SIGINT")) == "SIGINT"
    )
    with stop_on_sigterm():  # a new verb starts clean
        assert stop_reason(ValueError()) is None
