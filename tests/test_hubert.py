"""HuBERT encoder: every hidden state against transformers' HubertModel, padding and masking, the reference's
padding, and the conversion (both weight-norm storage forms, bad input)."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from speech_fixtures import hf_hidden_states, random_hubert

from conversion import hubert_to_flax, safetensors_io
from slam_jax.models import hubert
from slam_jax.speech import encoder as unit_encoder

TOLERANCE = 1e-4
FRONT_ENDS = {
    "group_25hz": dict(feat_extract_norm="group"),
    "layer_stable_25hz": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "layer_50hz": dict(
        feat_extract_norm="layer",
        conv_dim=[16] * 7,
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    ),
}
LENGTHS = (9000, 6500, 3333)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Factory (cached per front end): (random HF model, our encoder converted from its saved safetensors)."""
    cache = {}

    def make(name: str):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            model = random_hubert(**FRONT_ENDS[name])
            model.save_pretrained(folder / "hf")
            cache[name] = model, hubert.load_encoder(hubert_to_flax.convert(folder / "hf", folder / "flax"))
        return cache[name]

    return make


@nnx.jit
def all_states(model, waveforms, lengths):
    return model.hidden_states(waveforms, lengths)


@nnx.jit(static_argnames="layer")
def layer_output(model, waveforms, lengths, layer):
    return model(waveforms, lengths, layer=layer)


