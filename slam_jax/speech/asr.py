"""Speech recognition with Whisper in JAX: `load_asr(model_dir)` and `WhisperASR.transcribe`.

Transcripts are what transformers' ASR pipeline returns for audio of up to 30 s with
`generate_kwargs={"language": ..., "task": ...}`: the log-mel front end of `whisper_features.py`, then a greedy
search (no timestamps) from the prompt `<|startoftranscript|> <|language|> <|task|> <|notimestamps|>`, with the
generation config's `suppress_tokens` at every step and `begin_suppress_tokens` at the first, up to
`max_new_tokens` or `<|endoftext|>`, decoded by the checkpoint's tokenizer without special tokens.

A batch (features, encoder, the whole decode loop) is one jitted call: rows padded to a multiple of the local
devices and split over them, parameters replicated. Clips go longest first into batches, so rows that finish
together share a batch and the loop stops when all of a batch's rows have emitted `<|endoftext|>`. Every batch
has the same shape (`batch_size` rows rounded up to the devices, fewer when there are fewer clips), so one
compilation serves all.

The model folder is the one `python -m conversion.whisper_to_flax` writes: `whisper_config.json` + Orbax
`params/`, the tokenizer files, `generation_config.json` and `preprocessor_config.json` of the source; locally or
in a gs:// bucket (Orbax reads the weights there, the tokenizer is read from a local copy of its files).
"""

import dataclasses
import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel, paths
from slam_jax.models import weights, whisper
from slam_jax.paths import Path
from slam_jax.speech import tts, whisper_features
from slam_jax.speech.audio import SAMPLE_RATE

GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
)
# The feature extractor's settings the JAX front end implements (whisper_features.py).
FRONT_END = {
    "sampling_rate": SAMPLE_RATE,
    "n_fft": whisper_features.N_FFT,
    "hop_length": whisper_features.HOP_LENGTH,
    "chunk_length": whisper_features.CHUNK_SECONDS,
    "n_samples": whisper_features.NUM_SAMPLES,
    "dither": 0.0,
}
# Generation settings that would make transformers search differently from the greedy search here: their
# values that change nothing.
NEUTRAL_GENERATION = {"num_beams": 1, "do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


@dataclasses.dataclass(frozen=True)
class Prompting:
    """What a checkpoint's generation_config.json says about the decoder prompt and the greedy search."""

    decoder_start_token_id: int
    eos_token_id: int
    no_timestamps_token_id: int
    is_multilingual: bool
    lang_to_id: dict[str, int]
    task_to_id: dict[str, int]
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]

    def prompt(self, language: str, task: str) -> list[int]:
        """The decoder prompt transformers' Whisper `generate(language=..., task=...)` builds (no timestamps).

        An English-only model's prompt names no language or task; it takes only language "en" and task
        "transcribe" here.
        """
        if not self.is_multilingual:
            if language.lower() not in ("en", "english", "<|en|>") or task != "transcribe":
                raise ValueError(
                    f"language={language!r}, task={task!r}: this model is English-only (it transcribes English)"
                )
            return [self.decoder_start_token_id, self.no_timestamps_token_id]
        if task not in self.task_to_id:
            raise ValueError(f"task={task!r}: not one of {sorted(self.task_to_id)}")
        return [
            self.decoder_start_token_id,
            self.language_id(language),
            self.task_to_id[task],
            self.no_timestamps_token_id,
        ]

    def language_id(self, language: str) -> int:
        """The id of `language` ("en", "english" or "<|en|>"), looked up as transformers does."""
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        name = language.lower()
        if name in self.lang_to_id:
            token = name
        elif name in TO_LANGUAGE_CODE:
            token = f"<|{TO_LANGUAGE_CODE[name]}|>"
        elif name in TO_LANGUAGE_CODE.values():
            token = f"<|{name}|>"
        else:
            raise ValueError(f"language={language!r}: not a Whisper language (e.g. 'en', 'english')")
        if token not in self.lang_to_id:
            raise ValueError(f"language={language!r}: {token} is not in this model's lang_to_id")
        return self.lang_to_id[token]


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a one-line error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return values


