"""GenPPL's programs compiled for a TPU or a GPU this machine does not have: the whole metric runs there.

    python -m benchmarks.compile_genppl --target tpu-v5e [--sizes paper|tiny] [--json]

The programs `eval.metric=genppl` runs, jitted as it runs them, with the paper's models at their real sizes
(shape-only: nothing is allocated) on the target's devices, parameters replicated and rows split over a data mesh
(`slam_jax.parallel`), as on the local devices:
- generate: the speech LM `slam` (358M) sampling 150 units after a 3 s prompt (76 tokens), 8 rows per device
  (`sampling.generate`);
- vocode: the unit HiFi-GAN of the paper's architecture (benchmarks/vocoder.py), 9 s of 25 Hz frames (256), 2 rows
  per device, and its duration predictor (`vocoder.waveforms`, `vocoder.unit_durations`);
- transcribe: whisper-large-v3-turbo (809M), the front end, the encoder and the greedy loop of 128 tokens, 4 rows per
  device, each device running its own rows (`asr.greedy_ids` on the mesh, as `WhisperASR` calls it: the default
  `eval.genppl.asr_decoding=single_pass`);
- transcribe_beams: the same model as the reference protocol runs it (`asr_decoding=reference`, language auto): one
  pass of the seek loop in one program, the front end, the window from each row's seek on, the encoder, the language
  detection among the 100 language tokens and a beam search of 5 beams up to 444 new tokens (the ASR pipeline's
  defaults with Whisper's max_length 448), 4 rows per device (`asr.search_ids`); the language detection is part of
  this program (rows flagged `detect`), not a program of its own;
- score: Llama-3.2-1B (1.24B), 64-token transcripts, 4 rows per device (`text_lm.token_log_probs`);
- judge (`eval.metric=llm_judge`): Llama-3.1-8B-Instruct's size (8.03B), bfloat16 weights sharded over 4 devices
  (the chips of one host) as `eval.genppl.judge.mesh` splits them (`--judge_mesh fsdp`, the default, or `tensor`;
  `llm_judge.judge_mesh`), answering greedily 256 tokens after a 512-token chat prompt (slamkit's instruction and
  two transcripts), 32 rows (`sampling.generate` with a prompt mask); a GPU target of one GPU is compiled as 4 of
  them on one host (topology `1x1x4`, the same description file).
Each program's report: compiled or why not, its memory per device, whether it fits, and the seconds lowering and
compiling took here. `--programs vocode --buffer-assignment only` reads one program's memory from XLA's buffer
assignment instead, as soon as it is written (benchmarks/buffer_assignment.py; for a TPU the code generation of the
vocoder's convolutions takes far longer on a small host), `also` waits for the compiled figure too. `--sizes tiny`
compiles the tests' sizes (seconds); `--programs judge` compiles only the named ones. Targets: those of
benchmarks/compile.py.
"""

import argparse
import contextlib
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
from transformers.models.whisper.configuration_whisper import NON_SPEECH_TOKENS_MULTI

from benchmarks import buffer_assignment
from benchmarks import compile as compile_benchmark
from benchmarks import vocoder as vocoder_benchmark
from conversion import vocoder_to_flax
from slam_jax import parallel
from slam_jax.evaluation import llm_judge, text_lm
from slam_jax.models import config as model_config
from slam_jax.models import qwen2, sampling, weights, whisper, whisper_search
from slam_jax.models import vocoder as vocoder_model
from slam_jax.speech import asr, whisper_features

PROMPT_TOKENS = 76  # BOS + 3 s of 25 Hz units
VOCODER_FRAMES = 256  # 9 s of 25 Hz frames, bucketed
TRANSCRIPT_TOKENS = 64
JUDGE_PROMPT_TOKENS = 512  # the chat template, slamkit's instruction (1,150 characters) and two transcripts
JUDGE_NEW_TOKENS = 256
JUDGE_DEVICES = 4
JUDGE_ROWS = 32
JUDGE_EOS_IDS = (128_001, 128_008, 128_009)  # Llama-3.1-Instruct's generation config
ASR_ROWS = 4  # per device
GREEDY_TOKENS = 128  # eval.genppl.asr_max_new_tokens
NUM_BEAMS = 5  # the ASR pipeline's num_beams (whisper-large-v3-turbo's generation config sets none)
BEAM_TOKENS = 444  # Whisper's max_length 448 less the 4-token prompt: the longest pass (asr.WhisperASR.decode)
PROMPT = 4  # <|startoftranscript|> <|language|> <|transcribe|> <|notimestamps|>


