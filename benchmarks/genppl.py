"""The whole GenPPL pipeline's time per sample: `eval.metric=genppl` end to end, stage by stage.

    python -m benchmarks.genppl [--json] [--prompts 8] [--asr_max_new_tokens 40]
        [--asr_decoding single_pass,reference] [--judge] [--judge_max_new_tokens 64]

The models have random weights (no checkpoint is reachable offline; the time does not depend on the values except
through how many tokens Whisper decodes, capped by `--asr_max_new_tokens`: a random Whisper never ends, a trained
one takes about 30 tokens for a 9 s clip) and these sizes, all converted by the project's converters:
- speech LM: `slam_small` (12 layers x 512, 46M parameters) over 100 units;
- vocoder: the unit HiFi-GAN of the paper's vocoder architecture (benchmarks/vocoder.py `ARCHITECTURE`: upsampling
  5 x 4 x 4 x 4 x 2 from 512 channels, three resblocks, a duration predictor);
- ASR: whisper-base's sizes (benchmarks/transcribe.py `ARCHITECTURE`, the 51,865-id vocabulary);
- text LM: a Llama of 4 layers x 512 (llama3 RoPE scaling, tied head) with a word-level tokenizer.
Prompts: `--prompts` espeak-ng sentences of about 9 s in sStoryCloze's layout (`<i>_correct.wav` beside
`<i>_incorrect.wav`), tokenised by the MFCC tokeniser fitted with 100 units on them; the paper's protocol otherwise
(3 s prompts, 150 units at temperature 0.8 and top-k 25). The metric runs twice in one process; the second run,
whose programs are compiled, is reported (the first run's stages include compilation).

`--asr_decoding single_pass,reference` runs it once per Whisper protocol (`eval.genppl.asr_decoding`): the single
greedy pass prompted for English, and the reference's (language detected per clip, the ASR pipeline's 5 beams,
transformers' seek loop), both capped at `--asr_max_new_tokens` per pass (the reference's own cap, 444, would only
time a random model that never ends). `--judge` adds `eval.metric=llm_judge` to the same run (its stages
judge_transcribe, the prompts' audio and the continuations transcribed alone, and judge): a random Llama of the text
LM's sizes with a word-level chat tokenizer and a chat template built here (`JUDGE_*`), answering greedily
`--judge_max_new_tokens` tokens (a random judge never ends; slamkit's local judge allows 512) to slamkit's
instruction.
"""

import argparse
import contextlib
import sys
import tempfile
import time

import soundfile
import torch
import transformers

from benchmarks import common, transcribe
from benchmarks import vocoder as vocoder_benchmark
from configs import genppl as genppl_config
from configs import tokenize_mfcc
from conversion import hf_to_flax, vocoder_to_flax, whisper_to_flax
from slam_jax.evaluation import pair_metrics
from slam_jax.models import config as model_config
from slam_jax.models import qwen2, storage
from slam_jax.models import vocoder as vocoder_model
from slam_jax.paths import Path
from slam_jax.speech import tokenize, tts
from tests import text_lm_fixtures, whisper_fixtures

NUM_UNITS = 100
LLAMA = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    rope_parameters={**text_lm_fixtures.LLAMA3_ROPE, "original_max_position_embeddings": 256},
)
PROTOCOLS = ("single_pass", "reference")
# The judge: a chat template of Llama 3's shape over a word-level tokenizer (words and punctuation one token each,
# about as many tokens as Llama 3's BPE makes of English), the text LM's sizes, untied, 4,096 positions.
JUDGE_SPECIALS = ["<unk>", "<|begin|>", "<|end|>", "<|user|>", "<|assistant|>"]
JUDGE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
JUDGE_WORDS = 2_000  # the vocabulary: the specials, then the instruction's words, then filler words


def write_prompts(folder: Path, count: int) -> Path:
    """`count` pairs of espeak-ng sentences (about 9 s each) in sStoryCloze's layout."""
    folder.mkdir(parents=True)
    for index in range(count):
        wave = tts.synthesize(transcribe.TEXTS[index % len(transcribe.TEXTS)])
        soundfile.write(folder / f"{index}_correct.wav", wave, 16_000)
        soundfile.write(folder / f"{index}_incorrect.wav", wave[::-1].copy(), 16_000)
    return folder


