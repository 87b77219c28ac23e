"""start_ray: a private local Ray or $RAY_ADDRESS, and needs checked before anything starts (no
real Ray: ray's functions are replaced by recorders); DeepSpeed's stale build lock; the heartbeat."""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace

import pytest
import ray
import yaml

from rerank_ray import console, ray_runtime
from rerank_ray.config import RunConfig
from rerank_ray.heartbeat import heartbeat
from rerank_ray.ray_runtime import Capacity, Need, ResourceError, check_fits, run_need, start_ray
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.plan import plan_study

NODE_8CPU = {"CPU": 8.0, "memory": 1e10}


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.init & co. replaced: records init kwargs; the 'cluster' is `state["nodes"]`."""
    state = {"init": [], "shutdown": 0, "nodes": [dict(NODE_8CPU)], "cluster_config": None}

    def init(**kwargs):
        state["init"].append(kwargs)
        if kwargs.get("num_cpus") is not None:
            state["nodes"] = [{"CPU": float(kwargs["num_cpus"])}]

    def cluster_resources():
        total: dict[str, float] = {}
        for node in state["nodes"]:
            for k, v in node.items():
                total[k] = total.get(k, 0.0) + v
        return total

    from ray._private.state import state as gcs

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: state.__setitem__("shutdown", state["shutdown"] + 1))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": n} for n in state["nodes"]])
    monkeypatch.setattr(ray, "cluster_resources", cluster_resources)
    monkeypatch.setattr(gcs, "get_cluster_config", lambda: state["cluster_config"])
    monkeypatch.setattr(ray_runtime, "prebuild_comm_op", lambda: None)
    monkeypatch.setattr(ray_runtime, "BOOTSTRAP_CONFIG", ray_runtime.Path("/nonexistent/bootstrap.yaml"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Ray's output as a library call gets it (the CLI without -v turns it off: below).
    monkeypatch.setitem(console._VERBOSE, "ray_to_console", True)
    return state


def test_without_ray_address_a_private_local_ray_is_started_and_logged(fake_ray, caplog):
    with caplog.at_level(logging.INFO, logger="rerank_ray.ray"):
        start_ray(num_cpus=4)
    # address="local" never joins a `ray start --head` already running on the machine
    assert fake_ray["init"] == [{"address": "local", "num_cpus": 4, "num_gpus": None}]
    assert "started a private local Ray (CPU 4); set RAY_ADDRESS" in caplog.text


def test_the_cli_without_v_keeps_the_workers_output_and_progress_bars_off_the_console(fake_ray, monkeypatch):
    import ray.data

    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "enable_progress_bars", True)
    monkeypatch.setitem(console._VERBOSE, "ray_to_console", False)  # as setup_logging(verbose=False) sets it
    start_ray(num_cpus=4)
    assert fake_ray["init"] == [{"address": "local", "num_cpus": 4, "num_gpus": None, "log_to_driver": False}]
    assert context.enable_progress_bars is False


def test_with_ray_address_it_connects_and_never_passes_num_cpus(fake_ray, monkeypatch, caplog):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with caplog.at_level(logging.INFO, logger="rerank_ray.ray"):
        start_ray(num_cpus=4, num_gpus=1)
    assert fake_ray["init"] == [{}]
    assert "connected to the Ray cluster at RAY_ADDRESS=ray://head:10001" in caplog.text


def test_a_study_whose_trial_and_worker_need_more_cpus_than_tune_num_cpus_fails_fast(fake_ray):
    study = StudyConfig(
        students={"l1": {}},
        strategies={"contrastive": {}},
        tune={"num_cpus": 1, "cpus_per_trial": 1},
        base={"scaling": {"num_workers": 1, "cpus_per_worker": 1}},
    )
    plans = plan_study(study)
    needs = [run_need(p.run, f"trial {p.name}", p.resources) for p in plans]
    with pytest.raises(ResourceError) as err:
        start_ray(num_cpus=study.tune.num_cpus, needs=needs)
    assert str(err.value).startswith(
        "trial contrastive+l1+s0 needs CPU 2 at once (CPU 1, CPU 1), but the Ray cluster has CPU 1; "
    )
    assert "raise tune.num_cpus" in str(err.value)
    assert fake_ray["shutdown"] == 1  # nothing is left running


def test_use_gpu_on_a_machine_without_gpus_fails_fast(fake_ray):
    run = RunConfig(scaling={"num_workers": 2, "use_gpu": True})
    with pytest.raises(
        ResourceError, match=r"training r needs GPU 2 at once .* has GPU 0; .*scaling.use_gpu=false"
    ):
        start_ray(needs=[run_need(run.model_copy(update={"name": "r"}), "training r")])


def test_a_worker_bigger_than_every_node_fails_even_when_the_total_fits():
    capacity = Capacity(total={"CPU": 16.0}, nodes=({"CPU": 8.0}, {"CPU": 8.0}), source="the Ray cluster")
    check_fits(Need("t", ({"CPU": 8.0}, {"CPU": 8.0})), capacity)
    with pytest.raises(
        ResourceError, match=r"one process needs CPU 12 on a single node, .* at most: CPU 8, CPU 8"
    ):
        check_fits(Need("t", ({"CPU": 12.0},)), capacity)


def test_gpu_nodes_the_autoscaler_can_add_count(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    group = SimpleNamespace(resources={"CPU": 8, "GPU": 1}, max_count=8, name="gpu1")
    fake_ray["cluster_config"] = SimpleNamespace(node_group_configs=[group])
    gpu_run = RunConfig(scaling={"num_workers": 4, "use_gpu": True, "cpus_per_worker": 4})
    start_ray(needs=[run_need(gpu_run, "trial t", {"CPU": 1.0})])  # 4 GPU nodes can be added
    too_big = RunConfig(scaling={"num_workers": 9, "use_gpu": True, "cpus_per_worker": 4})
    with pytest.raises(ResourceError, match="needs GPU 9 at once .* has GPU 8"):
        start_ray(needs=[run_need(too_big, "trial t")])


def test_node_types_of_a_ray_up_head_are_read_from_its_bootstrap_config(tmp_path):
    path = tmp_path / "ray_bootstrap_config.yaml"
    config = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8}, "max_workers": 0},
            "gpu1": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8},
            "off": {"resources": {"CPU": 8}, "max_workers": 0},
        },
    }
    path.write_text(yaml.safe_dump(config))
    assert ray_runtime.bootstrap_node_types(path) == [({"CPU": 8.0, "GPU": 1.0}, 8)]
    config["available_node_types"]["gpu1"]["resources"] = {}  # not filled in: growth unknown
    path.write_text(yaml.safe_dump(config))
    assert ray_runtime.bootstrap_node_types(path) is None


def test_a_cluster_that_may_grow_in_unknown_ways_warns_instead(fake_ray, monkeypatch, caplog):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    run = RunConfig(scaling={"num_workers": 2, "use_gpu": True})
    with caplog.at_level(logging.WARNING, logger="rerank_ray.ray"):
        start_ray(needs=[run_need(run, "training r")])
    assert "needs GPU 2 at once" in caplog.text and "the run will wait forever" in caplog.text
    assert fake_ray["shutdown"] == 0


def test_an_initialized_ray_is_used_as_it_is(fake_ray, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    start_ray(num_cpus=1, needs=[Need("t", ({"GPU": 8.0},))])
    assert fake_ray["init"] == []


# -- DeepSpeed's CPU communication op ----------------------------------------------------------


def test_a_stale_torch_extensions_lock_fails_with_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    ray_runtime.check_extension_lock("deepspeed_shm_comm")  # no lock: nothing to say
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    ray_runtime.check_extension_lock("deepspeed_shm_comm")  # a compile in progress: wait for it
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.raises(
        RuntimeError, match=rf"stale torch-extensions lock {lock} \(60 min old.*Fix: rm {lock}$"
    ):
        ray_runtime.check_extension_lock("deepspeed_shm_comm")


def test_the_cpu_comm_op_is_the_one_deepspeed_workers_load():
    builder = ray_runtime.comm_op_builder()
    assert builder is not None and builder.NAME == "deepspeed_shm_comm"
    assert ray_runtime.extension_lock(builder.NAME).parent.name == "deepspeed_shm_comm"


def test_make_install_builds_the_comm_op():
    makefile = (ray_runtime.Path(ray_runtime.__file__).parents[1] / "Makefile").read_text()
    install = makefile.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/python -m rerank_ray.ray_runtime" in install
    assert install.index("rerank_ray.ray_runtime") < install.index("touch $(STAMP)")


# -- heartbeat ---------------------------------------------------------------------------------


def test_a_quiet_stage_says_where_it_waits(caplog):
    with caplog.at_level(logging.INFO, logger="rerank_ray.heartbeat"):
        with heartbeat("training r", waiting_on="Ray Train workers", every_s=0.05) as beat:
            time.sleep(0.3)
    assert beat.warnings >= 2
    assert (
        "training r: no progress reported for 0 s" in caplog.text
        and "waiting on Ray Train workers" in caplog.text
    )


def test_progress_keeps_the_heartbeat_quiet_and_it_stops_with_the_block(caplog):
    with caplog.at_level(logging.INFO, logger="rerank_ray.heartbeat"):
        with heartbeat("scoring", waiting_on="actors", every_s=0.2) as beat:
            for _ in range(10):
                time.sleep(0.03)
                beat()
        time.sleep(0.3)
    assert beat.warnings == 0 and caplog.text == ""
    assert not beat._thread.is_alive()