def whisper_prompting(config: whisper.WhisperConfig, sizes: str) -> dict:
    """The special ids of whisper-large-v3-turbo's generation_config.json (its 100 languages, suppressed tokens), or
    ids at the end of the tiny vocabulary."""
    if sizes == "paper":
        return {
            "decoder_start_token_id": 50_258,
            "eos_token_id": 50_257,
            "language_ids": tuple(range(50_259, 50_359)),
            "suppress_tokens": tuple(NON_SPEECH_TOKENS_MULTI),
            "begin_suppress_tokens": (220, 50_257),
        }
    vocab = config.vocab_size
    return {
        "decoder_start_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "language_ids": tuple(range(vocab - 8, vocab - 4)),
        "suppress_tokens": (1, 2),
        "begin_suppress_tokens": (vocab - 1,),
    }


def vocoder_config(sizes: str) -> vocoder_model.VocoderConfig:
    """The paper's vocoder architecture as its converter reads it, or narrower for the tiny sizes."""
    paper = vocoder_to_flax.config_from_textless(vocoder_benchmark.ARCHITECTURE, "benchmarks/vocoder.py ARCHITECTURE")
    if sizes == "paper":
        return paper
    return paper.replace(embedding_dim=16, upsample_initial_channel=64, duration_predictor_dim=16)


def configs(sizes: str) -> dict:
    if sizes == "paper":
        return {
            "speech_lm": model_config.slam(),
            "vocoder": vocoder_config(sizes),
            "whisper": whisper.large_v3_turbo(),
            "text_lm": model_config.llama3_2_1b(compute_dtype="float32"),
        }
    return {
        "speech_lm": model_config.tiny(num_units=500),
        "vocoder": vocoder_config(sizes),
        "whisper": whisper.tiny(),
        "text_lm": model_config.tiny(architecture="llama", attention_bias=False, vocab_size=300),
    }


def judge_config(sizes: str) -> model_config.ModelConfig:
    if sizes == "paper":
        return model_config.llama3_1_8b(compute_dtype="bfloat16")
    return model_config.tiny(
        architecture="llama", attention_bias=False, tie_word_embeddings=False, vocab_size=300, compute_dtype="bfloat16"
    )


def judge_devices(target: compile_benchmark.Target) -> list:
    """The devices one process of the judge shards it over: the target's first `JUDGE_DEVICES` (one host's chips),
    a one-GPU target widened to that many GPUs on one host."""
    devices = compile_benchmark.target_devices(target)
    if len(devices) < JUDGE_DEVICES and target.platform == "cuda":
        devices = compile_benchmark.target_devices(dataclasses.replace(target, topology=f"1x1x{JUDGE_DEVICES}"))
    return list(devices)[:JUDGE_DEVICES]


def judge_program(sizes: str, mesh) -> tuple:
    """The judge's `sampling.generate` on its mesh: parameters as `llm_judge.LLMJudge` holds them (kernels and the
    embedding in the compute dtype, `parallel.param_shardings`), rows split over the devices."""
    config = judge_config(sizes)
    shapes = qwen2.param_shapes(config)
    shardings = parallel.param_shardings(shapes, mesh)

    def placed(path, leaf, sharding):
        matrix = parallel.path_name(path).rsplit("/", 1)[-1] in ("kernel", "embed_tokens")
        return jax.ShapeDtypeStruct(leaf.shape, config.compute_dtype if matrix else leaf.dtype, sharding=sharding)

    params = jax.tree_util.tree_map_with_path(placed, shapes, shardings)
    graph, state = nnx.split(qwen2.model_from_params(config, params))
    rows = JUDGE_ROWS
    settings = sampling.SamplingSettings(JUDGE_NEW_TOKENS, 0.0, 0, 1.0, 1.0, JUDGE_EOS_IDS)
    return (
        sampling.generate,
        (
            graph,
            state,
            rows_of(mesh, (rows, JUDGE_PROMPT_TOKENS), jnp.int32),
            rows_of(mesh, (rows,), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh)),
            settings,
            rows_of(mesh, (rows, JUDGE_PROMPT_TOKENS), jnp.bool_),
        ),
    )


def on(mesh, tree, sharding=None):
    """Shape-only `tree` placed on `mesh`: replicated, or with `sharding`."""
    sharding = sharding or parallel.replicated(mesh)
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree)


