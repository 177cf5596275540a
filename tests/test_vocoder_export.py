"""Exporting a slam_jax vocoder to the reference's layout (`conversion/vocoder_to_textless.py`): the round trip
reference -> slam_jax -> export -> slam_jax keeps every parameter, the export loads strictly into the original
HiFi-GAN generator (PyTorch, the pip package `hifi-gan`) and speaks as our vocoder does, and the command's
one-line failures."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from test_vocoder import (
    CONFIGS,
    embedding_tensors,
    numpy_features,
    numpy_log_durations,
    random_units,
    reference_generator,
    reference_waveform,
    save_textless,
    textless_state,
)

import slam_jax
from conversion import vocoder_to_flax, vocoder_to_textless
from slam_jax.models import vocoder, weights

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # waveforms: max|a - b| / max|b|
PARAMETER_TOLERANCE = 1e-6  # each parameter: max|a - b| / max|b|
EMBEDDINGS = ("dict.", "spkr.", "style.", "dur_predictor.")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Factory (cached): for CONFIGS[name], the reference's state dict and folders `flax` (converted from it),
    `textless` (`flax` exported) and `again` (`textless` converted back)."""
    cache = {}

    def make(name: str):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            config = CONFIGS[name]
            state = textless_state(reference_generator(config), embedding_tensors(config))
            checkpoint, config_file = save_textless(folder / "reference", config, state)
            vocoder_to_flax.convert(checkpoint, config_file, folder / "flax")
            vocoder_to_textless.export(folder / "flax", folder / "textless")
            textless = folder / "textless"
            vocoder_to_flax.convert(textless / "generator.pt", textless / "config.json", folder / "again")
            cache[name] = state, folder
        return cache[name]

    return make


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def read_export(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    state = torch.load(folder / "generator.pt", weights_only=True)
    assert list(state) == ["generator"]
    tensors = {name: tensor.numpy() for name, tensor in state["generator"].items()}
    return tensors, json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_keeps_every_parameter(exported, name):
    state, folder = exported(name)
    tensors, config = read_export(folder / "textless")
    assert {key: config[key] for key in CONFIGS[name]} == CONFIGS[name]
    assert {key: tuple(tensor.shape) for key, tensor in tensors.items()} == {
        key: tuple(tensor.shape) for key, tensor in state.items()
    }
    assert all(tensor.dtype == np.float32 for tensor in tensors.values())
    first, again = (weights.load_params(vocoder.FAMILY, folder / part) for part in ("flax", "again"))
    assert jax.tree.structure(first) == jax.tree.structure(again)
    errors = jax.tree.leaves(jax.tree.map(relative_error, again, first))
    assert max(errors) <= PARAMETER_TOLERANCE
    for key in ("dict.weight", "spkr.weight", "style.weight", "dur_predictor.proj.weight"):
        if key in state:
            np.testing.assert_array_equal(tensors[key], state[key].numpy())


def hifi_gan_generator(folder: Path):
    """The original HiFi-GAN generator, weight-normed as the reference builds it, with the export's generator
    tensors loaded strictly, then weight norm removed (as the reference does before inference)."""
    tensors, config = read_export(folder)
    generator = reference_generator(config, seed=7)  # other random weights: every one must be overwritten
    own = {key: torch.from_numpy(tensor) for key, tensor in tensors.items() if not key.startswith(EMBEDDINGS)}
    generator.load_state_dict(own, strict=True)
    generator.remove_weight_norm()
    return generator, tensors


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_speaks_as_our_vocoder_in_the_hifi_gan_generator(exported, name):
    _, folder = exported(name)
    generator, tensors = hifi_gan_generator(folder / "textless")
    ours = slam_jax.load_vocoder(folder / "flax", batch_size=1)
    units = random_units(21, seed=11)
    choice = dict(speaker=2, style=1) if name == "speakers_styles" else {}
    expected = reference_waveform(generator, numpy_features(tensors, units, **choice))
    assert np.std(expected) > 0.05
    assert relative_error(ours.vocode(units, **choice), expected) <= TOLERANCE
    if name == "durations":
        counts = np.maximum(np.round(np.exp(numpy_log_durations(tensors, units)) - 1), 1).astype(int)
        np.testing.assert_array_equal(ours.durations([units])[0], counts)


def test_weight_norm_pair_gives_the_weight_back():
    weight = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    weight[2] = 0.0  # a row of zeros: g = 0, and v must not be 0 (0 / 0)
    magnitude, direction = vocoder_to_textless.weight_norm_pair(weight)
    assert magnitude.shape == (4, 1, 1) and direction.shape == weight.shape
    folded = vocoder_to_flax.fold_weight_norm(magnitude, direction)
    assert np.all(np.isfinite(folded)) and np.max(np.abs(folded - weight)) <= 1e-6 * np.max(np.abs(weight))


def test_the_mapping_needs_no_torch(exported):
    _, folder = exported("resblock1")
    program = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "from conversion import vocoder_to_textless\n"
        "from slam_jax.models import vocoder, weights\n"
        f"model = weights.load_model(vocoder.FAMILY, {str(folder / 'flax')!r})\n"
        "tensors, config = vocoder_to_textless.textless_from_params(vocoder.get_params(model), model.config)\n"
        "print('tensors', len(tensors), config['model_in_dim'])\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensors 85 8" in result.stdout


def run_cli(*argv) -> int:
    return vocoder_to_textless.main([str(arg) for arg in argv])


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_writes_the_export(capsys, exported, tmp_path):
    _, folder = exported("durations")
    assert run_cli("--vocoder", folder / "flax", "--out", tmp_path / "out") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {tmp_path / 'out'} (generator.pt + config.json): 12 units"), line
    assert "a duration predictor" in line
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["config.json", "generator.pt"]


def test_cli_fails_in_one_line(capsys, exported, tmp_path):
    _, folder = exported("resblock1")
    assert run_cli("--vocoder", tmp_path / "missing", "--out", tmp_path / "out") == 1
    assert "missing: not a converted vocoder" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier work")
    assert run_cli("--vocoder", folder / "flax", "--out", tmp_path / "out") == 1
    assert "already exists and is not empty (pass --overwrite to replace it)" in one_error_line(capsys)
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier work"

    assert run_cli("--vocoder", folder / "flax", "--out", tmp_path / "out", "--overwrite") == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["config.json", "generator.pt"]
