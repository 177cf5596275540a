"""The unit vocoder (CodeHiFiGAN): waveforms against the original HiFi-GAN generator (PyTorch, the pip package
`hifi-gan`) converted through the CLI from the reference's layout, embeddings and the duration predictor against
numpy written from the reference's definitions, padding, the Python API and bad input."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hifi_gan.models import Generator
from torch.nn.utils import weight_norm

import slam_jax
from conversion import vocoder_to_flax
from slam_jax.models import vocoder

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
NUM_UNITS = 12
# Two stages: x3 (width 7, padding 2: 3 samples per frame) then x2 (width 5, padding 1: one sample more than
# 2 per input sample, (n - 1) * 2 - 2 + 5), so an item of n frames has 6n + 1 samples.
BASE = dict(
    num_embeddings=NUM_UNITS,
    embedding_dim=8,
    model_in_dim=8,
    upsample_rates=[3, 2],
    upsample_kernel_sizes=[7, 5],
    upsample_initial_channel=16,
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 2, 3], [1, 3, 5]],
    sampling_rate=16_000,
)
DURATIONS = dict(encoder_embed_dim=8, var_pred_hidden_dim=5, var_pred_kernel_size=3, var_pred_dropout=0.5)
CONFIGS = {
    "resblock1": BASE,
    "resblock2": {**BASE, "resblock": "2", "resblock_dilation_sizes": [[1, 2], [1, 3]]},
    "durations": {**BASE, "dur_predictor_params": DURATIONS, "sampling_rate": 24_000},
    "speakers_styles": {
        **BASE,
        "embedding_dim": 6,
        "model_in_dim": 18,
        "multispkr": True,
        "num_speakers": 3,
        "multistyle": True,
        "num_styles": 2,
    },
}
NEW_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def reference_generator(config: dict, seed: int = 0) -> Generator:
    """HiFi-GAN's Generator whose first conv reads `model_in_dim` channels (as textlesslib's CodeGenerator builds
    it), every tensor random: weight-norm magnitudes U(0.7, 1.3), directions N(0, 1), biases N(0, 0.1)."""
    torch.manual_seed(seed)
    generator = Generator(SimpleNamespace(**{"resblock": "1", **config}))  # textlesslib's default: type 1
    generator.conv_pre = weight_norm(
        torch.nn.Conv1d(config["model_in_dim"], config["upsample_initial_channel"], 7, 1, padding=3)
    )
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("weight_g"):
                parameter.uniform_(0.7, 1.3)
            elif name.endswith("weight_v"):
                parameter.normal_()
            else:
                parameter.normal_(0.0, 0.1)
    return generator.eval()


def embedding_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random unit / speaker / style embeddings and duration predictor weights, named as textlesslib's."""
    rng = np.random.default_rng(seed)
    dim = config["embedding_dim"]
    shapes = {"dict.weight": (config["num_embeddings"], dim)}
    if config.get("multispkr"):
        shapes["spkr.weight"] = (config["num_speakers"], dim)
    if config.get("multistyle"):
        shapes["style.weight"] = (config["num_styles"], dim)
    if config.get("dur_predictor_params"):
        hidden = config["dur_predictor_params"]["var_pred_hidden_dim"]
        for index, in_features in ((1, dim), (2, hidden)):
            shapes[f"dur_predictor.conv{index}.0.weight"] = (hidden, in_features, 3)
            shapes[f"dur_predictor.conv{index}.0.bias"] = (hidden,)
            shapes[f"dur_predictor.ln{index}.weight"] = (hidden,)
            shapes[f"dur_predictor.ln{index}.bias"] = (hidden,)
        shapes["dur_predictor.proj.weight"] = (1, hidden)
        shapes["dur_predictor.proj.bias"] = (1,)
    tensors = {name: rng.normal(0.0, 0.5, shape).astype(np.float32) for name, shape in shapes.items()}
    if config.get("dur_predictor_params"):  # log(1 + frames) spread over about 0.3 .. 2.3: 0 to 9 frames
        tensors["dur_predictor.proj.bias"][:] = 1.3
    return tensors