def fit_units(prompts: Path, root: Path) -> Path:
    config = tokenize_mfcc.get_config()
    config.tokenize.data_path, config.tokenize.out_path = str(prompts), str(root / "units")
    config.tokenize.fit_units, config.tokenize.progress = NUM_UNITS, False
    tokenize.run(config, root)
    return root / "units"


def speech_lm(folder: Path) -> Path:
    config = model_config.slam_small(num_units=NUM_UNITS, compute_dtype="float32")
    return storage.save_model(folder, config, qwen2.get_params(qwen2.init_model(config)))


def unit_vocoder(folder: Path) -> Path:
    """The paper's vocoder architecture with random weights, `NUM_UNITS` unit embeddings."""
    architecture = {**vocoder_benchmark.ARCHITECTURE, "num_embeddings": NUM_UNITS}
    config = vocoder_to_flax.config_from_textless(architecture, "benchmarks/vocoder.py ARCHITECTURE")
    return vocoder_model.save_vocoder(folder, config, vocoder_model.get_params(vocoder_model.init_model(config)))


def asr_model(root: Path) -> Path:
    model, made = transcribe.hf_model()
    whisper_fixtures.save_checkpoint(root / "whisper_hf", model, made, model.generation_config)
    return whisper_to_flax.convert(str(root / "whisper_hf"), root / "whisper")


def text_lm(root: Path) -> Path:
    text_lm_fixtures.save_word_tokenizer(root / "llama_hf")
    vocab_size = len(transformers.AutoTokenizer.from_pretrained(root / "llama_hf"))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=vocab_size, **LLAMA))
    model.save_pretrained(root / "llama_hf")
    return hf_to_flax.convert(str(root / "llama_hf"), root / "llama")


def judge_model(root: Path) -> Path:
    """A random Llama chat model (`JUDGE_*`), converted by conversion.hf_to_flax."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from slam_jax.evaluation import llm_judge

    words = pre_tokenizers.Whitespace().pre_tokenize_str(llm_judge.INSTRUCTION + " " + " ".join(transcribe.TEXTS))
    known = list(dict.fromkeys(word for word, _ in words))
    vocab = JUDGE_SPECIALS + known + [f"w{index}" for index in range(JUDGE_WORDS - len(JUDGE_SPECIALS) - len(known))]
    tokenizer = Tokenizer(models.WordLevel({token: index for index, token in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(JUDGE_SPECIALS[1:])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin|>", eos_token="<|end|>", unk_token="<unk>"
    )
    fast.chat_template = JUDGE_CHAT_TEMPLATE
    fast.save_pretrained(root / "judge_hf")
    begin, end = fast.convert_tokens_to_ids(["<|begin|>", "<|end|>"])
    sizes = {
        **LLAMA,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "bos_token_id": begin,
        "eos_token_id": end,
    }
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(vocab), **sizes))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = begin, end
    model.save_pretrained(root / "judge_hf")
    return hf_to_flax.convert(str(root / "judge_hf"), root / "judge")


def build(root: Path, prompts: int, asr_max_new_tokens: int):
    """configs/genppl.py on the benchmark's prompts and models."""
    bench = write_prompts(root / "sSC", prompts)
    units = fit_units(bench, root)
    config = genppl_config.get_config()
    config.eval.data_path, config.eval.model = str(bench), str(speech_lm(root / "speech_lm"))
    config.eval.batch_size, config.eval.progress = prompts, False
    settings = config.eval.genppl
    settings.vocoder, settings.asr_model = str(unit_vocoder(root / "vocoder")), str(asr_model(root))
    settings.text_lm, settings.asr_max_new_tokens = str(text_lm(root)), asr_max_new_tokens
    settings.asr_batch_size = settings.lm_batch_size = prompts
    config.tokenize.encoder_path, config.tokenize.kmeans_path = "mfcc", str(units / "centroids.npy")
    config.tokenize.progress = False
    return config


def set_protocol(config, protocol: str, asr_max_new_tokens: int) -> None:
    """`eval.genppl`'s Whisper settings: the single pass as configured, or the reference's (configs/eval.py: language
    auto, the generation config's or the pipeline's beams) with the benchmark's token cap per pass."""
    settings = config.eval.genppl
    settings.asr_decoding, settings.asr_max_new_tokens = protocol, asr_max_new_tokens
    if protocol == "reference":
        settings.language, settings.asr_num_beams = "auto", 0


