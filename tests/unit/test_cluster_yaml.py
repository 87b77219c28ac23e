"""cluster.yaml passes Ray's own autoscaler schema, and keeps the properties the docs promise.

`prepare_config` merges Ray's AWS defaults exactly as `ray up` does; `validate_config` then
checks the result against `ray/autoscaler/ray-schema.json` (jsonschema, unknown keys are errors)
plus its own cross-field rules (head type exists, sum of min_workers <= max_workers).
"""

from __future__ import annotations

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
