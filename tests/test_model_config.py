"""Model configs: the paper's parameter counts without allocating weights, JSON round trip, validation."""

import pytest

from slam_jax.models import config as model_config
from slam_jax.models import qwen2


def test_slam_counts_exactly_the_papers_parameters():
    slam = model_config.slam()
    assert slam.vocab_size == 502 and slam.rope_theta == 10_000.0 and slam.max_position_embeddings == 1024
    assert slam.num_params() == 358_347_904
    assert qwen2.count_params(slam) == 358_347_904
    assert slam.num_params(include_embedding=False) == 357_898_112  # docs/performance.md's N


def test_qwen2_5_0_5b_counts_the_published_494m():
    assert qwen2.count_params(model_config.qwen2_5_0_5b()) == 494_032_768


@pytest.mark.parametrize("name", sorted(model_config.PRESETS))
def test_closed_form_count_equals_abstract_shapes(name):
    config = model_config.from_preset(name)
    assert config.num_params() == qwen2.count_params(config)
    assert config.replace(tie_word_embeddings=False).num_params() == qwen2.count_params(
        config.replace(tie_word_embeddings=False)
    )


def test_json_round_trip(tmp_path):
    config = model_config.slam(remat_policy="dots", scan_layers=False)
    config.save(tmp_path / "c.json")
    assert model_config.ModelConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=5, num_kv_heads=2), "multiple of num_kv_heads"),
        (dict(remat_policy="everything"), "remat_policy"),
        (dict(compute_dtype="int8"), "compute_dtype"),
        (dict(head_dim=7), "even"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_config.tiny(**overrides)


def test_unknown_preset_and_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="model.preset='huge'"):
        model_config.from_preset("huge")
    (tmp_path / "c.json").write_text('{"vocab_size": 3, "colour": "red"}')
    with pytest.raises(ValueError, match=r"c.json: unknown keys \['colour'\] \(known: \[.*'vocab_size'"):
        model_config.ModelConfig.load(tmp_path / "c.json")
