"""LLM-as-judge of generated speech (`eval.metric=llm_judge`), slamkit's `llm_as_judge` with a local judge model.

    python -m slam_jax.main --config configs/llm_judge.py --config.eval.data_path=SSTORYCLOZE_DIR \\
        --config.eval.model=PATH --config.eval.genppl.vocoder=DIR --config.eval.genppl.asr_model=DIR \\
        --config.eval.genppl.judge.model=DIR [--workdir W]

The reference (slamkit `slamkit/metric/generative_metric.py` `llm_as_judge`, `slamkit/metric/metric_utils.py`
`get_judge`, `extract_digit_from_boxed`; the instruction in `config/metric/llm_as_judge.yaml`): each prompt (the first
3 s of a file) is continued by the speech LM, the continuation alone (`remove_prompt=True`) is vocoded, Whisper
transcribes the prompt's audio and the continuation's ("" for an empty one), `INSTRUCTION` gets the two transcripts
in place of its placeholders and is sent as one user message (no system message) to GPT-4o; the score is the integer
of the first `\\boxed{<digits>}` in the answer (`BOXED`: no range check, so a 7 counts as 7; no box, a non-integer
or an API error gives no score), and the metric is the mean of the scores there are.

Here, after genppl.py's generation and vocoding (evaluate's "judge_transcribe" and "judge" stages): the prompt's
audio is the first `prompt_seconds` of its file (what the speech LM's prompt units encode), the continuation is
vocoded alone, both go through the same Whisper, and the judge is a local instruction-tuned Llama or Qwen2
(conversion.hf_to_flax's folder, which copies its tokenizer): the instruction is the user message of the judge
tokenizer's own chat template (`apply_chat_template(..., add_generation_prompt=True)`), the answer is generated in
JAX (`sampling.generate`: greedy by default; temperature, top-k, top-p and the seed are settings; row i samples from
(seed, i)) until one of the tokenizer's or generation config's EOS ids, decoded without special tokens and parsed
as the reference parses it. The judge's parameters (kernels and embedding cast to `compute_dtype` as they load) are
sharded over this process's devices by `parallel.param_shardings` on a mesh of one axis (`mesh`): `fsdp` (the
default: every matrix split along its input dimension, the rows split too) or `tensor` (Megatron-style: heads and
MLP columns split, rows whole; less memory and fewer collectives per step, benchmarks/compile_genppl.py). Either way
a 7-8B judge fits over several chips (Llama-3.1-8B in bfloat16 on 4 TPU v5e chips of 16 GiB).

Several hosts: like the text LM's scoring, the judge runs whole on every process (the same transcripts on the same
local meshes, the same answers) and process 0 alone writes `llm_judge_ratings.jsonl` (one line per prompt: file,
prompt and continuation transcripts, the judge's answer, its score).
"""

import dataclasses
import json
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel, paths
from slam_jax.evaluation import generation, text_lm
from slam_jax.files import write_text
from slam_jax.models import qwen2, sampling, weights
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio

PROMPT_PLACEHOLDER = "[prompt_audio_transcription]"
CONTINUATION_PLACEHOLDER = "[generated_audio_transcription]"
# slamkit's config/metric/llm_as_judge.yaml `instruction`, verbatim (the YAML's escapes resolved).
INSTRUCTION = (
    "The task is evaluating the relevance and likelihood of the predicted text continuation, given the text prompt. "
    "You should also consider whether the meaning of the text continuation is making sense. The text prompt is: "
    '"[prompt_audio_transcription]", and the text continuation is :"[generated_audio_transcription]". You must give '
    "an overall rating from 1 to 5. The rating guideline is as below:\n"
    "1: The text continuation is very unlikely and irrelevant to the text prompt.\n"
    "2: The text continuation is unlikely and marginally relevant to the text prompt.\n"
    "3: The text continuation is moderately likely and relevant to the text prompt.\n"
    "4: The text continuation is likely and relevant to the text prompt.\n"
    "5: The text continuation is very likely and highly relevant.\n"
    " You should take the following steps to provide the score:\n"
    "First: briefly analyze the sample with the above definition.\n"
    'Second: MUST follow the output format as: "The final answer is $\\boxed{x}$". Where x is the score you are '
    "giving."
)
BOXED = re.compile(r"\\boxed\{(\d+)\}")  # slamkit's extract_digit_from_boxed: the first match counts
SCALE = (1, 5)  # the instruction's rating scale (only counted: the reference averages any parsed integer)
RATINGS = "llm_judge_ratings.jsonl"
GENERATION_CONFIG = "generation_config.json"
MESHES = ("fsdp", "tensor")  # how the judge's parameters are split over this process's devices (judge_mesh)


