"""Speech recognition with Whisper in JAX: `load_asr(model_dir)` and `WhisperASR.transcribe`.

Two protocols (`protocol=`), both equal to transformers (5.x) token for token:

- "single_pass" (the default, fast): what `model.generate(features, language=..., task=..., num_beams=...,
  max_new_tokens=...)` returns when the ids hold no two timestamp tokens in a row: one search from the prompt
  `<|startoftranscript|> <|language|> <|task|> <|notimestamps|>` up to the token cap or `<|endoftext|>`; greedy
  (language "en", task "transcribe", 128 tokens) unless told otherwise. Timestamp tokens, if the model emits them,
  are decoded straight on.
- "reference": what transformers' ASR `pipeline` returns for clips of up to 30 s with no generation settings (as
  slamkit calls it): the language detected per clip (`language="auto"`: `detect_language`), the task and the
  prompt from the generation config's `forced_decoder_ids` (`task=None`), beam search with the generation
  config's `num_beams`, else the pipeline's 5, and its token cap (`max_new_tokens`, else `max_length`, else the
  pipeline's 256 new tokens); and Whisper's seek loop: where a pass emits two timestamp tokens in a row,
  `generate` keeps the ids up to the last such pair and decodes again from the time of its first token, on the
  log-mel window cut there (zeros after its end), with the same prompt (`_retrieve_segment`,
  `_get_input_segment`); the clip's ids are all its passes' ids.

Both apply the generation config's `suppress_tokens` at every step and `begin_suppress_tokens` at the first; the
text is the pipeline's (`_decode_asr`: special and timestamp tokens dropped).

A batch (features, encoder, the language detection, the whole decode loop) is one jitted call: rows padded to a
multiple of the local devices and split over them, parameters replicated, each device running its own rows
(`shard_map`: rows never interact). Clips go longest first into batches, so rows that finish together share a
batch and a device's loop stops when its rows are done. Every batch has the same shape (`batch_size` rows
rounded up to the devices, fewer when there are fewer clips), so one compilation serves all, later passes of the
seek loop included (the passes are further batches, of the clips that need them).

The model folder is the one `python -m conversion.whisper_to_flax` writes: `whisper_config.json` + Orbax
`params/`, the tokenizer files, `generation_config.json` and `preprocessor_config.json` of the source; locally or
in a gs:// bucket (Orbax reads the weights there, the tokenizer is read from a local copy of its files).
"""

