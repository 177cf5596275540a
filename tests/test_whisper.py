"""Whisper in JAX: the log-mel front end against WhisperFeatureExtractor, the encoder and the decoder's logits
against WhisperForConditionalGeneration, greedy transcripts against its `generate` (token for token, texts as
the ASR pipeline decodes them), the conversion, the large-v3-turbo size, and bad input."""

import json
import shutil
import types

import jax
import numpy as np
import pytest
import soxr
import torch
import transformers
import whisper_fixtures
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize

from conversion import safetensors_io, whisper_to_flax
from slam_jax.models import precision, whisper
from slam_jax.speech import asr, whisper_features

TOLERANCE = 1e-4
MAX_NEW_TOKENS = 32
SUPPRESSED = list(range(0, 256, 3))  # a third of the bytes: the search must skip them at every step
EOS_SCALE = 2.2  # a longer EOS embedding row: some rows of the random model end early, others do not


def speech(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng: float32 at 22,050 Hz."""
    return synthesize(text).astype(np.float32) / 32768


def resampled(wave: np.ndarray) -> np.ndarray:
    return soxr.resample(wave, ESPEAK_RATE, whisper_features.SAMPLE_RATE, quality="HQ")


def reference_features(waves: list[np.ndarray], num_mel_bins: int = 80) -> np.ndarray:
    extractor = transformers.WhisperFeatureExtractor(feature_size=num_mel_bins)
    return extractor(waves, sampling_rate=whisper_features.SAMPLE_RATE, return_tensors="np").input_features


def random_checkpoint(folder, seed: int = 0, **overrides) -> transformers.WhisperForConditionalGeneration:
    """A random tiny Whisper, saved with its tokenizer and configs into `folder`."""
    made = whisper_fixtures.tokenizer()
    model = transformers.WhisperForConditionalGeneration(whisper_fixtures.whisper_config(made, **overrides)).eval()
    whisper_fixtures.randomise(model, seed, scale=0.3)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[whisper_fixtures.token_id(made, "<|endoftext|>")] *= EOS_SCALE
    whisper_fixtures.save_checkpoint(folder, model, made, whisper_fixtures.generation_config(made, SUPPRESSED))
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(the HF model, its tokenizer, our model, our transcriber), the checkpoint converted by the command line."""
    folder = tmp_path_factory.mktemp("whisper")
    model = random_checkpoint(folder / "hf")
    assert whisper_to_flax.main(["--model", str(folder / "hf"), "--out", str(folder / "flax")]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "hf")
    return types.SimpleNamespace(
        hf=model,
        tokenizer=tokenizer,
        folder=folder / "flax",
        ours=whisper.load_whisper(folder / "flax"),
        asr=asr.load_asr(folder / "flax"),
    )


@pytest.fixture(scope="module")
def clips():
    """The test sentences spoken at espeak's 22,050 Hz, longest first and the shortest twice over."""
    return [speech(text) for text in SENTENCES] + [speech(" ".join(SENTENCES[:2]))]


@pytest.mark.parametrize("num_mel_bins", whisper.MEL_BINS)
def test_features_equal_the_feature_extractor(clips, num_mel_bins):
    rng = np.random.default_rng(0)
    waves = [resampled(clips[0]), (0.1 * rng.standard_normal(31 * whisper_features.SAMPLE_RATE)).astype(np.float32)]
    batch = np.stack([whisper_features.pad_or_trim(wave) for wave in waves])
    ours = jax.jit(whisper_features.log_mel, static_argnums=1)(batch, num_mel_bins)
    expected = reference_features(waves, num_mel_bins)
    assert ours.shape == expected.shape == (2, num_mel_bins, whisper_features.NUM_FRAMES)
    assert np.abs(np.asarray(ours) - expected).max() <= TOLERANCE


def test_encoder_and_logits_match_transformers(converted, clips):
    assert converted.ours.config == whisper.tiny()  # config.json read as the preset describes the test model
    features = reference_features([resampled(wave) for wave in clips[:2]])
    decoder_ids = np.array([[257, 258, 261, 265, 40, 220, 41], [257, 259, 260, 265, 7, 8, 9]])
    with torch.no_grad():
        expected = converted.hf(torch.as_tensor(features), decoder_input_ids=torch.as_tensor(decoder_ids))
    encoded = jax.jit(lambda model, x: model.encoder(x))(converted.ours, features)
    logits = jax.jit(lambda model, x, ids: model(x, ids))(converted.ours, features, decoder_ids)
    assert np.abs(np.asarray(encoded) - expected.encoder_last_hidden_state.numpy()).max() <= TOLERANCE
    assert np.abs(np.asarray(logits) - expected.logits.numpy()).max() <= TOLERANCE


def reference_ids(model, waves: list[np.ndarray], **generate_kwargs) -> list[list[int]]:
    """transformers' greedy ids of 16 kHz `waves`, the padding (EOS) after each row's end removed."""
    with torch.no_grad():
        rows = model.generate(
            torch.as_tensor(reference_features(waves)), max_new_tokens=MAX_NEW_TOKENS, **generate_kwargs
        )
    eos = model.generation_config.eos_token_id
    return [[token for token in row if token != eos] for row in rows.tolist()]


def pipeline_text(tokenizer, ids: list[int]) -> str:
    """The text transformers' ASR pipeline makes of a Whisper's generated ids (its `postprocess`)."""
    output = {"tokens": torch.as_tensor([ids], dtype=torch.long)}
    text, _ = tokenizer._decode_asr([output], return_timestamps=None, return_language=None, time_precision=0.02)
    return text


def test_greedy_transcripts_equal_transformers_generate(converted, clips):
    """Clips at espeak's rate (resampled by the transcriber as soxr does), an empty one left out of the model."""
    waves = clips[:2] + [np.zeros((0,), np.float32)] + clips[2:]
    ids = converted.asr.transcribe_ids(waves, ESPEAK_RATE, max_new_tokens=MAX_NEW_TOKENS)
    texts = converted.asr.transcribe(waves, ESPEAK_RATE, max_new_tokens=MAX_NEW_TOKENS)
    expected = reference_ids(converted.hf, [resampled(wave) for wave in clips], language="en", task="transcribe")
    assert ids[2] == [] and texts[2] == ""
    assert ids[:2] + ids[3:] == expected
    lengths = {len(row) for row in expected}
    assert len(lengths) > 1 and MAX_NEW_TOKENS in lengths, lengths  # some rows end early, some run to the limit
    assert not set(SUPPRESSED) & {token for row in expected for token in row}
    for row, text in zip(ids, texts, strict=True):
        assert (
            text == converted.tokenizer.decode(row, skip_special_tokens=True) == pipeline_text(converted.tokenizer, row)
        )


def test_language_and_task_set_the_prompt_as_transformers_does(converted, clips):
    waves = [resampled(wave) for wave in clips[:3]]
    ids = converted.asr.transcribe_ids(
        waves, 16_000, max_new_tokens=MAX_NEW_TOKENS, language="French", task="translate"
    )
    assert ids == reference_ids(converted.hf, waves, language="french", task="translate")
    assert converted.asr.prompting.prompt("fr", "translate") == [257, 259, 260, 265]


def test_large_v3_turbo_has_transformers_parameter_count():
    config = whisper.large_v3_turbo()
    hf_config = transformers.WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=4,
        decoder_attention_heads=20,
        decoder_ffn_dim=5120,
    )
    with torch.device("meta"):
        reference = sum(
            parameter.numel() for parameter in transformers.WhisperForConditionalGeneration(hf_config).parameters()
        )
    assert whisper.count_params(config) == reference == 808_878_080
    assert whisper.param_shapes(config)["encoder"]["layers"]["self_attn"]["k_proj"]["kernel"].shape == (32, 1280, 1280)


