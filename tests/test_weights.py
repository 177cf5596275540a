"""The model plumbing every family shares (`models/weights.py`): shapes, save -> load, one-line errors.

Expected shapes are written out by hand from the configs' numbers, and the saved values are arange patterns,
so a round trip is checked against facts, not against what the code produced before.
"""

import json

import jax
import numpy as np
import pytest

from slam_jax import parallel
from slam_jax.models import hubert, qwen2, weights
from slam_jax.models.config import ModelConfig

QWEN2_VALUES = dict(
    vocab_size=22,
    hidden_size=16,
    intermediate_size=24,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    tie_word_embeddings=False,
    max_position_embeddings=64,
    compute_dtype="float32",
)
# vocab 22, width 16, MLP 24, 2 layers, 4 query heads and 2 kv heads of 4: q 16 wide, k/v 8 wide, untied head.
QWEN2_SHAPES = {
    "embed_tokens": (22, 16),
    "layers/input_layernorm/scale": (2, 16),
    "layers/post_attention_layernorm/scale": (2, 16),
    "layers/self_attn/q_proj/kernel": (2, 16, 16),
    "layers/self_attn/q_proj/bias": (2, 16),
    "layers/self_attn/k_proj/kernel": (2, 16, 8),
    "layers/self_attn/k_proj/bias": (2, 8),
    "layers/self_attn/v_proj/kernel": (2, 16, 8),
    "layers/self_attn/v_proj/bias": (2, 8),
    "layers/self_attn/o_proj/kernel": (2, 16, 16),
    "layers/mlp/gate_proj/kernel": (2, 16, 24),
    "layers/mlp/up_proj/kernel": (2, 16, 24),
    "layers/mlp/down_proj/kernel": (2, 24, 16),
    "norm/scale": (16,),
    "lm_head/kernel": (16, 22),
}