@dataclasses.dataclass(frozen=True)
class JudgeSettings(Settings):
    """`eval.genppl.judge`: the judge model and how it answers (configs/eval.py explains each key)."""

    model: str = setting("", exists=True)  # conversion.hf_to_flax dir of an instruction-tuned Llama / Qwen2
    instruction: str = ""  # '' = slamkit's INSTRUCTION; another must hold both placeholders
    max_new_tokens: int = setting(512, minimum=1)  # slamkit's local judge: 512
    temperature: float = setting(0.0, minimum=0.0)  # 0 = greedy
    top_k: int = setting(0, minimum=0)  # 0 = off
    top_p: float = setting(1.0, above=0.0, maximum=1.0)  # 1 = off
    seed: int = setting(0, minimum=0)  # row i samples from (seed, i) when not greedy
    batch_size: int = setting(16, above=0)  # prompts per judge batch, over all local devices
    compute_dtype: str = setting("bfloat16", choices=("float32", "bfloat16"))  # weights cast to it once
    mesh: str = setting("fsdp", choices=MESHES)  # the local devices as one fsdp or one tensor axis

    def validate(self) -> None:
        missing = [name for name in (PROMPT_PLACEHOLDER, CONTINUATION_PLACEHOLDER) if name not in self.prompt]
        if missing:
            raise ValueError(f"{self._source}.instruction: lacks {' and '.join(missing)} (the transcripts go there)")

    @property
    def prompt(self) -> str:
        """The instruction the transcripts are put in."""
        return self.instruction or INSTRUCTION

    def sampling_settings(self, eos_ids: Sequence[int]) -> sampling.SamplingSettings:
        return sampling.SamplingSettings(
            self.max_new_tokens, self.temperature, self.top_k, self.top_p, 1.0, tuple(sorted(set(eos_ids)))
        )


def parse_score(answer: str) -> int | None:
    """The integer in the first `\\boxed{<digits>}` of `answer` (slamkit's `extract_digit_from_boxed`), or None: no
    box, or a box holding anything but digits ("4.5", " 4", "x"). Not range-checked, as in the reference."""
    match = BOXED.search(answer)
    return int(match.group(1)) if match else None


def fill(instruction: str, prompt_text: str, continuation_text: str) -> str:
    """The reference's `instruction.replace(prompt placeholder, ...).replace(continuation placeholder, ...)`."""
    return instruction.replace(PROMPT_PLACEHOLDER, prompt_text).replace(CONTINUATION_PLACEHOLDER, continuation_text)


def judge_mesh(kind: str = "fsdp", devices=None) -> jax.sharding.Mesh:
    """This process's devices as one axis of `parallel.RULES`: `fsdp` (every matrix split along its input or hidden
    dimension, the rows split too) or `tensor` (Megatron: heads and MLP columns split, every device on all rows)."""
    devices = jax.local_devices() if devices is None else devices
    if kind == "tensor":
        return parallel.make_mesh(data=1, fsdp=1, tensor=-1, devices=devices)
    return parallel.make_mesh(data=1, fsdp=-1, devices=devices)


def generation_eos_ids(directory: Path) -> list[int]:
    """The `eos_token_id` (an id or a list) of the folder's generation_config.json, [] without one."""
    with weights.local_side_files(directory) as folder:
        path = folder / GENERATION_CONFIG
        if not path.is_file():
            return []
        value = json.loads(path.read_text()).get("eos_token_id")
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(item) for item in value]


def cast_matrices(tree: dict, dtype) -> dict:
    """The kernels and the embedding of a pure-dict parameter tree cast to `dtype` in place, one leaf at a time
    (the float32 leaf is released as its cast is made: the peak is the float32 tree and one leaf)."""
    for key in list(tree):
        value = tree[key]
        if isinstance(value, dict):
            cast_matrices(value, dtype)
        elif key in ("kernel", "embed_tokens") and jnp.issubdtype(value.dtype, jnp.floating):
            tree[key] = value.astype(dtype)
        del value
    return tree