import dataclasses
import functools
import json
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from slam_jax import parallel, paths
from slam_jax.models import weights, whisper, whisper_search
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
# Generation settings that would make transformers search differently from the searches here: their values that
# change nothing (a missing key or null counts as neutral).
NEUTRAL_GENERATION = {
    "do_sample": False,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "num_return_sequences": 1,
    "return_timestamps": False,  # the pipeline would ask for timestamps (another logits processor)
    "condition_on_prev_tokens": False,  # the seek loop would prompt with the previous passes' ids
    "logprob_threshold": None,  # these three: the temperature fallback of the seek loop
    "compression_ratio_threshold": None,
    "no_speech_threshold": None,
}
PROTOCOLS = ("single_pass", "reference")
AUTO = "auto"  # language: detect it per clip
# What transformers' ASR pipeline adds to a Whisper's generate call when neither the caller nor the model's
# generation config sets them (transformers 5.x, pipelines/automatic_speech_recognition.py,
# `AutomaticSpeechRecognitionPipeline._default_generation_config = GenerationConfig(max_new_tokens=256,
# num_beams=5)`; pipelines/base.py `Pipeline._prepare_generate_kwargs` adds a default only for the keys that
# `_get_set_generation_params` (the model's generation_config.to_diff_dict() and the call's kwargs) lacks, and no
# max_new_tokens where max_length is set, e.g. Whisper's max_length 448).
PIPELINE_NUM_BEAMS = 5
PIPELINE_MAX_NEW_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Prompting:
    """What a checkpoint's generation_config.json says about the decoder prompt and the search (None: not set)."""

    decoder_start_token_id: int
    eos_token_id: int
    no_timestamps_token_id: int
    is_multilingual: bool
    lang_to_id: dict[str, int]
    task_to_id: dict[str, int]
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    forced_decoder_ids: tuple[tuple[int, int | None], ...] = ()
    num_beams: int | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    @property
    def timestamp_begin(self) -> int:
        """The first timestamp token (<|0.00|>): every id from it on is a timestamp."""
        return self.no_timestamps_token_id + 1

    def prompt(self, language: str, task: str | None) -> list[int]:
        """The decoder prompt transformers' Whisper `generate(language=..., task=...)` builds (no timestamps) for a
        named language (see `init_tokens`)."""
        tokens, slot = self.init_tokens(language, task)
        if slot is not None:
            raise ValueError(f"language={language!r}: the prompt of a detected language depends on the clip")
        return tokens

    def init_tokens(self, language: str, task: str | None) -> tuple[list[int], int | None]:
        """(prompt, slot): transformers' `WhisperGenerationMixin._retrieve_init_tokens` (no timestamps). With
        `language="auto"` the language is detected per clip where the prompt needs one: the prompt then holds -1 at
        `slot`. With `task=None` and `language="auto"`, the generation config's `forced_decoder_ids` (typically
        `[[1, null], [2, <|transcribe|>]]`) give the prompt after `<|startoftranscript|>`, as for the ASR pipeline.

        An English-only model's prompt names no language or task; it takes only language "auto" or "en" and task
        None or "transcribe" here.
        """
        detect = language.lower() == AUTO
        if not self.is_multilingual:
            if not (detect or language.lower() in ("en", "english", "<|en|>")) or task not in (None, "transcribe"):
                raise ValueError(
                    f"language={language!r}, task={task!r}: this model is English-only (it transcribes English)"
                )
            detect, language, task = False, AUTO, None
        named = None if language.lower() == AUTO else language
        tokens: list[int | None] = [self.decoder_start_token_id]
        forced = list(self.forced_decoder_ids)
        if named is None and task is None and forced and forced[0][0] == 1:
            while forced and forced[0][0] == len(tokens):
                tokens.append(forced.pop(0)[1])
            if forced:
                raise ValueError(f"forced_decoder_ids={self.forced_decoder_ids!r}: not Whisper's prompt pattern")
        if named is not None:
            language_id = self.language_id(named)
        elif detect and self.lang_to_id and (len(tokens) <= 1 or tokens[1] is None):
            language_id = -1
        else:
            language_id = None
        if language_id is not None:
            if len(tokens) > 1:
                tokens[1] = language_id
            else:
                tokens.append(language_id)
        if task is not None:
            if task not in self.task_to_id:
                raise ValueError(f"task={task!r}: not one of {sorted(self.task_to_id)}")
            tokens.append(self.task_to_id[task])
        elif named is not None and self.task_to_id and not set(tokens) & set(self.task_to_id.values()):
            tokens.append(self.task_to_id["transcribe"])
        if tokens[-1] != self.no_timestamps_token_id:
            tokens.append(self.no_timestamps_token_id)
        prompt = [token for token in tokens if token is not None]
        return prompt, (prompt.index(-1) if -1 in prompt else None)

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
            raise ValueError(f"language={language!r}: not a Whisper language (e.g. 'en', 'english', or 'auto')")
        if token not in self.lang_to_id:
            raise ValueError(f"language={language!r}: {token} is not in this model's lang_to_id")
        return self.lang_to_id[token]


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How clips are transcribed (`WhisperASR.decoding` resolves it); the settings the GenPPL summary records."""

    protocol: str  # "single_pass" | "reference" (see the module docstring)
    language: str  # a language, or "auto": detected per clip
    task: str | None  # None: the generation config's forced_decoder_ids
    num_beams: int  # 1: greedy search
    max_new_tokens: int | None  # new tokens per pass at most; None: `max_length` counts
    max_length: int | None  # transformers' max_length: prompt + new tokens of the first pass (see `limits`)
    length_penalty: float
    early_stopping: bool | str
    prompt: tuple[int, ...]  # -1 at `language_slot` when the language is detected
    language_slot: int | None

    def limit(self, pass_number: int, max_target_positions: int) -> int:
        """New tokens at most in the `pass_number`-th pass (1, 2, ...) of a clip.

        With `max_length`, transformers' `_set_max_new_tokens_and_length` raises the generation config's max_length
        by the prompt's length (at most max_target_positions // 2 - 1) before every pass, up to the decoder's
        positions: the cap grows by that much per pass of the seek loop.
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        grown = min(len(self.prompt), max_target_positions // 2 - 1) * pass_number
        return min(self.max_length + grown, max_target_positions) - len(self.prompt)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {key: values[key] for key in values if key not in ("prompt", "language_slot")}


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
    """The `Prompting` of a generation_config.json; refuses settings the searches here do not apply."""
    values = read_json(path)
    for key, neutral in NEUTRAL_GENERATION.items():
        if values.get(key, neutral) not in (neutral, None):
            raise ValueError(f"{path}: {key}={values[key]!r} is not supported (only {neutral!r})")
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
    counts = {}
    for key in ("num_beams", "max_new_tokens", "max_length"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{path}: {key}={value!r}: expected a positive integer")
        counts[key] = value
    early_stopping = values.get("early_stopping")
    if early_stopping not in (None, *whisper_search.EARLY_STOPPING):
        raise ValueError(f'{path}: early_stopping={early_stopping!r}: expected true, false or "never"')
    length_penalty = values.get("length_penalty")
    if length_penalty is not None and (
        isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float))
    ):
        raise ValueError(f"{path}: length_penalty={length_penalty!r}: expected a number")
    forced = values.get("forced_decoder_ids") or ()
    try:
        forced = tuple((int(rank), None if token is None else int(token)) for rank, token in forced)
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: forced_decoder_ids={values['forced_decoder_ids']!r}: expected [rank, id] pairs"
        ) from None
    return Prompting(
        decoder_start_token_id=int(values["decoder_start_token_id"]),
        eos_token_id=eos,
        no_timestamps_token_id=int(values["no_timestamps_token_id"]),
        is_multilingual=multilingual,
        lang_to_id={str(key): int(value) for key, value in values.get("lang_to_id", {}).items()},
        task_to_id={str(key): int(value) for key, value in values.get("task_to_id", {}).items()},
        suppress_tokens=tuple(int(token) for token in values.get("suppress_tokens") or ()),
        begin_suppress_tokens=tuple(int(token) for token in values.get("begin_suppress_tokens") or ()),
        forced_decoder_ids=forced,
        **counts,
        length_penalty=1.0 if length_penalty is None else float(length_penalty),
        early_stopping=False if early_stopping is None else early_stopping,
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


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "mesh"))
def greedy_ids(graphdef, state, waveforms, prompt, live, settings: whisper.GreedySettings, mesh=None):
    """Generated ids [rows, max_new_tokens] of 16 kHz `waveforms` [rows, 480000]: front end, encoder and the whole
    greedy loop in one program (`live` [rows]: False for padding rows, which start done). With a `mesh`, each
    device runs its own rows (`shard_map`, as `search_ids`)."""

    def per_device(state, waveforms, prompt, live):
        model = nnx.merge(graphdef, state)
        features = whisper_features.log_mel(waveforms, model.config.num_mel_bins)
        return whisper.greedy_decode(model, features, prompt, live, settings)

    if mesh is None:
        return per_device(state, waveforms, prompt, live)
    rows = PartitionSpec(parallel.BATCH_AXES)
    prompts = jnp.broadcast_to(prompt, (waveforms.shape[0], prompt.shape[-1]))  # per row, like the rows' own data
    return jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), rows, rows, rows), out_specs=rows)(
        state, waveforms, prompts, live
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "mesh"))
def search_ids(graphdef, state, waveforms, seek, prompt, detect, live, limit, settings, mesh):
    """One pass of the seek loop for 16 kHz `waveforms` [rows, 480000] in one program: the front end, the window
    from mel frame `seek` [rows] on, the encoder, the language detection (rows where `detect`), the search.
    Returns (ids [rows, max_new_tokens], the prompts [rows, prompt_length] used).

    Each device runs its own rows (`shard_map`): rows never interact, so nothing crosses devices (XLA would
    otherwise gather every row's scores to each device for the beams' top-k) and each device's loop ends when its
    own rows are done."""

    def per_device(state, waveforms, seek, prompt, detect, live, limit):
        model = nnx.merge(graphdef, state)
        features = whisper_features.log_mel(waveforms, model.config.num_mel_bins)
        features = whisper_search.shift_features(features, seek)
        return whisper_search.search(model, features, prompt, detect, live, limit, settings)

    rows = PartitionSpec(parallel.BATCH_AXES)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), *[rows] * 6), out_specs=(rows, rows))(
        state, waveforms, seek, prompt, detect, live, limit
    )


