"""Whisper's reference transcription (`protocol="reference"`, slam_jax/speech/asr.py) against transformers on a tiny
random Whisper whose vocabulary has timestamp tokens (it emits them often, two in a row too): the seek loop's ids
and texts against `generate`, the detected languages against `detect_language`, beam search against
`generate(num_beams=k)` for k = 2 and (from a generation config) 3, the texts of the latter against the ASR
pipeline itself, and the pipeline's defaults as the installed transformers sets them. Four programs are compiled
(greedy, 2 beams twice, 3 beams); the clips fill one batch of 8 rows."""

import json
import shutil
import types

import numpy as np
import pytest
import soxr
import torch
import transformers
import whisper_fixtures
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

from conversion import whisper_to_flax
from slam_jax.speech import asr

LANGUAGES = ("en", "fr", "de", "es", "it", "nl")
TIMESTAMPS = 100  # <|0.00|> ... <|1.98|>: a seek moves at most 2 s
MAX_NEW_TOKENS = 24
MAX_LENGTH = 24  # the generation config's: the first pass gets 24 new tokens, the next 28, then 32...
EOS_SCALE = 8.0  # a longer EOS embedding row: some passes end early (at different lengths), others at the cap


def tokenizer() -> transformers.WhisperTokenizer:
    """Bytes, <|endoftext|>, Whisper's special tokens with six languages, then timestamp tokens (added, not special,
    as in the released tokenizers)."""
    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    specials = ["<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>", "<|transcribe|>"]
    specials += ["<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    made = transformers.WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=specials)
    made.add_tokens([f"<|{index * 0.02:.2f}|>" for index in range(TIMESTAMPS)])
    made.pad_token = "<|endoftext|>"  # the released tokenizers' (the pipeline batches with it)
    return made


def generation_config(made, **settings) -> transformers.GenerationConfig:
    ids = made.convert_tokens_to_ids
    eos = ids("<|endoftext|>")
    return transformers.GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        no_timestamps_token_id=ids("<|notimestamps|>"),
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={task: ids(f"<|{task}|>") for task in ("transcribe", "translate")},
        forced_decoder_ids=[[1, None], [2, ids("<|transcribe|>")]],  # as openai/whisper-large-v3's
        suppress_tokens=list(range(0, 256, 3)),
        begin_suppress_tokens=[whisper_fixtures.BLANK_ID, eos],
        **settings,
    )


def with_generation_config(source, target, config: transformers.GenerationConfig):
    """A copy of the converted folder `source` whose generation_config.json is `config`."""
    shutil.copytree(source, target)
    (target / asr.GENERATION_CONFIG).write_text(json.dumps(config.to_diff_dict()))
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The HF model (generation config: max_length 24, no num_beams), its converted folder and transcriber, and
    the clips (espeak speech at 16 kHz and a noise clip) with their features."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded 2-core machine two torch threads ran beam search 70x slower
    folder = tmp_path_factory.mktemp("whisper_decoding")
    made = tokenizer()
    model = transformers.WhisperForConditionalGeneration(whisper_fixtures.whisper_config(made)).eval()
    whisper_fixtures.randomise(model, 0, scale=0.3)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[made.convert_tokens_to_ids("<|endoftext|>")] *= EOS_SCALE
    config = generation_config(made, max_length=MAX_LENGTH)
    whisper_fixtures.save_checkpoint(folder / "hf", model, made, config)
    assert whisper_to_flax.main(["--model", str(folder / "hf"), "--out", str(folder / "flax")]) == 0
    texts = [*SENTENCES, " ".join(SENTENCES[:2])]
    waves = [soxr.resample(synthesize(text) / 32768, ESPEAK_RATE, 16_000, quality="HQ") for text in texts]
    waves = [wave.astype(np.float32) for wave in waves]
    waves.append((0.05 * np.random.default_rng(0).standard_normal(40_000)).astype(np.float32))
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    features = extractor(waves, sampling_rate=16_000, return_tensors="pt").input_features
    yield types.SimpleNamespace(
        hf=model,
        tokenizer=made,
        extractor=extractor,
        folder=folder,
        asr=asr.load_asr(folder / "flax"),
        waves=waves,
        features=features,
        eos=config.eos_token_id,
        timestamp_begin=config.no_timestamps_token_id + 1,
    )
    torch.set_num_threads(threads)