def run_cli(*args) -> int:
    return whisper_to_flax.main([str(arg) for arg in args])


def assert_one_line_error(capsys, code: int, *fragments: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def rewrite_tensors(folder, change) -> None:
    """Apply `change(tensors)` to the checkpoint's tensors and save them back."""
    path = folder / safetensors_io.SINGLE_FILE
    reader = safetensors_io.CheckpointReader(folder)
    tensors = {name: np.array(reader.get(name)) for name in reader.keys()}  # copies: the file is rewritten
    change(tensors)
    safetensors_io.save_file(tensors, path, {"format": "pt"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "hf"
    random_checkpoint(folder, seed=1, encoder_layers=1, decoder_layers=1)
    return folder


def copy_of(checkpoint, tmp_path):
    return shutil.copytree(checkpoint, tmp_path / "hf")


def test_conversion_refuses_a_missing_tensor(capsys, tmp_path, checkpoint):
    folder = copy_of(checkpoint, tmp_path)
    rewrite_tensors(folder, lambda tensors: tensors.pop("model.decoder.layers.0.encoder_attn.k_proj.weight"))
    code = run_cli("--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(capsys, code, "model.decoder.layers.0.encoder_attn.k_proj.weight missing")
    assert not (tmp_path / "out").exists()


def test_conversion_refuses_a_wrong_shape(capsys, tmp_path, checkpoint):
    folder = copy_of(checkpoint, tmp_path)
    rewrite_tensors(folder, lambda tensors: tensors.update({"model.encoder.conv1.bias": np.zeros(63, np.float32)}))
    code = run_cli("--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(capsys, code, "model.safetensors: tensor model.encoder.conv1.bias has shape (63,)", "(64,)")


def test_conversion_refuses_extra_tensors_other_models_and_missing_files(capsys, tmp_path, checkpoint):
    folder = copy_of(checkpoint, tmp_path)
    rewrite_tensors(folder, lambda tensors: tensors.update({"model.encoder.extra": np.zeros(2, np.float32)}))
    assert_one_line_error(capsys, run_cli("--model", folder, "--out", tmp_path / "out"), "['model.encoder.extra']")
    config = json.loads((checkpoint / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    code = run_cli("--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(capsys, code, "config.json: model_type 'llama' is not 'whisper'")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").unlink()
    code = run_cli("--model", folder, "--out", tmp_path / "out")
    assert_one_line_error(capsys, code, "missing ['generation_config.json']")
    assert not (tmp_path / "out").exists()


def test_a_missing_model_folder_is_one_line_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        asr.load_asr(tmp_path / "nowhere")
    assert "nowhere: no such Whisper model folder" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (
            lambda model: model.transcribe([np.zeros(100, np.float32), np.zeros(30 * 16_000 + 1, np.float32)], 16_000),
            "waves[1]: 30.00 s (480001 samples at 16000 Hz) is longer than Whisper's 30 s window",
        ),
        (lambda model: model.transcribe([np.zeros((2, 100), np.float32)], 16_000), "waves[0]: expected a 1-D float"),
        (lambda model: model.transcribe([np.zeros(9)], 0), "sample_rate=0: expected a positive integer"),
        (lambda model: model.transcribe([np.zeros(9)], 16_000, language="xx"), "language='xx': not a Whisper"),
        (lambda model: model.transcribe([np.zeros(9)], 16_000, language="de"), "<|de|> is not in this model's"),
        (lambda model: model.transcribe([np.zeros(9)], 16_000, task="summarise"), "task='summarise': not one of"),
        (lambda model: model.transcribe([np.zeros(9)], 16_000, max_new_tokens=445), "max_new_tokens=445: with the 4"),
    ],
)
def test_bad_input_is_one_line_naming_it(converted, call, fragment):
    with pytest.raises(ValueError) as error:
        call(converted.asr)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bfloat16_transcriber_multiplies_bf16_operands_but_the_mel_filters(converted):
    """In bf16 every matmul of the jitted transcription takes bf16 operands, except the front end's mel filterbank
    (float32 at full precision, as the feature extractor computes it)."""
    transcriber = asr.load_asr(converted.folder, compute_dtype="bfloat16")
    waves = jax.ShapeDtypeStruct((8, whisper_features.NUM_SAMPLES), np.float32)
    settings = whisper.GreedySettings(max_new_tokens=4, eos_token_id=256)
    lowered = asr.greedy_ids.lower(
        transcriber._graphdef, transcriber._state, waves, np.zeros(4, np.int32), np.ones(8, bool), settings
    )
    census = precision.matmul_census(lowered.as_text(dialect="hlo"))
    assert census["dots"] > 10 and census["dots_with_f32_operand"] == 1, census
