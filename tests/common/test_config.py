"""Tests for fedsynth.common.config.RunConfig (Flower run config -> validated frozen dataclass)."""

from __future__ import annotations

import pytest

from fedsynth.common.config import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.model import ModelConfig
from fedsynth.common.scheduler import SchedulerConfig


def test_defaults_are_valid_and_derive_sub_configs() -> None:
    # Arrange / Act
    config = RunConfig.from_user_config({})

    # Assert
    assert config == RunConfig()
    assert isinstance(config.scheduler_config(), SchedulerConfig)
    assert config.scheduler_config().beta_schedule == "cosine"
    model = config.model_config(15)
    assert isinstance(model, ModelConfig) and model.n_features == 15 and model.dim_mults == (1, 2)


def test_kebab_case_keys_and_coercion() -> None:
    # Arrange
    user = {"num-server-rounds": 3, "lr": "0.01", "unet-dim-mults": "1, 2, 4", "noise-multiplier": 1,
            "local-steps": 10.0, "beta-schedule": "controlled", "unet-seq-len": 8}

    # Act
    config = RunConfig.from_user_config(user)

    # Assert
    assert config.num_server_rounds == 3 and config.lr == 0.01 and config.local_steps == 10
    assert config.unet_dim_mults == (1, 2, 4) and config.noise_multiplier == 1.0
    assert isinstance(config.noise_multiplier, float)


def test_round_trip_via_user_config() -> None:
    # Arrange
    config = RunConfig(num_server_rounds=7, noise_multiplier=1.3, unet_dim_mults=(1, 2, 2), unet_seq_len=8,
                       aggregator="median", accountant="prv")

    # Act
    again = RunConfig.from_user_config(config.to_user_config())

    # Assert
    assert again == config
    assert RunConfig.from_user_config(RunConfig().to_user_config()) == RunConfig()
    assert all(isinstance(v, (int, float, str, bool)) for v in config.to_user_config().values())


def test_unknown_key_names_the_key() -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match="unknown run-config key 'num_server_rounds'"):
        RunConfig.from_user_config({"num_server_rounds": 3})


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", "fast"), ("num-server-rounds", "three"), ("local-steps", 2.5), ("unet-dim-mults", "1,x"),
     ("unet-dim-mults", 3), ("target-epsilon", None), ("batch-size", [1])],
)
def test_bad_type_names_the_key(key: str, value: object) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match=f"run-config key '{key}'"):
        RunConfig.from_user_config({key: value})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-server-rounds", 0, "num-server-rounds"),
        ("local-steps", -1, "local-steps"),
        ("batch-size", 0, "batch-size"),
        ("lr", 0.0, "lr"),
        ("lr", float("nan"), "lr"),
        ("max-grad-norm", -1.0, "max-grad-norm"),
        ("noise-multiplier", -0.5, "noise-multiplier"),
        ("multiplicity", 0, "multiplicity"),
        ("target-epsilon", 0, "target-epsilon"),
        ("target-delta", 1.0, "target-delta"),
        ("accountant", "moments", "accountant"),
        ("aggregator", "mean", "aggregator"),
        ("trim-beta", 0.5, "trim-beta"),
        ("fraction-train", 0.0, "fraction-train"),
        ("min-train-nodes", 0, "min-train-nodes"),
        ("round-timeout", 0, "round-timeout"),
        ("diffusion-steps", 1, "diffusion-steps"),
        ("beta-schedule", "sigmoid", "beta-schedule"),
        ("schedule-power", -1.0, "schedule-power"),
        ("unet-dim", 7, "unet-dim"),
        ("unet-seq-len", 6, "unet-seq-len"),
        ("unet-dim-mults", "", "unet-dim-mults"),
    ],
)
def test_out_of_range_names_the_key(key: str, value: object, message: str) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_user_config({key: value})


def test_config_error_is_a_value_error() -> None:
    # Arrange / Act / Assert
    with pytest.raises(ValueError):
        RunConfig(batch_size=0)