def generate(tiny, **kwargs) -> tuple[list[list[int]], list[list[dict]]]:
    """transformers' ids of the clips (padding removed) and their segments."""
    with torch.no_grad():
        out = tiny.hf.generate(tiny.features, return_segments=True, **kwargs)
    return [[token for token in row if token != tiny.eos] for row in out["sequences"].tolist()], out["segments"]


def passes(segments: list[dict]) -> int:
    """How many calls of the seek loop made a clip's segments (each call's segments share its output)."""
    return len({id(segment["result"]) for segment in segments})


def check_ended_differently(tiny, segments: list[list[dict]], different_lengths: bool) -> None:
    """Some clips' last pass ended with EOS (at different lengths), others at the token cap."""
    last = [clip[-1]["result"][4:] for clip in segments]
    ended = [tiny.eos in row.tolist() for row in last]
    lengths = {int((row != tiny.eos).sum()) for row, stop in zip(last, ended, strict=True) if stop}
    assert any(ended) and not all(ended), ended
    assert len(lengths) > 1 or not different_lengths, lengths


@pytest.fixture(scope="module")
def greedy(tiny):
    """The reference protocol, greedy: (ids, languages); the language detected, the tokens capped by the
    generation config's max_length (growing by the prompt each pass)."""
    options = dict(protocol="reference", language="auto", task=None, num_beams=1, max_new_tokens=None)
    return tiny.asr.decode(tiny.waves, 16_000, tiny.asr.decoding(**options))


def test_timestamp_pairs_cut_the_pass_and_decode_again_as_generate_does(tiny, greedy):
    ids, _ = greedy
    expected, segments = generate(tiny)  # the config sets no num_beams: generate searches greedily
    assert ids == expected
    counts = [passes(clip) for clip in segments]
    assert sum(count > 1 for count in counts) >= 2 and max(counts) >= 3, counts
    assert any(len(clip) > passes(clip) for clip in segments)  # a pass with several pairs: several segments
    check_ended_differently(tiny, segments, different_lengths=False)
    for row in ids:
        output = {"tokens": torch.as_tensor([row])}
        text, _ = tiny.tokenizer._decode_asr(
            [output], return_timestamps=None, return_language=None, time_precision=0.02
        )
        assert tiny.asr.text(row) == text


def test_the_language_is_detected_as_transformers_detects_it(tiny, greedy):
    _, languages = greedy
    with torch.no_grad():
        expected = tiny.hf.detect_language(tiny.features).tolist()
    assert languages == expected
    assert len(set(expected)) >= 3, expected


@pytest.mark.parametrize("search", [{}, {"early_stopping": True, "length_penalty": 2.0}])
def test_beam_search_equals_generate_with_num_beams(tiny, tmp_path, search):
    """2 beams, 24 new tokens; Whisper's defaults (length penalty 1, no early stopping) or, from the generation
    config, early stopping with a length penalty of 2 (it changes a transcript here)."""
    transcriber = tiny.asr
    if search:
        config = generation_config(tiny.tokenizer, max_length=MAX_LENGTH, **search)
        transcriber = asr.load_asr(with_generation_config(tiny.folder / "flax", tmp_path / "flax", config))
    ids = transcriber.transcribe_ids(
        tiny.waves, 16_000, max_new_tokens=MAX_NEW_TOKENS, language="auto", task=None, num_beams=2, protocol="reference"
    )
    expected, segments = generate(tiny, num_beams=2, max_new_tokens=MAX_NEW_TOKENS, **search)
    assert ids == expected
    assert max(passes(clip) for clip in segments) >= 2
    check_ended_differently(tiny, segments, different_lengths=False)
    if search:
        assert ids != generate(tiny, num_beams=2, max_new_tokens=MAX_NEW_TOKENS)[0]