def padded_batch(lengths=LENGTHS, seed=0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(length)).astype(np.float32) for length in lengths]
    batch = np.zeros((len(waves), max(lengths)), np.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    return batch, waves


def in_windows(model: hubert.Hubert, frames: int) -> hubert.Hubert:
    """`model` with its conv front end run `frames` output frames at a time (0: the model as it is)."""
    if not frames:
        return model
    return hubert.model_from_params(model.config.replace(conv_chunk_frames=frames), hubert.get_params(model))


@pytest.mark.parametrize("windows", [0, 3], ids=["whole", "conv_in_windows"])
@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_every_hidden_state_matches_transformers_on_a_padded_batch(converted, front_end, windows):
    hf_model, ours = converted(front_end)
    ours = in_windows(ours, windows)
    batch, waves = padded_batch()
    states = [np.asarray(state) for state in all_states(ours, batch, np.array(LENGTHS))]
    assert len(states) == hf_model.config.num_hidden_layers + 1
    for row, wave in enumerate(waves):
        alone = hf_hidden_states(hf_model, wave[None])
        frames = alone[0].shape[1]
        assert frames == ours.config.num_frames(len(wave))
        for index, (got, want) in enumerate(zip(states, alone, strict=True)):
            error = np.abs(got[row, :frames] - want[0]).max()
            assert error <= TOLERANCE, (front_end, row, index, error)


def test_layer_front_end_also_matches_transformers_batched_with_its_attention_mask(converted):
    hf_model, ours = converted("layer_stable_25hz")
    batch, _ = padded_batch()
    mask = (np.arange(batch.shape[1])[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    theirs = hf_hidden_states(hf_model, batch, attention_mask=mask)
    states = all_states(ours, batch, np.array(LENGTHS))
    for row, length in enumerate(LENGTHS):
        frames = ours.config.num_frames(length)
        for got, want in zip(states, theirs, strict=True):
            assert np.abs(np.asarray(got)[row, :frames] - want[row, :frames]).max() <= TOLERANCE


def test_group_norm_front_end_is_batch_independent_where_transformers_is_not(converted):
    """HF's group norm takes statistics over the padding too; ours over each item's own frames only."""
    hf_model, ours = converted("group_25hz")
    batch, waves = padded_batch()
    mask = (np.arange(batch.shape[1])[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    alone = hf_hidden_states(hf_model, waves[2][None])[-1][0]
    frames = alone.shape[0]
    hf_batched = hf_hidden_states(hf_model, batch, attention_mask=mask)[-1][2, :frames]
    ours_batched = np.asarray(layer_output(ours, batch, np.array(LENGTHS), layer=3)[0])[2, :frames]
    assert np.abs(hf_batched - alone).max() > 100 * TOLERANCE
    assert np.abs(ours_batched - alone).max() <= TOLERANCE


def test_any_layer_runs_only_the_layers_below_it(converted):
    _, ours = converted("group_25hz")
    batch, _ = padded_batch()
    states = all_states(ours, batch, np.array(LENGTHS))
    for layer in (0, 2):
        features, mask = layer_output(ours, batch, np.array(LENGTHS), layer=layer)
        np.testing.assert_allclose(np.asarray(features), np.asarray(states[layer]), atol=1e-5)
    assert np.asarray(mask).sum(axis=1).tolist() == [ours.config.num_frames(length) for length in LENGTHS]
    with pytest.raises(ValueError, match="layer 4 not in"):
        ours(batch, np.array(LENGTHS), layer=4)


@pytest.mark.parametrize("windows", [0, 4], ids=["whole", "conv_in_windows"])
def test_reference_padding_equals_transformers_run_the_reference_way(converted, windows):
    """The reference: pad the batch to its longest item, 40 zeros per side, no mask, keep ceil(n/longest*T)."""
    hf_model, ours = converted("group_25hz")
    ours = in_windows(ours, windows)
    layer = 2
    batch, waves = padded_batch()
    rng = np.random.default_rng(1)
    hf_padded = torch.nn.functional.pad(torch.from_numpy(batch), (40, 40)).numpy()
    reference_features = hf_hidden_states(hf_model, hf_padded)[layer]
    flat = reference_features.reshape(-1, reference_features.shape[-1])
    centroids = flat[rng.choice(len(flat), 12, replace=False)]
    encoder = unit_encoder.hubert_encoder(
        ours, layer, centroids, reference_padding=True, batch_size=4, devices=jax.local_devices()[:1]
    )
    got = encoder.encode(waves)
    total = reference_features.shape[1]
    keep = ((torch.tensor(LENGTHS).float() / batch.shape[1]) * total).ceil().int().tolist()
    distances = ((reference_features[..., None, :] - centroids) ** 2).sum(-1)
    for row, units in enumerate(got):
        assert len(units) == keep[row]
        np.testing.assert_array_equal(units, distances[row, : keep[row]].argmin(-1))
    batch_features = np.asarray(layer_output(ours, np.pad(batch, ((0, 0), (40, 40))), None, layer=layer)[0])
    assert np.abs(batch_features - reference_features).max() <= TOLERANCE


def rewrite_checkpoint(folder, rename) -> None:
    """Rewrite model.safetensors with every tensor renamed by `rename(name)`."""
    reader = safetensors_io.CheckpointReader(folder)
    tensors = {rename(name): np.array(reader.get(name)) for name in reader.keys()}
    (folder / "model.safetensors").unlink()
    safetensors_io.save_file(tensors, folder / "model.safetensors", {"format": "pt"})


def test_conversion_reads_legacy_weight_norm_names_and_a_head_model_prefix(tmp_path):
    model = random_hubert(**FRONT_ENDS["group_25hz"])
    model.save_pretrained(tmp_path / "modern")
    model.save_pretrained(tmp_path / "legacy")
    legacy = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}

    def rename(name):
        for new, old in legacy.items():
            name = name.replace(new, old)
        return "hubert." + name

    rewrite_checkpoint(tmp_path / "legacy", rename)
    reader = safetensors_io.CheckpointReader(tmp_path / "legacy")
    assert "hubert.encoder.pos_conv_embed.conv.weight_g" in reader
    modern = hubert.get_params(hubert.load_encoder(hubert_to_flax.convert(tmp_path / "modern", tmp_path / "a")))
    old = hubert.get_params(hubert.load_encoder(hubert_to_flax.convert(tmp_path / "legacy", tmp_path / "b")))
    flat_modern = {str(k): np.asarray(v) for k, v in _flatten(modern)}
    flat_old = {str(k): np.asarray(v) for k, v in _flatten(old)}
    assert flat_modern.keys() == flat_old.keys()
    for key, value in flat_modern.items():
        np.testing.assert_array_equal(value, flat_old[key])
    weight = model.encoder.pos_conv_embed.conv.weight.detach().numpy()
    ours = np.asarray(hubert.load_encoder(tmp_path / "b").pos_conv_embed.kernel())
    np.testing.assert_allclose(ours.transpose(2, 1, 0), weight, atol=1e-6)


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, key))
    else:
        yield prefix, tree


def run_convert(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = hubert_to_flax.main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def assert_clean_failure(code: int, stderr: str, out, *fragments: str) -> None:
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a staging folder was left behind"


def test_conversion_bad_input_is_a_one_line_error(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_convert(capsys, "--model", tmp_path / "absent", "--out", out)
    assert_clean_failure(code, err, out, str(tmp_path / "absent"), "no such checkpoint folder")

    random_hubert(**FRONT_ENDS["group_25hz"]).save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_type": "wav2vec2"}))
    code, err = run_convert(capsys, "--model", tmp_path / "hf", "--out", out)
    assert_clean_failure(code, err, out, str(config_path), "model_type 'wav2vec2' is not 'hubert'")
    config_path.write_text(json.dumps(config))

    rewrite_checkpoint(tmp_path / "hf", lambda name: name.replace("layers.1.attention.k_proj", "layers.1.attn.k"))
    code, err = run_convert(capsys, "--model", tmp_path / "hf", "--out", out)
    assert_clean_failure(code, err, out, "encoder.layers.1.attention.k_proj.weight missing from the checkpoint")


def test_conversion_help_and_refusal_to_overwrite(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        hubert_to_flax.main(["--help"])
    assert exit_info.value.code == 0 and "--model" in capsys.readouterr().out
    random_hubert(**FRONT_ENDS["group_25hz"]).save_pretrained(tmp_path / "hf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = run_convert(capsys, "--model", tmp_path / "hf", "--out", tmp_path / "out")
    assert code == 1 and "already exists and is not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    code, _ = run_convert(capsys, "--model", tmp_path / "hf", "--out", tmp_path / "out", "--overwrite")
    assert code == 0 and hubert.is_encoder_dir(tmp_path / "out")
