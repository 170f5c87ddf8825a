from __future__ import annotations

from pathlib import Path

import pytest

from auditflow.core.config import MODEL_NAMES, PipelineConfig, TrainConfig, available_profiles, load_config
from auditflow.core.errors import ConfigError


def test_shipped_profiles_all_load() -> None:
    names = available_profiles()
    assert {"quick", "full", "resnet18", "tutorial"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.profile == name


def test_quick_profile_is_the_cpu_fastnet() -> None:
    cfg = load_config("quick")
    assert cfg.train.model == "fastnet"
    assert cfg.train.epochs == 16 and cfg.train.compile and cfg.train.progressive_scale == 0.75


def test_override_changes_field_and_parses_yaml_values() -> None:
    cfg = load_config(
        "quick", ["train.epochs=3", "benchmark.batch_sizes=[1, 8]", "train.tta=false", "train.tta_translate=0"]
    )
    assert cfg.train.epochs == 3
    assert cfg.benchmark.batch_sizes == (1, 8)
    assert cfg.train.tta is False


def test_bad_value_names_the_field() -> None:
    with pytest.raises(
        ConfigError, match=r"^invalid configuration: train\.epochs: Input should be greater than 0 \(got -1\)$"
    ):
        load_config("quick", ["train.epochs=-1"])


def test_unknown_key_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train\.epoch: Extra inputs are not permitted"):
        load_config("quick", ["train.epoch=3"])


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"train\.model: Input should be 'tutorial_net', 'fastnet' or 'resnet18' \(got 'vgg'\)"
    ):
        load_config("quick", ["train.model=vgg"])


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'nope'; choose one of \["):
        load_config("nope")


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"override 'train\.epochs' must look like section\.field=value"):
        load_config("quick", ["train.epochs"])


def test_profile_from_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 2\n  model: tutorial_net\n")
    cfg = load_config(str(path))
    assert (cfg.profile, cfg.train.epochs, cfg.train.model) == ("mine", 2, "tutorial_net")


def test_configs_are_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.epochs = 3  # type: ignore[misc]


def test_flat_params_cover_every_field() -> None:
    flat = PipelineConfig().flat()
    assert flat["train.model"] == "fastnet"
    assert flat["benchmark.batch_sizes"] == "[1, 32, 256]"
    cfg = PipelineConfig()
    sections = [name for name in PipelineConfig.model_fields if name != "profile"]
    expected = {"profile"} | {f"{name}.{field}" for name in sections for field in type(getattr(cfg, name)).model_fields}
    assert set(flat) == expected


def test_model_names_match_registry() -> None:
    from auditflow.models.training.registry import REGISTRY

    assert tuple(REGISTRY) == MODEL_NAMES


def test_cuda_graphs_are_on_in_full_and_turning_compile_off_needs_nothing_else() -> None:
    assert load_config("full").train.cuda_graphs and not load_config("quick").train.cuda_graphs
    assert load_config("full", ["train.compile=false"]).train.cuda_graphs  # no effect then, no error


def test_translate_tta_needs_tta() -> None:
    with pytest.raises(ConfigError, match=r"tta_translate=1 needs tta=true"):
        load_config("quick", ["train.tta=false", "train.tta_translate=1"])