def save_textless(folder: Path, config: dict, state: dict) -> tuple[Path, Path]:
    """The reference's files: the PyTorch `{"generator": state_dict}` and the JSON config."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": state}, folder / "generator.pt")
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "generator.pt", folder / "config.json"


def textless_state(generator: Generator, tensors: dict[str, np.ndarray], storage: str = "weight_g") -> dict:
    state = {name: tensor.clone() for name, tensor in generator.state_dict().items()}
    if storage == "parametrizations":  # the names torch.nn.utils.parametrizations.weight_norm saves under
        state = {_new_weight_norm_name(name): tensor for name, tensor in state.items()}
    return {**state, **{name: torch.from_numpy(array) for name, array in tensors.items()}}


def _new_weight_norm_name(name: str) -> str:
    prefix, _, last = name.rpartition(".")
    return f"{prefix}.{NEW_WEIGHT_NORM[last]}" if last in NEW_WEIGHT_NORM else name


def run_cli(*argv) -> int:
    return vocoder_to_flax.main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Factory (cached): the reference generator, its embedding tensors, and our vocoder converted by the CLI into
    `folder`."""
    cache = {}

    def make(name: str, storage: str = "weight_g"):
        if (name, storage) not in cache:
            folder = tmp_path_factory.mktemp(f"{name}_{storage}")
            config = CONFIGS[name]
            generator, tensors = reference_generator(config), embedding_tensors(config)
            checkpoint, config_file = save_textless(folder, config, textless_state(generator, tensors, storage))
            assert run_cli("--checkpoint", checkpoint, "--config", config_file, "--out", folder / "out") == 0
            ours = slam_jax.load_vocoder(folder / "out", batch_size=4)
            cache[name, storage] = generator, tensors, ours, folder / "out"
        return cache[name, storage]

    return make


def numpy_features(tensors: dict, frame_units: np.ndarray, speaker: int = 0, style: int = 0) -> np.ndarray:
    """[frames, model_in_dim]: the unit embedding, then the speaker's and the style's, as CodeGenerator concatenates."""
    parts = [tensors["dict.weight"][frame_units]]
    for name, index in (("spkr.weight", speaker), ("style.weight", style)):
        if name in tensors:
            parts.append(np.broadcast_to(tensors[name][index], parts[0].shape))
    return np.concatenate(parts, axis=-1)