def pass_ids(row: np.ndarray, eos_token_id: int) -> list[int]:
    """A pass's ids without the EOS (and the padding) after its end."""
    ends = np.flatnonzero(row == eos_token_id)
    return row[: ends[0] if ends.size else row.size].tolist()


def retrieve_segments(ids: list[int], timestamp_begin: int, frames_left: int) -> tuple[list[int], int]:
    """(the ids a pass keeps, mel frames to seek on) as transformers' `WhisperGenerationMixin._retrieve_segment`:
    with two timestamp tokens in a row somewhere and the ids not ending on a lone timestamp, the ids up to the last
    such pair, and the seek to the time of its first token; otherwise all ids and the rest of the window."""
    is_timestamp = [token >= timestamp_begin for token in ids]
    pairs = [index + 1 for index in range(len(ids) - 1) if is_timestamp[index] and is_timestamp[index + 1]]
    if not pairs or is_timestamp[-2:] == [False, True]:
        return ids, frames_left
    end = pairs[-1] + 1
    return ids[:end], (ids[end - 2] - timestamp_begin) * math.prod(whisper.CONV_STRIDES)


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

    def decoding(
        self,
        protocol: str = "single_pass",
        language: str = "en",
        task: str | None = "transcribe",
        num_beams: int | None = 1,
        max_new_tokens: int | None = 128,
    ) -> Decoding:
        """The search `transcribe` runs, resolved against the generation config. `language`: a language or "auto"
        (detected per clip); `task`: None takes the generation config's forced_decoder_ids; `num_beams` None (or
        0): the generation config's, else the ASR pipeline's 5; `max_new_tokens` None (or 0): the generation
        config's max_new_tokens, else its max_length (which grows with each pass, see `Decoding.limit`), else the
        pipeline's 256. The reference's transcription is `decoding("reference", "auto", None, None, None)`."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}: not one of {PROTOCOLS}")
        prompt, slot = self.prompting.init_tokens(language, task)
        if num_beams is None or num_beams == 0:
            num_beams = self.prompting.num_beams if self.prompting.num_beams is not None else PIPELINE_NUM_BEAMS
        max_length = None
        if max_new_tokens is None or max_new_tokens == 0:
            max_new_tokens = None
            if self.prompting.max_new_tokens is not None:
                max_new_tokens = self.prompting.max_new_tokens
            elif self.prompting.max_length is not None:
                max_length = self.prompting.max_length
            else:
                max_new_tokens = PIPELINE_MAX_NEW_TOKENS
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams={num_beams!r}: expected a positive integer")
        positions = self.config.max_target_positions
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        if max_new_tokens is not None and len(prompt) + max_new_tokens > positions:
            raise ValueError(
                f"max_new_tokens={max_new_tokens}: with the {len(prompt)}-token prompt it exceeds the decoder's "
                f"{positions} positions"
            )
        decoding = Decoding(
            protocol=protocol,
            language=language,
            task=task,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            length_penalty=self.prompting.length_penalty,
            early_stopping=self.prompting.early_stopping,
            prompt=tuple(prompt),
            language_slot=slot,
        )
        if decoding.limit(1, positions) < 1:
            raise ValueError(
                f"generation config max_length={max_length}: leaves no new token after the {len(prompt)}-token prompt"
            )
        return decoding

    def transcribe(
        self,
        waves: Sequence[np.ndarray],
        sample_rate: int,
        batch_size: int = 16,
        max_new_tokens: int | None = 128,
        language: str = "en",
        task: str | None = "transcribe",
        num_beams: int | None = 1,
        protocol: str = "single_pass",
        decoding: Decoding | None = None,
    ) -> list[str]:
        """The transcript of every waveform (mono, at `sample_rate`, at most 30 s; "" for an empty one), as the ASR
        pipeline makes the text of the ids (`transcribe_ids`; the settings: `decoding`, whose result `decoding=`
        takes in place of the five settings)."""
        ids = self.transcribe_ids(
            waves, sample_rate, batch_size, max_new_tokens, language, task, num_beams, protocol, decoding
        )
        return [self.text(row) for row in ids]

    def text(self, ids: list[int]) -> str:
        """The ASR pipeline's text of generated ids (its `postprocess`: `_decode_asr` drops special and timestamp
        tokens and decodes the rest, piece by piece between timestamps)."""
        output = {"tokens": np.asarray([ids], np.int64)}
        text, _ = self.tokenizer._decode_asr(
            [output], return_timestamps=None, return_language=None, time_precision=0.02
        )
        return text

    def transcribe_ids(
        self,
        waves: Sequence[np.ndarray],
        sample_rate: int,
        batch_size: int = 16,
        max_new_tokens: int | None = 128,
        language: str = "en",
        task: str | None = "transcribe",
        num_beams: int | None = 1,
        protocol: str = "single_pass",
        decoding: Decoding | None = None,
    ) -> list[list[int]]:
        """The ids each waveform's search generates after the prompt (all passes' with protocol "reference"),
        without <|endoftext|>; what transformers' `generate` returns for the clip without its padding."""
        if decoding is None:
            decoding = self.decoding(protocol, language, task, num_beams, max_new_tokens)
        return self.decode(waves, sample_rate, decoding, batch_size)[0]

    def decode(
        self, waves: Sequence[np.ndarray], sample_rate: int, decoding: Decoding, batch_size: int = 16
    ) -> tuple[list[list[int]], list[int | None]]:
        """(each waveform's ids as `transcribe_ids`, its language token: detected, or None where the prompt has
        none to detect)."""
        samples, order, rows = self._prepare(waves, sample_rate, batch_size)
        results: list[list[int]] = [[] for _ in samples]
        languages: list[int | None] = [None] * len(samples)
        if not order:
            return results, languages
        prompting, positions = self.prompting, self.config.max_target_positions
        fast = decoding.protocol == "single_pass" and decoding.num_beams == 1 and decoding.language_slot is None
        if fast:  # one greedy pass from one prompt: the lean program
            settings = whisper.GreedySettings(
                max_new_tokens=decoding.limit(1, positions),
                eos_token_id=prompting.eos_token_id,
                suppress_tokens=prompting.suppress_tokens,
                begin_suppress_tokens=prompting.begin_suppress_tokens,
            )
            for start in range(0, len(order), rows):
                chosen = order[start : start + rows]
                new_ids = self._batch_ids([samples[index] for index in chosen], rows, list(decoding.prompt), settings)
                for index, row in zip(chosen, new_ids, strict=False):
                    results[index] = pass_ids(row, settings.eos_token_id)
            return results, languages
        slot = decoding.language_slot
        single = decoding.protocol == "single_pass"
        settings = whisper_search.SearchSettings(
            # the longest pass: the first one's cap, or the decoder's positions when max_length grows per pass
            max_new_tokens=decoding.limit(1, positions) if single else decoding.limit(positions, positions),
            eos_token_id=prompting.eos_token_id,
            suppress_tokens=prompting.suppress_tokens,
            begin_suppress_tokens=prompting.begin_suppress_tokens,
            num_beams=decoding.num_beams,
            length_penalty=decoding.length_penalty,
            early_stopping=decoding.early_stopping,
            decoder_start_token_id=prompting.decoder_start_token_id,
            language_ids=tuple(sorted(prompting.lang_to_id.values())) if slot is not None else (),
            language_slot=slot or 0,
        )
        frames = whisper_features.NUM_FRAMES
        pending = [(index, 0) for index in order]  # (clip, seek in mel frames), longest clips first
        pass_number = 1
        while pending:
            limit = decoding.limit(pass_number, positions)
            later = []
            for start in range(0, len(pending), rows):
                chosen = pending[start : start + rows]
                prompts = np.tile(np.asarray(decoding.prompt, np.int32), (rows, 1))
                if slot is not None and pass_number > 1:  # later passes keep the clip's detected language
                    prompts[: len(chosen), slot] = [languages[index] for index, _ in chosen]
                prompts = np.maximum(prompts, 0)  # a placeholder id where the language is still to be detected
                new_ids, used = self._search_batch(
                    [samples[index] for index, _ in chosen],
                    [seek for _, seek in chosen],
                    rows,
                    prompts,
                    detect=slot is not None and pass_number == 1,
                    limit=limit,
                    settings=settings,
                )
                for row, (index, seek) in enumerate(chosen):
                    if slot is not None and pass_number == 1:
                        languages[index] = int(used[row, slot])
                    ids = pass_ids(new_ids[row], settings.eos_token_id)
                    if single:
                        results[index] = ids
                        continue
                    kept, offset = retrieve_segments(ids, prompting.timestamp_begin, frames - seek)
                    results[index] += kept
                    # transformers would decode the same window again, and so forever, when the pair is at <|0.00|>
                    if offset > 0 and seek + offset < frames:
                        later.append((index, seek + offset))
            pending, pass_number = later, pass_number + 1
        return results, languages

    def _prepare(self, waves: Sequence[np.ndarray], sample_rate: int, batch_size: int):
        """(16 kHz samples, the non-empty clips' indices longest first, rows per batch)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
            raise ValueError(f"sample_rate={sample_rate!r}: expected a positive integer (Hz)")
        samples = [check_waveform(index, wave, int(sample_rate)) for index, wave in enumerate(waves)]
        samples = [tts.to_sample_rate(wave, int(sample_rate)) for wave in samples]
        order = sorted((index for index, wave in enumerate(samples) if wave.size), key=lambda i: -samples[i].size)
        devices = parallel.data_parallel_size(self.mesh)
        rows = -(-min(batch_size, max(len(order), 1)) // devices) * devices
        return samples, order, rows

    def _batch(self, waves: list[np.ndarray], rows: int) -> tuple[jax.Array, jax.Array]:
        """(the 30 s windows [rows, 480000], live [rows]) of one batch, split over the devices; rows past `waves`
        are padding."""
        batch = np.zeros((rows, whisper_features.NUM_SAMPLES), np.float32)
        for row, wave in enumerate(waves):
            batch[row] = whisper_features.pad_or_trim(wave)
        live = np.arange(rows) < len(waves)
        return (
            jax.device_put(batch, parallel.batch_sharding(self.mesh)),
            jax.device_put(live, parallel.batch_sharding(self.mesh, trailing_axes=0)),
        )

    def _batch_ids(self, waves: list[np.ndarray], rows: int, prompt: list[int], settings) -> np.ndarray:
        """Greedy ids [rows, max_new_tokens] of one batch from one prompt; rows past `waves` are padding."""
        batch, live = self._batch(waves, rows)
        return np.asarray(
            greedy_ids(self._graphdef, self._state, batch, jnp.asarray(prompt, jnp.int32), live, settings, self.mesh)
        )

    def _search_batch(
        self, waves, seeks, rows: int, prompts: np.ndarray, detect: bool, limit: int, settings
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids [rows, max_new_tokens], prompts used [rows, prompt_length]) of one pass over one batch."""
        batch, live = self._batch(waves, rows)
        per_row = parallel.batch_sharding(self.mesh, trailing_axes=0)
        seek = np.zeros((rows,), np.int32)
        seek[: len(seeks)] = seeks
        ids, used = search_ids(
            self._graphdef,
            self._state,
            batch,
            jax.device_put(seek, per_row),
            jax.device_put(prompts, parallel.batch_sharding(self.mesh)),
            jax.device_put(np.full((rows,), detect), per_row),
            live,
            jax.device_put(np.full((rows,), limit, np.int32), per_row),
            settings,
            self.mesh,
        )
        return np.asarray(ids), np.asarray(used)


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
