"""The whole GenPPL pipeline's time per sample: `eval.metric=genppl` end to end, stage by stage.

    python -m benchmarks.genppl [--json] [--prompts 8] [--asr_max_new_tokens 40]

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


def run(prompts: int, asr_max_new_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):  # stdout: the result only
        root = Path(folder)
        config = build(root, prompts, asr_max_new_tokens)
        runs = []
        for index in range(2):
            start = time.perf_counter()
            summary = pair_metrics.run(config, root / f"run{index}")["genppl"]
            runs.append({"wall_seconds": time.perf_counter() - start, **summary})
    first, second = runs
    samples = second["num_samples"]
    return {
        "benchmark": "genppl",
        "prompts": samples,
        "asr_max_new_tokens": asr_max_new_tokens,
        "sizes": "slam_small speech LM, paper-architecture vocoder, whisper-base, 4 x 512 Llama (random weights)",
        "seconds_per_sample": second["wall_seconds"] / samples,
        "stage_seconds_per_sample": {stage: value / samples for stage, value in second["stage_seconds"].items()},
        "first_run_seconds_per_sample_incl_compile": first["wall_seconds"] / samples,
        "same_results_both_runs": first["genppl"] == second["genppl"],
        "genppl_of_random_models": second["genppl"],
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    stages = ", ".join(f"{stage} {value:.2f} s" for stage, value in result["stage_seconds_per_sample"].items())
    return [
        f"GenPPL pipeline, {result['prompts']} prompts, {result['sizes']}",
        f"{result['seconds_per_sample']:.2f} s per sample (compiled): {stages}",
        f"first run incl. compilation: {result['first_run_seconds_per_sample_incl_compile']:.2f} s per sample",
        common.describe(result["machine"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.genppl", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--prompts", type=int, default=8, help="prompt files (one batch per model)")
    parser.add_argument("--asr_max_new_tokens", type=int, default=40, help="transcript tokens at most")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.asr_max_new_tokens < 1:
        print("error: need --prompts and --asr_max_new_tokens >= 1", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    result = run(args.prompts, args.asr_max_new_tokens)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