class LLMJudge:
    """A converted chat LM with its tokenizer: (prompt transcript, continuation transcript) -> answer and score."""

    def __init__(self, settings: JudgeSettings, key: str = "eval.genppl.judge.model", mesh=None):
        self.settings = settings
        self.directory = paths.absolute(settings.model)
        if not weights.is_model_dir(qwen2.FAMILY, self.directory):
            paths.check_bucket(self.directory)
            raise FileNotFoundError(
                f"{key}={settings.model}: not a converted text LM (needs {qwen2.FAMILY.config_file} and "
                f"{weights.PARAMS_DIR}/; conversion.hf_to_flax writes them)"
            )
        try:
            self.tokenizer = text_lm.load_tokenizer(self.directory)
            config = weights.load_config(qwen2.FAMILY, self.directory)
        except (OSError, ValueError) as error:
            kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
            raise kind(f"{key}={settings.model}: {error}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{key}={settings.model}: its tokenizer has no chat template (tokenizer_config.json 'chat_template' "
                "or chat_template.jinja); convert an instruction-tuned model (e.g. meta-llama/Llama-3.1-8B-Instruct) "
                "with conversion.hf_to_flax, which copies either"
            )
        self.eos_ids = sorted({self.tokenizer.eos_token_id, *generation_eos_ids(self.directory)} - {None})
        self.mesh = mesh or judge_mesh(settings.mesh)
        config = config.replace(compute_dtype=settings.compute_dtype)
        shardings = parallel.param_shardings(qwen2.param_shapes(config), self.mesh)
        params = weights.load_params(qwen2.FAMILY, self.directory, config, sharding=shardings)
        cast_matrices(params, jnp.dtype(settings.compute_dtype))
        self.graphdef, self.state = nnx.split(qwen2.model_from_params(config, params))
        self.config = config
        self.sampling = settings.sampling_settings(self.eos_ids)
        self._generate = parallel.traced_under(self.mesh, sampling.generate)  # a fused attention kernel per shard

    def chat_ids(self, text: str) -> list[int]:
        """`text` as the one user message of the judge's chat template, ready for the answer."""
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def answer_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """The ids each prompt's answer is made of, up to (without) its EOS: length-sorted batches of `batch_size`
        rows (rounded up to the devices) split over this process's devices; row i samples from (seed, i)."""
        devices = parallel.data_parallel_size(self.mesh)
        rows = -(-self.settings.batch_size // devices) * devices
        batch_sharding = parallel.batch_sharding(self.mesh)
        row_sharding = parallel.batch_sharding(self.mesh, trailing_axes=0)
        pad = self.tokenizer.pad_token_id
        order = np.argsort([-len(ids) for ids in prompts], kind="stable")
        answers: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), rows):
            chosen = order[start : start + rows]
            width = text_lm.length_bucket(len(prompts[chosen[0]]))
            ids = np.full((rows, width), pad, np.int32)
            mask = np.zeros((rows, width), np.bool_)
            mask[:, -1] = True  # a filler row (past the prompts) holds one real token
            for row, index in enumerate(chosen):
                ids[row, width - len(prompts[index]) :] = prompts[index]
                mask[row, width - len(prompts[index]) :] = True
            row_ids = np.concatenate([chosen, len(prompts) + np.arange(rows - len(chosen))]).astype(np.int32)
            new_ids = self._generate(
                self.graphdef,
                self.state,
                jax.device_put(jnp.asarray(ids), batch_sharding),
                jax.device_put(jnp.asarray(row_ids), row_sharding),
                jnp.int32(self.settings.seed),
                self.sampling,
                jax.device_put(jnp.asarray(mask), batch_sharding),
            )
            new_ids = np.asarray(new_ids)
            for row, index in enumerate(chosen):
                answers[index] = until_eos(new_ids[row], self.eos_ids)
        return answers

    def rate(self, prompt_texts: Sequence[str], continuation_texts: Sequence[str]) -> list[dict]:
        """Per pair of transcripts: the judge's answer (decoded without special tokens), whether it ended with an
        EOS, and its score (None when unparseable)."""
        texts = [fill(self.settings.prompt, p, c) for p, c in zip(prompt_texts, continuation_texts, strict=True)]
        answers = self.answer_ids([self.chat_ids(text) for text in texts])
        rated = []
        for prompt_text, continuation_text, ids in zip(prompt_texts, continuation_texts, answers, strict=True):
            answer = self.tokenizer.decode(ids, skip_special_tokens=True)
            rated.append(
                {
                    "prompt_transcript": prompt_text,
                    "continuation_transcript": continuation_text,
                    "answer": answer,
                    "answer_tokens": len(ids),
                    "ended": len(ids) < self.sampling.max_new_tokens,
                    "score": parse_score(answer),
                }
            )
        return rated

    def describe(self) -> dict:
        """What the summary records of the judge: its folder and name, the sampling and the seed."""
        return {
            "model": str(self.directory),
            "name": self.directory.name,
            "architecture": self.config.architecture,
            "num_params": self.config.num_params(),
            "compute_dtype": self.settings.compute_dtype,
            "max_new_tokens": self.settings.max_new_tokens,
            "temperature": self.settings.temperature,
            "top_k": self.settings.top_k,
            "top_p": self.settings.top_p,
            "seed": self.settings.seed,
            "eos_ids": self.eos_ids,
            "instruction": "slamkit" if self.settings.prompt == INSTRUCTION else "custom",
            "mesh": {axis: int(size) for axis, size in self.mesh.shape.items()},
        }