def rows_of(mesh, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    sharding = parallel.batch_sharding(mesh, trailing_axes=len(shape) - 1)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def programs(sizes: str, mesh) -> dict:
    """name -> (jitted function, its shape-only arguments)."""
    devices = parallel.data_parallel_size(mesh)
    found = configs(sizes)
    speech_graph, speech_state = nnx.split(qwen2.abstract_model(found["speech_lm"]))
    rows = 8 * devices
    generate = (
        sampling.generate,
        (
            speech_graph,
            on(mesh, speech_state),
            rows_of(mesh, (rows, PROMPT_TOKENS), jnp.int32),
            rows_of(mesh, (rows,), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh)),
            sampling.SamplingSettings(150, 0.8, 25, 1.0, 1.0),
        ),
    )
    vocoder_graph, vocoder_state = nnx.split(weights.abstract_model(vocoder_model.FAMILY, found["vocoder"]))
    vocoder_rows = 2 * devices
    vocode = (
        vocoder_model.waveforms,
        (
            vocoder_graph,
            on(mesh, vocoder_state),
            rows_of(mesh, (vocoder_rows, VOCODER_FRAMES), jnp.int32),
            *(rows_of(mesh, (vocoder_rows,), jnp.int32) for _ in range(3)),
        ),
    )
    durations = (
        vocoder_model.unit_durations,
        (
            vocoder_graph,
            on(mesh, vocoder_state),
            rows_of(mesh, (vocoder_rows, VOCODER_FRAMES), jnp.int32),
            rows_of(mesh, (vocoder_rows,), jnp.int32),
        ),
    )
    whisper_config = found["whisper"]
    whisper_graph, whisper_state = nnx.split(whisper.abstract_model(whisper_config))
    whisper_state = jax.eval_shape(lambda state: whisper.inference_state(state, whisper_config), whisper_state)
    asr_rows = ASR_ROWS * devices
    ids = whisper_prompting(whisper_config, sizes)
    suppress = {key: ids[key] for key in ("eos_token_id", "suppress_tokens", "begin_suppress_tokens")}
    waveforms = rows_of(mesh, (asr_rows, whisper_features.NUM_SAMPLES), jnp.float32)
    live = rows_of(mesh, (asr_rows,), jnp.bool_)
    transcribe = (
        asr.greedy_ids,
        (
            whisper_graph,
            on(mesh, whisper_state),
            waveforms,
            jax.ShapeDtypeStruct((PROMPT,), jnp.int32, sharding=parallel.replicated(mesh)),
            live,
            whisper.GreedySettings(max_new_tokens=GREEDY_TOKENS, **suppress),
            mesh,
        ),
    )
    beams = whisper_search.SearchSettings(
        max_new_tokens=BEAM_TOKENS,
        **suppress,
        num_beams=NUM_BEAMS,
        decoder_start_token_id=ids["decoder_start_token_id"],
        language_ids=ids["language_ids"],
        language_slot=1,
    )
    per_row = rows_of(mesh, (asr_rows,), jnp.int32)
    transcribe_beams = (
        asr.search_ids,
        (
            whisper_graph,
            on(mesh, whisper_state),
            waveforms,
            per_row,  # seek
            rows_of(mesh, (asr_rows, PROMPT), jnp.int32),
            live,  # detect
            live,
            per_row,  # limit
            beams,
            mesh,
        ),
    )
    text_graph, text_state = nnx.split(qwen2.abstract_model(found["text_lm"]))
    score = (
        text_lm.token_log_probs,
        (
            text_graph,
            on(mesh, text_state),
            *(rows_of(mesh, (4 * devices, TRANSCRIPT_TOKENS), jnp.int32) for _ in range(2)),
        ),
    )
    return {
        "generate": generate,
        "vocode": vocode,
        "durations": durations,
        "transcribe": transcribe,
        "transcribe_beams": transcribe_beams,
        "score": score,
    }


# The programs traced with the mesh as their context, as they run (`parallel.traced_under`): text_lm.TextLM's and
# llm_judge.LLMJudge's.
TRACED_UNDER_MESH = ("score", "judge")


def compile_one(fn, arguments, mesh, memory: int, traced_under_mesh: bool) -> dict:
    """Lower and compile `fn` on `arguments` (shardings on `mesh`): its memory per device, or why it did not
    compile."""
    start = time.perf_counter()
    try:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if traced_under_mesh else contextlib.nullcontext():
            compiled = fn.lower(*arguments).compile()
    except Exception as error:  # noqa: BLE001 - the report says why the program did not compile
        first_line = (str(error).strip().splitlines() or [""])[0]
        return {"compiled": False, "error": f"{error.__class__.__name__}: {first_line[:300]}"}
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    used = stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
    used -= stats.alias_size_in_bytes
    return {
        "compiled": True,
        "bytes_per_device": int(used),
        "gib_per_device": used / compile_benchmark.GIB,
        "fits": used <= memory,
        "compile_seconds": round(seconds, 1),
    }


