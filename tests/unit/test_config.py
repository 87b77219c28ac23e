"""Config: stacked YAML + overrides, validated once, errors naming the dotted key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rerank_ray.config import ConfigError, RunConfig, load_config
from rerank_ray.config_loading import parse_override
from rerank_ray.train.deepspeed import deepspeed_config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_load_and_round_trip():
    cfg = load_config()
    assert cfg.groups.group_size == 8
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_stacked_files_and_overrides(tmp_path):
    a = write(
        tmp_path, "a.yaml", "train:\n  epochs: 2\n  learning_rate: 1.0e-4\nloss:\n  name: distillation\n"
    )
    b = write(tmp_path, "b.yaml", "train:\n  epochs: 3\n")
    cfg = load_config([a, b], ["groups.group_size=4", "loss.teacher_temperature=2"])
    assert cfg.train.epochs == 3  # later file wins
    assert cfg.train.learning_rate == 1e-4  # earlier file's other keys survive
    assert cfg.groups.group_size == 4
    assert cfg.loss.name == "distillation" and cfg.loss.teacher_temperature == 2.0


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, key, needle",
    [
        ("train.epochz=2", "train.epochz", "allowed keys here: "),
        ("groups.group_size=1", "groups.group_size", "greater than or equal to 2"),
        ("train.learning_rate=-0.1", "train.learning_rate", "greater than 0"),
        ("loss.name=listnet", "loss.name", "'contrastive', 'distillation', 'mix' or 'margin_mse'"),
        ("model.family=transformer", "model.family", "'encoder', 'decoder' or 'recurrent'"),
        ("train.epochs=many", "train.epochs", "valid integer"),
        ("eval.suites=[dl99]", "eval.suites", "known suites: beir-arguana"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage", "0, 1, 2 or 3"),
    ],
)
def test_bad_values_name_the_key_and_allowed_values(override, key, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    message = str(err.value)
    assert f"  {key}:" in message
    assert needle in message


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match=r"train.epochz: unknown key; allowed keys here: .*epochs"):
        load_config(overrides=["train.epochz=2"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="negative_max_label"):
        load_config(overrides=["groups.positive_min_label=1", "groups.negative_max_label=1"])
    with pytest.raises(ConfigError, match="offload_params needs deepspeed.zero_stage=3"):
        load_config(overrides=["deepspeed.offload_params=true"])
    with pytest.raises(ConfigError, match="bf16.*use_gpu"):
        load_config(overrides=["deepspeed.precision=bf16"])


def test_bad_override_syntax_and_files(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.yaml"])
    bad = write(tmp_path, "bad.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([bad])


def test_deepspeed_config_rendering():
    cfg = load_config(
        overrides=[
            "deepspeed.zero_stage=3",
            "train.micro_batch_groups=4",
            "train.grad_accum=2",
            "train.warmup_ratio=0.25",
            "train.learning_rate=2e-5",
        ]
    )
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 4 * 2 * 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"]["enabled"] is False  # CPU: fp32
    # The schedule is passed to deepspeed.initialize (train.deepspeed.lr_schedule), never here:
    # DeepSpeed's WarmupDecayLR stretches a warmup of 0 or 1 steps to 2.
    assert "scheduler" not in ds
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["fused"] is True  # torch's fused AdamW kernel
    gpu = load_config(
        overrides=["scaling.use_gpu=true", "deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true"]
    )
    ds = deepspeed_config(gpu, world_size=8)
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is False  # offload needs DeepSpeedCPUAdam
    assert "fused" not in ds["optimizer"]["params"]  # DeepSpeedCPUAdam takes no such argument


def test_a_models_layers_have_one_home_read_by_the_forecast_and_the_report():
    """``ModelConfig.layers``: num_layers, else config_overrides.num_hidden_layers, else the
    source's own config, or None when the caller (the report) reads no source."""
    import rerank_ray.study.forecast as forecast
    import rerank_ray.study.report as report
    from rerank_ray.config import ModelConfig

    assert ModelConfig(num_layers=2).layers() == 2
    assert ModelConfig(num_layers=2, config_overrides={"num_hidden_layers": 4}).layers() == 2
    assert ModelConfig(config_overrides={"num_hidden_layers": 4}).layers(read_source=False) == 4
    assert ModelConfig().layers(read_source=False) is None
    assert ModelConfig().layers() == 6  # the default source, all-MiniLM-L6-v2
    # No second copy of the rule: the forecast and the report call ModelConfig.layers.
    assert not hasattr(forecast, "model_layers") and not hasattr(report, "student_size")
