"""No silent overwrite: an outputs folder has one writer at a time, and only its own run or study."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rerank_ray import cli
from rerank_ray.config import RunConfig
from rerank_ray.outputs import (
    FINISHED,
    OutputsBusy,
    OutputsOwned,
    check_identity,
    claim_outputs,
    output_lock,
    run_identity,
    study_identity,
)


def identity(**changes) -> dict:
    return run_identity(RunConfig(name="r", **changes).to_dict())


def finish(folder: Path) -> None:
    (folder / "model").mkdir(parents=True)


def test_a_second_writer_is_refused_with_the_holder_pid(tmp_path):
    with output_lock(tmp_path / "r"):
        with pytest.raises(
            OutputsBusy, match=rf"r is being written by process {os.getpid()} \(lock .*r/.lock\)"
        ):
            with output_lock(tmp_path / "r"):
                pass
    with output_lock(tmp_path / "r"):  # released on exit
        pass


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from rerank_ray.outputs import output_lock
            with output_lock(Path({str(tmp_path / "r")!r})):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputsBusy, match=f"process {holder.pid} "):
            with output_lock(tmp_path / "r"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path / "r"):  # a killed holder leaves no lock behind
        pass


def test_a_finished_run_is_replaced_only_by_its_own_config_or_force(tmp_path):
    folder = tmp_path / "r"
    check_identity(folder, identity(), force=False, finished=FINISHED)
    finish(folder)
    check_identity(folder, identity(), force=False, finished=FINISHED)  # the same run: a rerun
    # eval and mlflow do not change what is trained
    check_identity(folder, identity(eval={"suites": ["scifact"]}), force=False, finished=FINISHED)
    with pytest.raises(
        OutputsOwned,
        match=r"holds finished outputs \(model\) from another config \(differs at config.train.epochs, config.train.seed\); .* --force",
    ):
        check_identity(folder, identity(train={"epochs": 2, "seed": 1}), force=False, finished=FINISHED)
    check_identity(folder, identity(train={"epochs": 2}), force=True, finished=FINISHED)
    check_identity(folder, identity(train={"epochs": 2}), force=False, finished=FINISHED)  # now its own


def test_unfinished_outputs_of_another_config_are_claimed_freely(tmp_path):
    check_identity(tmp_path, identity(), force=False, finished=FINISHED)
    (tmp_path / "groups").mkdir()
    check_identity(tmp_path, identity(train={"epochs": 3}), force=False, finished=FINISHED)


def test_a_study_and_a_run_do_not_share_a_folder(tmp_path):
    check_identity(tmp_path, identity(), force=False, finished=FINISHED)
    finish(tmp_path)
    with pytest.raises(OutputsOwned, match="of a run, not of a study"):
        check_identity(tmp_path, study_identity("r"), force=False, finished=FINISHED)


def test_outputs_without_an_identity_record_need_force(tmp_path):
    (tmp_path / "report").mkdir()
    with pytest.raises(OutputsOwned, match="written without an identity record"):
        check_identity(tmp_path, study_identity("s"), force=False, finished=FINISHED)
    check_identity(tmp_path, study_identity("s"), force=True, finished=FINISHED)


def test_claim_checks_inside_the_lock(tmp_path):
    with claim_outputs(tmp_path / "s", study_identity("s"), finished=FINISHED) as folder:
        assert (folder / "identity.json").is_file() and (folder / ".lock").is_file()


# -- the CLI: `train` with a changed config over a finished model ------------------------------


@pytest.fixture
def fake_train(monkeypatch):
    """`train` that writes model/ where the real one would, recording each call."""
    import rerank_ray.train.driver as driver

    calls = []

    def train(cfg, groups_path=None):
        calls.append(cfg)
        (cfg.run_dir / "model").mkdir(parents=True, exist_ok=True)
        return type("R", (), {"metrics": {}, "model_dir": cfg.run_dir / "model", "groups_path": "g"})()

    monkeypatch.setattr(driver, "train", train)
    return calls


def test_cli_train_refuses_to_replace_another_configs_model_without_force(
    tmp_path, monkeypatch, capsys, fake_train
):
    monkeypatch.chdir(tmp_path)
    main = lambda *a: cli.main(["--log-dir", str(tmp_path / "logs"), "train", "--no-eval", *a])  # noqa: E731
    assert main("name=r") == 0
    assert main("name=r") == 0  # the same run again
    assert main("name=r", "train.epochs=2") == 1
    err = capsys.readouterr().err
    assert "holds finished outputs (model) from another config (differs at config.train.epochs)" in err
    assert "fix: rerun with the config that wrote the folder, choose another name=, or pass --force" in err
    assert len(fake_train) == 2
    assert main("name=r", "train.epochs=2", "--force") == 0 and len(fake_train) == 3


def test_cli_study_refuses_a_folder_holding_a_run(tmp_path, monkeypatch, capsys, fake_train):
    import rerank_ray.study.run as study_module

    monkeypatch.setattr(study_module, "run_study", lambda *a, **k: pytest.fail("the study ran"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--log-dir", str(tmp_path / "logs"), "train", "--no-eval", "name=quickstart"]) == 0
    study = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"
    code = cli.main(["--log-dir", str(tmp_path / "logs"), "study", str(study), "base.output_dir=outputs"])
    assert code == 1
    assert (
        "outputs/quickstart holds finished outputs (model) of a run, not of a study"
        in capsys.readouterr().err
    )
