"""GenPPL and Auto-BLEU (`eval.metric=genppl,auto_bleu`) on a tiny pipeline: espeak prompts in sStoryCloze's layout,
a random speech LM, the MFCC tokeniser's inverse as the vocoder, a random Whisper and a random Llama, all converted
by the command lines. The transcripts and NLLs are recomputed with transformers (Whisper's feature extractor and
`generate`, LlamaForCausalLM and slamkit's NLL formula) on the same units, and GenPPL by hand from them; batch sizes
change nothing; files shorter than the prompt, a missing model and empty transcripts are clear and counted."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import transformers
import whisper_fixtures
from conftest import random_hf_model
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize
from text_lm_fixtures import random_llama, reference_nll, save_word_tokenizer

from configs import genppl as genppl_config
from configs import tokenize_mfcc
from conversion import hf_to_flax, whisper_to_flax
from slam_jax.errors import DataError
from slam_jax.evaluation import genppl, pair_metrics
from slam_jax.files import read_jsonl
from slam_jax.speech import tokenize, vocoders

NUM_UNITS = 20
PROMPT_SECONDS = 1.0
MAX_NEW_TOKENS = 12
ASR_MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("genppl"))


def build_models(root: Path) -> dict[str, Path]:
    """The benchmark folder (three sentences spoken forwards and backwards: 6 prompts, and one 0.5 s file twice,
    under the prompt length), the MFCC tokeniser fitted on them (also the vocoder), and the speech LM, Whisper and
    Llama, converted, under `root`."""
    bench = root / "sSC"
    bench.mkdir()
    for index, sentence in enumerate(SENTENCES[:3]):
        wave = synthesize(sentence).astype(np.float32) / 32768
        soundfile.write(bench / f"{index}_correct.wav", wave, ESPEAK_RATE)
        soundfile.write(bench / f"{index}_incorrect.wav", wave[::-1].copy(), ESPEAK_RATE)
    short = synthesize(SENTENCES[3]).astype(np.float32)[: ESPEAK_RATE // 2] / 32768  # 0.5 s: under the prompt
    soundfile.write(bench / "3_correct.wav", short, ESPEAK_RATE)
    soundfile.write(bench / "3_incorrect.wav", short, ESPEAK_RATE)

    config = tokenize_mfcc.get_config()
    config.tokenize.data_path, config.tokenize.out_path = str(bench), str(root / "units")
    config.tokenize.fit_units, config.tokenize.progress = NUM_UNITS, False
    tokenize.run(config, root)

    random_hf_model(vocab_size=NUM_UNITS + 2).save_pretrained(root / "speech_hf")
    hf_to_flax.convert(str(root / "speech_hf"), root / "speech_lm")

    made = whisper_fixtures.tokenizer()
    whisper = transformers.WhisperForConditionalGeneration(whisper_fixtures.whisper_config(made)).eval()
    whisper_fixtures.randomise(whisper, seed=0, scale=0.3)
    generation = whisper_fixtures.generation_config(made, suppress_tokens=[])
    whisper_fixtures.save_checkpoint(root / "whisper_hf", whisper, made, generation)
    assert whisper_to_flax.main(["--model", str(root / "whisper_hf"), "--out", str(root / "whisper")]) == 0

    llama = random_llama("llama3_tied")
    llama.save_pretrained(root / "llama_hf")
    save_word_tokenizer(root / "llama_hf")
    assert hf_to_flax.main(["--model", str(root / "llama_hf"), "--out", str(root / "llama")]) == 0
    return {
        "bench": bench,
        "units": root / "units",
        "speech_lm": root / "speech_lm",
        "whisper_hf": root / "whisper_hf",
        "whisper": root / "whisper",
        "llama_hf": root / "llama_hf",
        "llama": root / "llama",
    }


def config_for(models: dict[str, Path], metric: str = "genppl", **genppl_values):
    """configs/genppl.py on the tiny models, the MFCC tokeniser's units and its inverse as the vocoder."""
    config = genppl_config.get_config()
    config.eval.metric = metric
    config.eval.data_path = ",".join([str(models["bench"])] * len(metric.split(",")))
    config.eval.model, config.eval.progress = str(models["speech_lm"]), False
    settings = config.eval.genppl
    settings.vocoder, settings.asr_model, settings.text_lm = (
        str(models["units"]),
        str(models["whisper"]),
        str(models["llama"]),
    )
    settings.prompt_seconds, settings.max_new_tokens = PROMPT_SECONDS, MAX_NEW_TOKENS
    settings.asr_max_new_tokens = ASR_MAX_NEW_TOKENS
    for key, value in genppl_values.items():
        settings[key] = value
    config.tokenize.encoder_path = "mfcc"
    config.tokenize.kmeans_path = str(models["units"] / "centroids.npy")
    config.tokenize.progress = False
    return config