def reference_waveform(generator: Generator, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return generator(torch.from_numpy(np.ascontiguousarray(features.T, np.float32))[None]).numpy()[0, 0]


def numpy_log_durations(tensors: dict, units: np.ndarray) -> np.ndarray:
    """The reference's VariancePredictor in float64: (conv width 3 padded 1, ReLU, layer norm) twice, linear."""
    x = tensors["dict.weight"][units].astype(np.float64)
    for index in (1, 2):
        kernel, bias = tensors[f"dur_predictor.conv{index}.0.weight"], tensors[f"dur_predictor.conv{index}.0.bias"]
        padded = np.pad(x, ((1, 1), (0, 0)))
        x = np.maximum(sum(padded[tap : tap + len(units)] @ kernel[:, :, tap].T for tap in range(3)) + bias, 0.0)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        x = x * tensors[f"dur_predictor.ln{index}.weight"] + tensors[f"dur_predictor.ln{index}.bias"]
    return (x @ tensors["dur_predictor.proj.weight"].T + tensors["dur_predictor.proj.bias"])[:, 0]


def random_units(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, NUM_UNITS, length)


def assert_speech_like(wave: np.ndarray) -> None:
    """The random generator's output is neither silent nor saturated, so the parity checks see real values."""
    assert np.std(wave) > 0.05 and np.mean(np.abs(wave) > 0.99) < 0.5


@pytest.mark.parametrize("storage", ["weight_g", "parametrizations"])
@pytest.mark.parametrize("name", ["resblock1", "resblock2"])
def test_waveform_matches_the_hifi_gan_generator(converted, name, storage):
    generator, tensors, ours, _ = converted(name, storage)
    units = random_units(37, seed=1)
    durations = np.random.default_rng(2).integers(1, 4, len(units))
    frames = np.repeat(units, durations)
    expected = reference_waveform(generator, numpy_features(tensors, frames))
    assert_speech_like(expected)
    assert len(expected) == 6 * len(frames) + 1 == ours.config.num_samples(len(frames))
    for wave in (ours.vocode(units, durations=durations), ours.vocode(frames)):
        assert wave.dtype == np.float32 and wave.shape == expected.shape
        assert np.max(np.abs(wave - expected)) <= TOLERANCE


def test_speaker_and_style_embeddings_are_appended_to_every_frame(converted):
    generator, tensors, ours, _ = converted("speakers_styles")
    units = random_units(23, seed=3)
    for speaker, style in ((2, 1), (0, 0)):
        expected = reference_waveform(generator, numpy_features(tensors, units, speaker, style))
        assert_speech_like(expected)
        assert np.max(np.abs(ours.vocode(units, speaker=speaker, style=style) - expected)) <= TOLERANCE
    with pytest.raises(ValueError, match=r"^style=2: this vocoder takes ids 0\.\.1$"):
        ours.vocode(units, style=2)
    batch = ours.vocode_batch([units, units[:9]], speakers=[1, 2], styles=[1, 0])
    for wave, (ids, speaker, style) in zip(batch, [(units, 1, 1), (units[:9], 2, 0)], strict=True):
        expected = reference_waveform(generator, numpy_features(tensors, ids, speaker, style))
        assert np.max(np.abs(wave - expected)) <= TOLERANCE


def test_duration_predictor_matches_the_reference_definition(converted):
    generator, tensors, ours, _ = converted("durations")
    units = random_units(29, seed=4)
    expected_log = numpy_log_durations(tensors, units)
    ours_log = np.asarray(ours.model.log_durations(jnp.asarray(units[None]), jnp.asarray([len(units)])))[0]
    assert np.max(np.abs(ours_log - expected_log)) < 1e-5
    frames_per_unit = np.exp(expected_log) - 1
    assert np.min(np.abs(frames_per_unit - np.floor(frames_per_unit) - 0.5)) > 1e-3  # no value near a tie
    expected_durations = np.maximum(np.round(frames_per_unit), 1).astype(np.int64)
    assert len(set(expected_durations)) >= 4  # several durations, some clamped to 1
    np.testing.assert_array_equal(ours.durations([units])[0], expected_durations)
    expected = reference_waveform(generator, numpy_features(tensors, np.repeat(units, expected_durations)))
    wave = ours.vocode(units, predict_durations=True)
    assert wave.shape == expected.shape and np.max(np.abs(wave - expected)) <= TOLERANCE


def test_predicted_durations_round_as_the_reference():
    """round(exp(x) - 1), at least 1: against the reference's own torch expression on the same float32 values."""
    values = np.concatenate(
        [
            np.log(np.array([0.5, 1.0, 1.2, 2.2, 3.7, 11.4], np.float32)),  # -> 1 (clamped), 1, 1, 1, 3, 10
            np.random.default_rng(5).uniform(-4.0, 4.0, 4096).astype(np.float32),
        ]
    )
    reference = torch.clamp(torch.round(torch.exp(torch.from_numpy(values)) - 1).long(), min=1).numpy()
    ours = np.asarray(vocoder.durations_from_log(jnp.asarray(values)))
    np.testing.assert_array_equal(ours[:6], [1, 1, 1, 1, 3, 10])
    np.testing.assert_array_equal(ours, reference)


def test_a_padded_batch_gives_each_item_the_waveform_it_gets_alone(converted):
    """Lengths 40 and 37 share a batch padded to 48 frames (33 runs alone in that bucket), 5 and 1 one padded to
    16; durations are predicted over padded batches too."""
    generator, tensors, ours, _ = converted("durations")
    sequences = [random_units(length, seed=length) for length in (5, 40, 1, 37, 33)]
    for predict in (False, True):
        batch = ours.vocode_batch(sequences, predict_durations=predict)
        alone = [ours.vocode(units, predict_durations=predict) for units in sequences]
        for units, wave, single in zip(sequences, batch, alone, strict=True):
            assert np.max(np.abs(wave - single)) <= 1e-6
            counts = np.maximum(np.round(np.exp(numpy_log_durations(tensors, units)) - 1), 1).astype(int)
            frames = np.repeat(units, counts) if predict else units
            assert np.max(np.abs(wave - reference_waveform(generator, numpy_features(tensors, frames)))) <= TOLERANCE


def test_batches_group_items_of_one_length_bucket_in_powers_of_two():
    lengths = [5, 40, 1, 37, 33]  # buckets of 16 frames: 5, 1 -> 16; 40, 37, 33 -> 48
    assert list(vocoder.batches(lengths, 4, 10_000)) == [([1, 3], 48), ([4], 48), ([0, 2], 16)]
    assert list(vocoder.batches(lengths, 4, 60)) == [([1], 48), ([3], 48), ([4], 48), ([0, 2], 16)]


def test_api(converted):
    _, _, ours, _ = converted("durations")
    assert (ours.sample_rate, ours.hop_length, ours.num_units, ours.predicts_durations) == (24_000, 6, 12, True)
    assert ours.config.num_samples(10) == 61
    wave = ours.vocode(jnp.asarray([3, 1, 4, 1, 5]))
    assert wave.shape == (31,) and wave.dtype == np.float32
    assert [len(wave) for wave in ours.vocode_batch([[1], [2, 3]], durations=[[2], [1, 3]])] == [13, 25]
    # 16-frame quanta, 4 steps per octave: 200 frames = 13 quanta, in [8, 16) steps of 2 -> 14 quanta
    assert vocoder.bucket_length(1) == 16 and vocoder.bucket_length(65) == 80 and vocoder.bucket_length(200) == 224


def test_loading_a_converted_vocoder_needs_no_torch(converted):
    *_, folder = converted("resblock1")
    program = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "import slam_jax\n"
        f"wave = slam_jax.load_vocoder({str(folder)!r}).vocode([1, 2, 3])\n"
        "print('samples', len(wave))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "samples 19" in result.stdout


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda v: v.vocode([3, 12]), "units[1]=12: unit ids must be in 0..11"),
        (lambda v: v.vocode([-1, 2]), "units[0]=-1: unit ids must be in 0..11"),
        (lambda v: v.vocode_batch([[1, 2], [4, 99]]), "units_list[1][1]=99: unit ids must be in 0..11"),
        (lambda v: v.vocode([]), "units: empty sequence"),
        (lambda v: v.vocode_batch([]), "units_list: empty"),
        (lambda v: v.vocode([[1, 2], [3, 4]]), "units: expected a 1-D sequence of unit ids"),
        (lambda v: v.vocode([1.0, 2.0]), "units: expected integer unit ids"),
        (lambda v: v.vocode([1, 2], predict_durations=True), "predict_durations: this vocoder has no duration"),
        (lambda v: v.vocode([1, 2], durations=[1]), "durations of units: expected 2 integers"),
        (lambda v: v.vocode([1, 2], durations=[1, 0]), "durations of units[1]=0: must be >= 1"),
        (lambda v: v.vocode([1, 2], speaker=1), "speaker=1: this vocoder takes only 0 (it has no such embedding)"),
        (lambda v: v.durations([[1, 2]]), "durations: this vocoder has no duration predictor"),
    ],
)
def test_bad_input_is_one_line_naming_it(converted, call, fragment):
    _, _, ours, _ = converted("resblock1")
    with pytest.raises(ValueError) as error:
        call(ours)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def assert_clean_failure(capsys, code: int, out: Path, *fragments: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


@pytest.fixture
def reference_files(tmp_path):
    """Factory: the reference's files for CONFIGS["resblock1"] after `change(config, state)` edits them."""

    def make(change=lambda config, state: None, name: str = "files") -> tuple[Path, Path]:
        config = json.loads(json.dumps(CONFIGS["resblock1"]))
        state = textless_state(reference_generator(config), embedding_tensors(config))
        change(config, state)
        return save_textless(tmp_path / name, config, state)

    return make


@pytest.mark.parametrize(
    "change, fragments",
    [
        (lambda config, state: state.pop("ups.1.weight_v"), ["generator.pt", "no 'ups.1.weight_v'"]),
        (
            lambda config, state: state.update({"dict.weight": torch.zeros(NUM_UNITS, 9)}),
            ["generator.pt", "'dict.weight' has shape (12, 9), the config needs (12, 8)"],
        ),
        (
            lambda config, state: state.update({"f0_quant_embed.weight": torch.zeros(2, 8)}),
            ["generator.pt", "1 tensors the config does not describe: ['f0_quant_embed.weight']"],
        ),
        (lambda config, state: config.pop("upsample_rates"), ["config.json", "missing keys ['upsample_rates']"]),
        (lambda config, state: config.update(f0=True), ["config.json", "f0=True: F0-conditioned vocoders"]),
        (lambda config, state: config.update(model_in_dim=80), ["config.json", "model_in_dim=80"]),
        (
            lambda config, state: config.update(resblock_dilation_sizes=[[1, 2], [1, 3]]),
            ["config.json", "resblock_dilation_sizes[0]=[1, 2]: resblock type 1 needs 3 dilations"],
        ),
    ],
)
def test_conversion_refuses_mismatched_files(capsys, tmp_path, reference_files, change, fragments):
    checkpoint, config = reference_files(change)
    code = run_cli("--checkpoint", checkpoint, "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(capsys, code, tmp_path / "out", *fragments)


def test_conversion_reads_weights_only(capsys, tmp_path, reference_files):
    checkpoint, config = reference_files()
    state = torch.load(checkpoint, weights_only=True)["generator"]
    torch.save({"generator": state, "args": SimpleNamespace(seed=1)}, tmp_path / "pickled.pt")
    code = run_cli("--checkpoint", tmp_path / "pickled.pt", "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(
        capsys, code, tmp_path / "out", "pickled.pt: refused", "types.SimpleNamespace", "full unpickling"
    )

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 8)
    code = run_cli("--checkpoint", tmp_path / "garbage.pt", "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(capsys, code, tmp_path / "out", "garbage.pt: not a PyTorch checkpoint")

    torch.save({"model": state}, tmp_path / "no_generator.pt")
    code = run_cli("--checkpoint", tmp_path / "no_generator.pt", "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(capsys, code, tmp_path / "out", "no 'generator' state dict (found ['model'])")


def test_conversion_keeps_an_existing_output(capsys, tmp_path, reference_files):
    checkpoint, config = reference_files()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier work")
    code = run_cli("--checkpoint", checkpoint, "--config", config, "--out", tmp_path / "out")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "already exists and is not empty" in lines[0]
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier work"