def read_prompting(path: Path) -> Prompting:
    """The `Prompting` of a generation_config.json; refuses settings the greedy search here does not apply."""
    values = read_json(path)
    for key, neutral in NEUTRAL_GENERATION.items():
        if values.get(key, neutral) not in (neutral, None):
            raise ValueError(f"{path}: {key}={values[key]!r} is not supported (greedy search only: {neutral!r})")
    missing = [key for key in ("decoder_start_token_id", "eos_token_id", "no_timestamps_token_id") if key not in values]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    eos = values["eos_token_id"]
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    if not isinstance(eos, int):
        raise ValueError(f"{path}: eos_token_id={eos!r}: expected one token id")
    multilingual = bool(values.get("is_multilingual", "lang_to_id" in values))
    if multilingual and not ("lang_to_id" in values and "task_to_id" in values):
        raise ValueError(f"{path}: a multilingual model needs lang_to_id and task_to_id")
    return Prompting(
        decoder_start_token_id=int(values["decoder_start_token_id"]),
        eos_token_id=eos,
        no_timestamps_token_id=int(values["no_timestamps_token_id"]),
        is_multilingual=multilingual,
        lang_to_id={str(key): int(value) for key, value in values.get("lang_to_id", {}).items()},
        task_to_id={str(key): int(value) for key, value in values.get("task_to_id", {}).items()},
        suppress_tokens=tuple(int(token) for token in values.get("suppress_tokens") or ()),
        begin_suppress_tokens=tuple(int(token) for token in values.get("begin_suppress_tokens") or ()),
    )


def check_front_end(path: Path, num_mel_bins: int) -> None:
    """The feature extractor of preprocessor_config.json is the one `whisper_features.log_mel` computes."""
    values = read_json(path)
    expected = {**FRONT_END, "feature_size": num_mel_bins}
    for key, value in expected.items():
        if key in values and values[key] != value:
            raise ValueError(f"{path}: {key}={values[key]!r}: the JAX front end computes {key}={value!r}")


def load_tokenizer(model_dir: Path):
    """The checkpoint's tokenizer (transformers, from the folder only)."""
    import transformers

    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    with weights.local_side_files(model_dir) as folder:
        try:
            return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as error:
            message = " ".join(str(error).split()).replace(str(folder), str(model_dir))
            raise ValueError(f"{model_dir}: the tokenizer does not load ({message})") from None


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def greedy_ids(graphdef, state, waveforms, prompt, live, settings: whisper.GreedySettings):
    """Generated ids [rows, max_new_tokens] of 16 kHz `waveforms` [rows, 480000]: front end, encoder and the whole
    greedy loop in one program (`live` [rows]: False for padding rows, which start done)."""
    model = nnx.merge(graphdef, state)
    features = whisper_features.log_mel(waveforms, model.config.num_mel_bins)
    return whisper.greedy_decode(model, features, prompt, live, settings)


def check_waveform(index: int, wave, sample_rate: int) -> np.ndarray:
    """`wave` as 1-D float32 samples of at most 30 s, or a one-line ValueError naming its index."""
    samples = np.asarray(wave)
    if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"waves[{index}]: expected a 1-D float array of samples, got {samples.dtype} {samples.shape}")
    if samples.shape[0] > whisper_features.CHUNK_SECONDS * sample_rate:
        raise ValueError(
            f"waves[{index}]: {samples.shape[0] / sample_rate:.2f} s ({samples.shape[0]} samples at {sample_rate} Hz) "
            f"is longer than Whisper's {whisper_features.CHUNK_SECONDS} s window"
        )
    samples = samples.astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"waves[{index}]: holds NaN or infinite samples")
    return samples