def run(
    prompts: int,
    asr_max_new_tokens: int,
    protocols: tuple[str, ...] = ("single_pass",),
    judge: bool = False,
    judge_max_new_tokens: int = 64,
) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):  # stdout: the result only
        root = Path(folder)
        config = build(root, prompts, asr_max_new_tokens)
        if judge:
            bench = config.eval.data_path
            config.eval.metric, config.eval.data_path = "genppl,llm_judge", f"{bench},{bench}"
            settings = config.eval.genppl.judge
            settings.model, settings.max_new_tokens = str(judge_model(root)), judge_max_new_tokens
            settings.batch_size = prompts
        for protocol in protocols:
            set_protocol(config, protocol, asr_max_new_tokens)
            timed = []
            for index in range(2):
                start = time.perf_counter()
                results = pair_metrics.run(config, root / f"{protocol}{index}")
                timed.append({"wall_seconds": time.perf_counter() - start, **results["genppl"]})
                if judge:
                    timed[-1]["llm_judge"] = results["llm_judge"]["llm_judge"]
            runs[protocol] = timed
    by_protocol = {}
    for protocol, (first, second) in runs.items():
        samples = second["num_samples"]
        by_protocol[protocol] = {
            "asr": second["asr"],
            "seconds_per_sample": second["wall_seconds"] / samples,
            "stage_seconds_per_sample": {stage: value / samples for stage, value in second["stage_seconds"].items()},
            "first_run_seconds_per_sample_incl_compile": first["wall_seconds"] / samples,
            "same_results_both_runs": (first["genppl"], first.get("llm_judge"))
            == (second["genppl"], second.get("llm_judge")),
            "genppl_of_random_models": second["genppl"],
        }
    result = {
        "benchmark": "genppl",
        "prompts": samples,
        "asr_max_new_tokens": asr_max_new_tokens,
        "sizes": "slam_small speech LM, paper-architecture vocoder, whisper-base, 4 x 512 Llama (random weights)",
    }
    if judge:
        result |= {
            "judge": "4 x 512 Llama, word-level chat tokenizer (random weights)",
            "judge_max_new_tokens": (judge_max_new_tokens),
        }
    if protocols == ("single_pass",):  # the keys of the single-protocol report, as before
        result |= {key: value for key, value in by_protocol["single_pass"].items() if key != "asr"}
    else:
        result["protocols"] = by_protocol
    return result | {"machine": common.machine()}


def report_lines(result: dict) -> list[str]:
    lines = [f"GenPPL pipeline, {result['prompts']} prompts, {result['sizes']}"]
    if "judge" in result:
        lines.append(f"judge: {result['judge']}, {result['judge_max_new_tokens']} answer tokens")
    for name, run in result.get("protocols", {"": result}).items():
        stages = ", ".join(f"{stage} {value:.2f} s" for stage, value in run["stage_seconds_per_sample"].items())
        label = f"{name}: " if name else ""
        lines.append(f"{label}{run['seconds_per_sample']:.2f} s per sample (compiled): {stages}")
        lines.append(
            f"first run incl. compilation: {run['first_run_seconds_per_sample_incl_compile']:.2f} s per sample"
        )
    return [*lines, common.describe(result["machine"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.genppl", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--prompts", type=int, default=8, help="prompt files (one batch per model)")
    parser.add_argument("--asr_max_new_tokens", type=int, default=40, help="transcript tokens at most (per pass)")
    parser.add_argument("--asr_decoding", default="single_pass", help="comma list of Whisper protocols to time")
    parser.add_argument("--judge", action="store_true", help="time eval.metric=llm_judge too (a random chat Llama)")
    parser.add_argument("--judge_max_new_tokens", type=int, default=64, help="judge answer tokens at most")
    args = parser.parse_args(argv)
    protocols = tuple(dict.fromkeys(name for name in args.asr_decoding.split(",") if name))
    if args.prompts < 1 or args.asr_max_new_tokens < 1 or args.judge_max_new_tokens < 1:
        print("error: need --prompts, --asr_max_new_tokens and --judge_max_new_tokens >= 1", file=sys.stderr)
        return 1
    if not protocols or not set(protocols) <= set(PROTOCOLS):
        print(f"error: --asr_decoding={args.asr_decoding}: a comma list of {', '.join(PROTOCOLS)}", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    result = run(args.prompts, args.asr_max_new_tokens, protocols, args.judge, args.judge_max_new_tokens)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