def until_eos(new_ids: np.ndarray, eos_ids: Sequence[int]) -> list[int]:
    """The ids before the first EOS (all of them when none came)."""
    stops = np.flatnonzero(np.isin(new_ids, eos_ids))
    return new_ids[: int(stops[0]) if stops.size else len(new_ids)].tolist()


def transcripts(
    samples: list[dict],
    vocoder,
    transcribe: Callable[[list[np.ndarray], int], list[str]],
    prompt_seconds: float,
    predict_durations: bool,
    vocoder_key: str = "eval.genppl.vocoder",
) -> tuple[list[str], list[str]]:
    """What the reference transcribes for its judge: each prompt's audio (here the first `prompt_seconds` of its
    file, the audio its prompt units encode) and the continuation vocoded alone ("" when it is empty)."""
    prompt_waves = [audio.read_audio(sample["file_name"], prompt_seconds).samples for sample in samples]
    try:
        continuation_waves = generation.speak(vocoder, [sample["units"] for sample in samples], predict_durations)
    except ValueError as error:
        raise ValueError(f"{vocoder_key}: {error}") from None
    return transcribe(prompt_waves, audio.SAMPLE_RATE), transcribe(continuation_waves, vocoder.sample_rate)


def summarise(ratings: list[dict], judge: dict) -> dict:
    """The judge's mean score over the parsed answers (the reference's mean; None when none parsed), the counts
    behind it, the unparseable share and the judge's description."""
    scores = [rating["score"] for rating in ratings if rating["score"] is not None]
    low, high = SCALE
    return {
        "llm_judge": float(np.mean(scores)) if scores else None,
        "judge_num_scored": len(scores),
        "judge_num_unparsed": len(ratings) - len(scores),
        "judge_unparsed_share": (len(ratings) - len(scores)) / len(ratings) if ratings else 0.0,
        "judge_num_out_of_scale": sum(not low <= score <= high for score in scores),
        "judge": judge | {"ratings": RATINGS},
    }


def write_ratings(out: Path, samples: list[dict], ratings: list[dict]) -> None:
    """llm_judge_ratings.jsonl: one line per prompt (its file, then the rating), written by process 0."""
    if jax.process_index() == 0:  # every process holds the same ratings; one writes them
        lines = [{"file_name": sample["file_name"]} | rating for sample, rating in zip(samples, ratings, strict=True)]
        write_text(out / RATINGS, "".join(json.dumps(line) + "\n" for line in lines))


def describe(summary: dict) -> str:
    """The judge's part of the metric line."""
    value = "n/a" if summary["llm_judge"] is None else f"{summary['llm_judge']:.2f}"
    return (
        f"LLM judge {value} over {summary['judge_num_scored']} answers "
        f"({100 * summary['judge_unparsed_share']:.1f}% unparsed, judge {summary['judge']['name']})"
    )