class WhisperASR:
    """A converted Whisper with its tokenizer and generation config: waveforms -> transcripts."""

    def __init__(self, model: whisper.Whisper, tokenizer, prompting: Prompting):
        self.config, self.tokenizer, self.prompting = model.config, tokenizer, prompting
        self.mesh = parallel.local_mesh()
        graphdef, state = nnx.split(model)
        self._graphdef = graphdef
        self._state = jax.device_put(whisper.inference_state(state, model.config), parallel.replicated(self.mesh))

    def transcribe(
        self,
        waves: Sequence[np.ndarray],
        sample_rate: int,
        batch_size: int = 16,
        max_new_tokens: int = 128,
        language: str = "en",
        task: str = "transcribe",
    ) -> list[str]:
        """The transcript of every waveform (mono, at `sample_rate`, at most 30 s; "" for an empty one)."""
        ids = self.transcribe_ids(waves, sample_rate, batch_size, max_new_tokens, language, task)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    def transcribe_ids(
        self,
        waves: Sequence[np.ndarray],
        sample_rate: int,
        batch_size: int = 16,
        max_new_tokens: int = 128,
        language: str = "en",
        task: str = "transcribe",
    ) -> list[list[int]]:
        """The ids each waveform's greedy search generates after the prompt, without the final <|endoftext|>."""
        prompt = self.prompting.prompt(language, task)
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: both must be >= 1")
        if len(prompt) + max_new_tokens > self.config.max_target_positions:
            raise ValueError(
                f"max_new_tokens={max_new_tokens}: with the {len(prompt)}-token prompt it exceeds the decoder's "
                f"{self.config.max_target_positions} positions"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise ValueError(f"sample_rate={sample_rate!r}: expected a positive integer (Hz)")
        samples = [check_waveform(index, wave, int(sample_rate)) for index, wave in enumerate(waves)]
        samples = [tts.to_sample_rate(wave, int(sample_rate)) for wave in samples]
        results: list[list[int]] = [[] for _ in samples]
        order = sorted((index for index, wave in enumerate(samples) if wave.size), key=lambda i: -samples[i].size)
        if not order:
            return results
        devices = parallel.data_parallel_size(self.mesh)
        rows = -(-min(batch_size, len(order)) // devices) * devices
        settings = whisper.GreedySettings(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.prompting.eos_token_id,
            suppress_tokens=self.prompting.suppress_tokens,
            begin_suppress_tokens=self.prompting.begin_suppress_tokens,
        )
        for start in range(0, len(order), rows):
            chosen = order[start : start + rows]
            new_ids = self._batch_ids([samples[index] for index in chosen], rows, prompt, settings)
            for index, row in zip(chosen, new_ids, strict=False):
                ends = np.flatnonzero(row == settings.eos_token_id)
                results[index] = row[: ends[0] if ends.size else row.size].tolist()
        return results

    def _batch_ids(self, waves: list[np.ndarray], rows: int, prompt: list[int], settings) -> np.ndarray:
        """Generated ids [rows, max_new_tokens] of one batch; rows past `waves` are padding."""
        batch = np.zeros((rows, whisper_features.NUM_SAMPLES), np.float32)
        for row, wave in enumerate(waves):
            batch[row] = whisper_features.pad_or_trim(wave)
        live = np.arange(rows) < len(waves)
        result = greedy_ids(
            self._graphdef,
            self._state,
            jax.device_put(batch, parallel.batch_sharding(self.mesh)),
            jnp.asarray(prompt, jnp.int32),
            jax.device_put(live, parallel.batch_sharding(self.mesh, trailing_axes=0)),
            settings,
        )
        return np.asarray(result)


def load_asr(model_dir: str | Path, compute_dtype: str | None = None) -> WhisperASR:
    """The Whisper model folder `model_dir` (from conversion.whisper_to_flax) ready to transcribe, its matmuls in
    `compute_dtype` ("float32" or "bfloat16"; default: the saved config's)."""
    model_dir = paths.absolute(model_dir)
    if not model_dir.is_dir():
        paths.check_bucket(model_dir)
        raise FileNotFoundError(f"{model_dir}: no such Whisper model folder (conversion.whisper_to_flax writes one)")
    config = weights.load_config(whisper.FAMILY, model_dir)
    if config.num_mel_frames != whisper_features.NUM_FRAMES:
        raise ValueError(
            f"{model_dir / whisper.CONFIG_FILE}: max_source_positions={config.max_source_positions}: the encoder "
            f"must read {whisper_features.NUM_FRAMES} mel frames (30 s), i.e. 1500 positions"
        )
    check_front_end(model_dir / PREPROCESSOR_CONFIG, config.num_mel_bins)
    prompting = read_prompting(model_dir / GENERATION_CONFIG)
    tokenizer = load_tokenizer(model_dir)
    overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    return WhisperASR(whisper.load_whisper(model_dir, **overrides), tokenizer, prompting)