def transformers_transcripts(models: dict[str, Path], waves: list[np.ndarray]) -> list[str]:
    """Whisper's feature extractor + `generate` (English transcription) + the tokenizer's decode, in torch."""
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(models["whisper_hf"])
    model = transformers.WhisperForConditionalGeneration.from_pretrained(models["whisper_hf"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["whisper_hf"])
    features = extractor(waves, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe", max_new_tokens=ASR_MAX_NEW_TOKENS)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def test_genppl_is_the_formula_on_transformers_outputs_whatever_the_batching(models, tmp_path):
    results = pair_metrics.run(config_for(models, "genppl,auto_bleu"), tmp_path / "a")
    summary = results["genppl"]
    samples = read_jsonl(tmp_path / "a" / "eval" / "genppl_samples.jsonl")
    assert summary["num_samples"] == len(samples) == 3
    assert [Path(sample["file_name"]).name for sample in samples] == [f"{i}_correct.wav" for i in range(3)]
    assert summary["num_skipped"] == 1 and "shorter than the 1.0 s prompt" in summary["skipped"][0]["reason"]
    assert summary["skipped"][0]["file"].endswith("3_correct.wav")
    assert json.loads((tmp_path / "a" / "eval" / "auto_bleu.json").read_text())["auto_bleu_2"] == summary["auto_bleu_2"]

    vocoder = vocoders.load_vocoder(str(models["units"]))
    waves = [vocoder.vocode(s["prompt_units"] + s["units"], predict_durations=True) for s in samples]
    for sample, wave in zip(samples, waves, strict=True):
        written, rate = soundfile.read(tmp_path / "a" / "eval" / sample["wav"], dtype="float32")
        assert rate == 16_000 and written.shape == wave.shape
        np.testing.assert_allclose(written, wave, atol=1 / 32768 + 1e-6)  # 16-bit wavs of the transcribed audio
    texts = transformers_transcripts(models, waves)
    assert [sample["transcript"] for sample in samples] == texts
    assert all(text.strip() for text in texts)
    expected = reference_nll(random_llama("llama3_tied"), models["llama_hf"], texts)
    np.testing.assert_allclose([sample["nll"] for sample in samples], expected, atol=1e-4, rtol=0)
    assert summary["genppl"] == pytest.approx(float(np.exp(np.mean(expected))), rel=1e-4)
    assert summary["num_scored"] == 3 and summary["num_empty_transcripts"] == 0

    rebatched = config_for(models, "genppl", asr_batch_size=1, lm_batch_size=2)
    rebatched.eval.batch_size = 1
    again = pair_metrics.run(rebatched, tmp_path / "b")["genppl"]
    redone = read_jsonl(tmp_path / "b" / "eval" / "genppl_samples.jsonl")
    for key in ("prompt_units", "units", "transcript"):
        assert [sample[key] for sample in redone] == [sample[key] for sample in samples], key
    np.testing.assert_allclose([s["nll"] for s in redone], [s["nll"] for s in samples], atol=1e-5, rtol=0)
    assert again["genppl"] == pytest.approx(summary["genppl"], rel=1e-5)


def test_auto_bleu_alone_needs_no_text_lm(models, tmp_path):
    results = pair_metrics.run(config_for(models, "auto_bleu", text_lm="", num_prompts=1), tmp_path)
    assert results["auto_bleu"]["num_samples"] == 1 and "genppl" not in results["auto_bleu"]
    assert "nll" not in read_jsonl(tmp_path / "eval" / "auto_bleu_samples.jsonl")[0]


def test_empty_transcripts_are_counted_and_left_out_of_genppl():
    settings = genppl.GenPplSettings()
    samples = [
        {"file_name": "a.wav", "transcript": " the cat the cat", "auto_bleu_2": 2 / 3, "nll": 1.0},
        {"file_name": "b.wav", "transcript": "", "auto_bleu_2": 0.0, "nll": None},
        {"file_name": "c.wav", "transcript": " a dog", "auto_bleu_2": 0.0, "nll": 2.0},
    ]
    summary = genppl.summarise(samples, [], settings, 0, "model", "data", 3.0)
    assert summary["genppl"] == pytest.approx(np.exp(1.5)) and summary["mean_nll"] == 1.5
    assert (summary["num_scored"], summary["num_unscored"], summary["num_empty_transcripts"]) == (2, 1, 1)
    assert summary["empty_transcripts"] == ["b.wav"] and summary["auto_bleu_2"] == pytest.approx(2 / 9)


def test_bad_input_is_one_clear_line(models, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.eval\.genppl\.asr_model=.*nowhere"):
        pair_metrics.run(config_for(models, asr_model=str(tmp_path / "nowhere")), tmp_path)
    with pytest.raises(ValueError, match="eval.genppl.text_lm is empty: genppl scores the transcripts"):
        pair_metrics.run(config_for(models, text_lm=""), tmp_path)
    with pytest.raises(
        DataError, match=r"no usable prompt file, e.g. .*0_correct.wav: \d.\d\d s: shorter than the 30.0 s prompt"
    ):
        pair_metrics.run(config_for(models, prompt_seconds=30.0), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a pair-benchmark folder .*prompt_files=all"):
        config = config_for(models)
        config.eval.data_path = str(models["bench"] / "0_correct.wav")
        pair_metrics.run(config, tmp_path)
    assert not (tmp_path / "eval").exists()  # refused before anything was generated