HUBERT_VALUES = dict(  # as a JSON file spells it: lists for the conv tuples
    hidden_size=8,
    num_layers=2,
    num_heads=2,
    intermediate_size=12,
    conv_dim=[4, 6],
    conv_kernel=[10, 3],
    conv_stride=[5, 2],
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
)
# convs 1 -> 4 (width 10, group norm on the first only) -> 6 (width 3), projection 6 -> 8 after a layer norm,
# positional conv of 4 taps in 2 groups (8 / 2 = 4 inputs per group), 2 layers of width 8 with MLP 12.
HUBERT_SHAPES = {
    "conv_layers/0/kernel": (10, 1, 4),
    "conv_layers/0/layer_norm/scale": (4,),
    "conv_layers/0/layer_norm/bias": (4,),
    "conv_layers/1/kernel": (3, 4, 6),
    "feature_projection/layer_norm/scale": (6,),
    "feature_projection/layer_norm/bias": (6,),
    "feature_projection/projection/kernel": (6, 8),
    "feature_projection/projection/bias": (8,),
    "pos_conv_embed/weight_v": (4, 4, 8),
    "pos_conv_embed/weight_g": (4,),
    "pos_conv_embed/bias": (8,),
    "layer_norm/scale": (8,),
    "layer_norm/bias": (8,),
    **{f"layers/attention/{name}/kernel": (2, 8, 8) for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
    **{f"layers/attention/{name}/bias": (2, 8) for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
    "layers/layer_norm/scale": (2, 8),
    "layers/layer_norm/bias": (2, 8),
    "layers/final_layer_norm/scale": (2, 8),
    "layers/final_layer_norm/bias": (2, 8),
    "layers/feed_forward/intermediate_dense/kernel": (2, 8, 12),
    "layers/feed_forward/intermediate_dense/bias": (2, 12),
    "layers/feed_forward/output_dense/kernel": (2, 12, 8),
    "layers/feed_forward/output_dense/bias": (2, 8),
}

FAMILIES = {
    "qwen2": (qwen2.FAMILY, ModelConfig, QWEN2_VALUES, QWEN2_SHAPES),
    "hubert": (hubert.FAMILY, hubert.HubertConfig, HUBERT_VALUES, HUBERT_SHAPES),
}


def flat(tree) -> dict:
    """`a/b/c` -> leaf, whatever the key types (nnx lists give int keys)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(str(getattr(key, "key", key)) for key in path): leaf for path, leaf in leaves}


def patterned(tree) -> dict:
    """`tree` with every leaf replaced by a float32 arange pattern offset by the leaf's index."""
    leaves, structure = jax.tree.flatten(tree)
    filled = [
        (np.arange(np.prod(leaf.shape), dtype=np.float32).reshape(leaf.shape) * 1e-3 + index).astype(np.float32)
        for index, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(structure, filled)


@pytest.fixture(params=sorted(FAMILIES))
def family_case(request):
    family, settings, values, shapes = FAMILIES[request.param]
    return family, settings.from_dict(values, "test"), shapes


def test_shapes_of_init_abstract_and_counted_models_are_the_hand_written_ones(family_case):
    family, config, shapes = family_case
    initialised = flat(weights.get_params(weights.init_model(family, config, seed=1)))
    assert {name: leaf.shape for name, leaf in initialised.items()} == shapes
    assert {name: leaf.shape for name, leaf in flat(weights.param_shapes(family, config)).items()} == shapes
    assert weights.count_params(family, config) == sum(int(np.prod(shape)) for shape in shapes.values())
    assert all(leaf.dtype == np.float32 for leaf in initialised.values())


def test_save_then_load_gives_the_saved_values_and_config(family_case, tmp_path):
    family, config, _ = family_case
    params = patterned(weights.param_shapes(family, config))
    out = weights.save_model_dir(family, tmp_path / "model", config, params, extra_files={"note.json": {"a": 1}})
    assert out == (tmp_path / "model").absolute()
    assert sorted(path.name for path in out.iterdir()) == sorted([family.config_file, "note.json", "params"])
    assert json.loads((out / family.config_file).read_text()) == json.loads(json.dumps(config.to_dict()))
    assert json.loads((out / "note.json").read_text()) == {"a": 1}
    assert weights.is_model_dir(family, out) and weights.load_config(family, out) == config

    loaded = flat(weights.load_params(family, out))
    expected = flat(params)
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value, err_msg=name)
        assert loaded[name].sharding.device_set == {parallel.first_device().device_set.pop()}
    rebuilt = flat(weights.get_params(weights.load_model(family, out, scan_layers=False)))
    assert all(np.array_equal(np.asarray(rebuilt[name]), value) for name, value in expected.items())
    assert weights.load_model(family, out, scan_layers=False).config == config.replace(scan_layers=False)


def test_model_from_params_holds_exactly_the_given_params(family_case):
    family, config, _ = family_case
    params = patterned(weights.param_shapes(family, config))
    model = weights.model_from_params(family, config, params)
    assert isinstance(model, family.module) and model.config == config
    for name, value in flat(params).items():
        np.testing.assert_array_equal(np.asarray(flat(weights.get_params(model))[name]), value)


def test_a_wrong_shape_is_a_one_line_error_naming_the_parameter_and_nothing_is_written(family_case, tmp_path):
    family, config, shapes = family_case
    params = patterned(weights.param_shapes(family, config))
    layer_kernel = sorted(name for name in shapes if name.startswith("layers/") and name.endswith("kernel"))[0]
    node = params
    *parents, leaf = [int(key) if key.isdigit() else key for key in layer_kernel.split("/")]
    for key in parents:
        node = node[key]
    wrong = shapes[layer_kernel][:-1] + (shapes[layer_kernel][-1] + 1,)
    node[leaf] = np.zeros(wrong, np.float32)
    with pytest.raises(ValueError) as error:
        weights.save_model_dir(family, tmp_path / "model", config, params)
    message = str(error.value)
    assert "\n" not in message and f"the {family.noun} config" in message
    assert "".join(f"[{key!r}]" for key in parents + [leaf]) in message
    assert f"{wrong} != {shapes[layer_kernel]}" in message
    assert list(tmp_path.iterdir()) == []


def test_a_missing_parameter_is_named(family_case):
    family, config, shapes = family_case
    params = patterned(weights.param_shapes(family, config))
    del params["layers"]
    with pytest.raises(ValueError, match=r"parameter tree does not match .*missing \[\"\['layers'\]") as error:
        weights.check_shapes(family, config, params)
    assert "\n" not in str(error.value)


def test_params_that_do_not_fit_the_config_fail_to_load_in_one_line(family_case, tmp_path):
    family, config, _ = family_case
    out = weights.save_model_dir(family, tmp_path / "model", config, patterned(weights.param_shapes(family, config)))
    wider = config.replace(intermediate_size=config.intermediate_size * 2)
    with pytest.raises(ValueError, match="parameters do not match") as error:
        weights.load_params(family, out, wider)
    assert "\n" not in str(error.value) and str(out / "params") in str(error.value)


def test_a_folder_without_config_or_params_is_refused(family_case, tmp_path):
    family, config, _ = family_case
    config.save(tmp_path / family.config_file)  # a config, but no params/
    with pytest.raises(FileNotFoundError, match=f"not a converted {family.noun} .*needs {family.config_file}"):
        weights.load_params(family, tmp_path)
    assert not weights.is_model_dir(family, tmp_path)


def test_a_training_step_keeps_its_config_as_an_orbax_item(tmp_path):
    config = ModelConfig.from_dict(QWEN2_VALUES)
    (tmp_path / "model_config").mkdir()
    (tmp_path / "model_config" / "metadata").write_text(json.dumps(config.to_dict()))
    (tmp_path / "params").mkdir()
    assert weights.is_model_dir(qwen2.FAMILY, tmp_path) and not weights.is_model_dir(hubert.FAMILY, tmp_path)
    assert weights.load_config(qwen2.FAMILY, tmp_path) == config


def test_config_files_round_trip_and_checks_name_the_key(tmp_path):
    config = hubert.HubertConfig.from_dict(HUBERT_VALUES)
    assert config.conv_dim == (4, 6) and config.frame_samples == 10
    config.save(tmp_path / "c.json")
    assert hubert.HubertConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match=r"compute_dtype='int8': not one of \['float32', 'bfloat16'\]"):
        config.replace(compute_dtype="int8")
    with pytest.raises(ValueError, match="conv_chunk_frames=-1: must be >= 0"):
        config.replace(conv_chunk_frames=-1)
    with pytest.raises(ValueError, match="lengths differ"):
        config.replace(conv_kernel=(10,))
    with pytest.raises(ValueError, match=r"hidden_size=8: must divide by num_heads=3"):
        config.replace(num_heads=3)
    with pytest.raises(ValueError, match=r"c.json: unknown keys \['colour'\]"):
        hubert.HubertConfig.from_dict({**HUBERT_VALUES, "colour": 1}, "c.json")