def report(target_name: str, sizes: str, only: tuple[str, ...] = (), judge_mesh: str = "fsdp") -> dict:
    target = compile_benchmark.TARGETS[target_name]
    devices = compile_benchmark.target_devices(target)
    mesh = parallel.make_mesh(devices=devices)
    memory = compile_benchmark.device_memory(target)
    results = {
        name: compile_one(fn, arguments, mesh, memory, name in TRACED_UNDER_MESH)
        for name, (fn, arguments) in programs(sizes, mesh).items()
        if not only or name in only
    }
    if not only or "judge" in only:
        mesh = llm_judge.judge_mesh(judge_mesh, judge_devices(target))
        fn, arguments = judge_program(sizes, mesh)
        results["judge"] = compile_one(fn, arguments, mesh, memory, True) | {"devices": mesh.size, "mesh": judge_mesh}
    return {
        "benchmark": "compile_genppl",
        "target": target_name,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "sizes": sizes,
        "device_memory_bytes": memory,
        "programs": results,
        "all_compiled": all(result["compiled"] for result in results.values()),
    }


# The jitted function each program runs (`jit_<name>` in XLA's dumps): benchmarks/buffer_assignment.py reads its
# buffer assignment.
JIT_NAMES = {
    "generate": "generate",
    "vocode": "waveforms",
    "durations": "unit_durations",
    "transcribe": "greedy_ids",
    "transcribe_beams": "search_ids",
    "score": "token_log_probs",
    "judge": "generate",
}


def buffer_assignment_report(args, name: str) -> dict:
    """One program compiled in a child process that dumps XLA's buffer assignment: its figures as soon as they
    are written (`only`: the compile is stopped there), with `also` the compiled report beside them."""
    target = compile_benchmark.TARGETS[args.target]
    devices = compile_benchmark.target_devices(target)
    memory = compile_benchmark.device_memory(target)
    command = [sys.executable, "-m", "benchmarks.compile_genppl", "--target", args.target, "--sizes", args.sizes]
    command += ["--programs", name, "--judge_mesh", args.judge_mesh, "--json"]
    wait_for_end = args.buffer_assignment == "also"
    outcome = buffer_assignment.run_dumping(command, JIT_NAMES[name], wait_for_end, args.wait_seconds)
    program = json.loads(outcome.stdout)["programs"][name] if outcome.stdout else {"compiled": False}
    if outcome.found is not None:
        program["buffer_assignment"] = buffer_assignment.with_fit(outcome.found, memory, outcome.seconds)
    if outcome.error:
        program["error"] = outcome.error
    return {
        "benchmark": "compile_genppl",
        "target": args.target,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "sizes": args.sizes,
        "device_memory_bytes": memory,
        "programs": {name: program},
        "all_compiled": program["compiled"],
    }


def report_lines(result: dict) -> list[str]:
    lines = [f"{result['target']} ({result['device_kind']}, {result['devices']} devices), {result['sizes']} sizes"]
    for name, program in result["programs"].items():
        if "buffer_assignment" in program:
            found = program["buffer_assignment"]
            lines.append(
                f"  {name:16s} buffer assignment (before code generation, after {found['seconds']:.0f} s): "
                f"{found['gib_per_device']:.2f} GiB per device (fits: {found['fits']})"
            )
        if program["compiled"]:
            devices = f" over {program['devices']} devices ({program['mesh']})" if "devices" in program else ""
            lines.append(
                f"  {name:16s} compiled, {program['gib_per_device']:.2f} GiB per device{devices} (fits: "
                f"{program['fits']}), {program['compile_seconds']:.1f} s"
            )
        elif "error" in program:
            lines.append(f"  {name:16s} did not compile: {program['error']}")
        else:
            lines.append(f"  {name:16s} the compile was stopped after its buffer assignment (--buffer-assignment only)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_genppl", description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(compile_benchmark.TARGETS), default="tpu-v5e")
    parser.add_argument("--sizes", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--programs", default="", help="comma list of the programs to compile (default: all)")
    parser.add_argument("--judge_mesh", choices=llm_judge.MESHES, default="fsdp", help="the judge's parameter split")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    buffer_assignment.add_arguments(parser, "one program (--programs NAME)")
    args = parser.parse_args(argv)
    only = tuple(name for name in args.programs.split(",") if name)
    if args.buffer_assignment:
        if len(only) != 1 or only[0] not in JIT_NAMES:
            parser.error(f"--buffer-assignment reads one program: --programs one of {', '.join(JIT_NAMES)}")
        result = buffer_assignment_report(args, only[0])
    else:
        result = report(args.target, args.sizes, only, args.judge_mesh)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report_lines(result)))
    stopped = args.buffer_assignment == "only" and all("buffer_assignment" in p for p in result["programs"].values())
    return 0 if result["all_compiled"] or stopped else 1


if __name__ == "__main__":
    sys.exit(main())