def test_a_generation_config_with_beams_and_a_cap_is_honoured_as_generate_and_the_pipeline_do(tiny, tmp_path):
    """3 beams and 24 new tokens from the generation config: the ids of `generate(num_beams=3, max_new_tokens=24)`
    and the texts of the ASR pipeline called with no generation settings (as slamkit calls it), which takes them
    from the model's generation config."""
    config = generation_config(tiny.tokenizer, num_beams=3, max_new_tokens=MAX_NEW_TOKENS)
    transcriber = asr.load_asr(with_generation_config(tiny.folder / "flax", tmp_path / "flax", config))
    decoding = transcriber.decoding("reference", "auto", None, None, None)
    assert (decoding.num_beams, decoding.max_new_tokens, decoding.max_length) == (3, MAX_NEW_TOKENS, None)
    assert decoding.prompt == (257, -1, 265, 269) and decoding.language_slot == 1
    ids, _ = transcriber.decode(tiny.waves, 16_000, decoding)
    expected, segments = generate(tiny, num_beams=3, max_new_tokens=MAX_NEW_TOKENS)
    assert ids == expected
    assert max(passes(clip) for clip in segments) >= 2
    check_ended_differently(tiny, segments, different_lengths=True)
    tiny.hf.generation_config = config
    try:
        pipeline = transformers.pipeline(
            "automatic-speech-recognition", model=tiny.hf, tokenizer=tiny.tokenizer, feature_extractor=tiny.extractor
        )
        texts = [output["text"] for output in pipeline(tiny.waves, batch_size=len(tiny.waves))]
    finally:
        tiny.hf.generation_config = generation_config(tiny.tokenizer, max_length=MAX_LENGTH)
    assert [transcriber.text(row) for row in ids] == texts


def test_without_settings_the_pipeline_defaults_apply(tiny, tmp_path):
    """transformers' ASR pipeline adds num_beams=5 and max_new_tokens=256 where the generation config sets
    neither (no max_new_tokens where it sets max_length)."""
    defaults = transformers.AutomaticSpeechRecognitionPipeline._default_generation_config
    assert (defaults.num_beams, defaults.max_new_tokens) == (asr.PIPELINE_NUM_BEAMS, asr.PIPELINE_MAX_NEW_TOKENS)
    decoding = tiny.asr.decoding("reference", "auto", None, None, None)  # the config: max_length 24
    assert (decoding.num_beams, decoding.max_new_tokens, decoding.max_length) == (5, None, MAX_LENGTH)
    assert [decoding.limit(number, 448) for number in (1, 2, 3)] == [24, 28, 32]
    bare = asr.load_asr(
        with_generation_config(tiny.folder / "flax", tmp_path / "flax", generation_config(tiny.tokenizer))
    )
    decoding = bare.decoding("reference", "auto", None, None, None)
    assert (decoding.num_beams, decoding.max_new_tokens, decoding.max_length) == (5, 256, None)
    assert bare.decoding(language="fr", task=None).prompt == (257, 259, 265, 269)  # a named language: transcribe


@pytest.mark.parametrize(
    "ids",
    [
        [40, 41, 42],  # no timestamp: the whole window
        [270, 40, 41, 280, 281, 42, 43],  # a pair: cut after it, seek to its first token's time
        [270, 40, 280, 281, 41, 290, 291, 42],  # two pairs: cut after the last
        [270, 40, 280, 281, 41, 290],  # a lone timestamp at the end: all of it, the whole window
        [40, 41, 275],  # a lone timestamp, no pair
        [40, 280, 281],  # ends on a pair
        [270],
        [],
    ],
)
def test_segments_are_cut_as_transformers_cuts_them(ids):
    kept, offset = asr.retrieve_segments(ids, 270, 2600)
    segments, expected_offset = WhisperGenerationMixin._retrieve_segment(
        seek_sequence=torch.as_tensor(ids, dtype=torch.long),
        seek_outputs=[None],
        time_offset=torch.zeros(1, dtype=torch.float64),
        timestamp_begin=270,
        seek_num_frames=torch.as_tensor([2600]),
        time_precision=0.02,
        time_precision_features=0.01,
        input_stride=2,
        prev_idx=0,
        idx=0,
        return_token_timestamps=False,
        decoder_input_ids=torch.zeros((1, 4), dtype=torch.long),
    )
    assert kept == [token for segment in segments for token in segment["tokens"].tolist()]
    assert offset == int(expected_offset)


def test_bad_settings_are_one_line_naming_them(tiny):
    for call, fragment in [
        (lambda: tiny.asr.decoding(protocol="greedy"), "protocol='greedy': not one of"),
        (lambda: tiny.asr.decoding(num_beams=-1), "num_beams=-1: expected a positive integer"),
        (lambda: tiny.asr.decoding(language="auto", task=None, max_new_tokens=445), "max_new_tokens=445: with the 4"),
        (lambda: tiny.asr.prompting.prompt("auto", None), "language='auto': the prompt of a detected language"),
    ]:
        with pytest.raises(ValueError) as error:
            call()
        assert fragment in str(error.value) and "\n" not in str(error.value)
