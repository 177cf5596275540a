"""Pair-scoring throughput of the `slam` config: slam_jax's `Scorer` against transformers (PyTorch), same run.

    python -m benchmarks.scoring [--json] [--repeats 3] [--pairs 8] [--dtypes bf16,fp32]

Both score the same pairs of random unit sequences (3 to 10 s at 25 Hz, like StoryCloze utterances) with the
same random weights: log-likelihood = minus the mean NLL of `[1, units + 2, 1]` (docs/recipe.md §6).
slam_jax: `evaluation.scoring.Scorer` (sequences packed longest-first into rows of length-bucketed batches,
jit, float32 master weights cast to the compute dtype). transformers: `Qwen2ForCausalLM` with its weights in
the same dtype, as the reference scores: length-sorted batches of `batch_size` sequences right-padded to their
longest with an attention mask, log-softmax in float32, under `torch.inference_mode()`. Implementations
alternate in rounds after one warm-up each; medians reported. On a machine with a GPU both run on it (see
`benchmarks.generate` on float32 matmul precision there).
"""

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks import common
from conversion import qwen2_hf
from slam_jax import tokens
from slam_jax.evaluation import scoring
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.models.speech_lm import SpeechLM

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
UNITS_PER_SECOND = 25
SECONDS = (3.0, 10.0)


def slam_params(seed: int = 0, preset: str = "slam", **sizes) -> tuple[model_config.ModelConfig, dict]:
    """The `slam` config (or another speech preset; float32) and random weights whose PAD and EOS embedding rows
    are zero: with the tied head their logit is always 0, far below the top 25, so sampled continuations never
    stop early."""
    config = model_config.from_preset(preset, compute_dtype="float32", **sizes)
    params = qwen2.get_params(qwen2.init_model(config, seed=seed))
    params["embed_tokens"] = params["embed_tokens"].at[:2].set(0.0)
    return config, params


def torch_twin(config: model_config.ModelConfig, params: dict, dtype: str) -> Qwen2ForCausalLM:
    """transformers' Qwen2ForCausalLM holding `params` in `dtype`, in eval mode."""
    model = Qwen2ForCausalLM(Qwen2Config(**qwen2_hf.hf_config_from_model(config))).eval()
    tensors = qwen2_hf.hf_tensors_from_params(params, config, np.float32)
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in tensors.items()}, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.to(getattr(torch, dtype))


def torch_scores(model: Qwen2ForCausalLM, sequences: list[np.ndarray], batch_size: int) -> np.ndarray:
    """transformers' mean log-likelihoods: longest first, `batch_size` sequences per right-padded batch, on the
    model's device."""
    order = np.argsort([-len(sequence) for sequence in sequences], kind="stable")
    scores = np.zeros(len(sequences), np.float32)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in chosen)
        ids = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, index in enumerate(chosen):
            ids[row, : len(sequences[index])] = torch.from_numpy(sequences[index])
        ids = ids.to(model.device)
        mask = (ids != 0).long()
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:]
            token_log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
            target_mask = (targets != 0).float()
            scores[chosen] = ((token_log_probs * target_mask).sum(-1) / target_mask.sum(-1)).cpu().numpy()
    return scores


def make_pairs(num_pairs: int, num_units: int, seed: int = 0) -> list[np.ndarray]:
    """2 x num_pairs sequences `[1, units + 2, 1]` of 3 to 10 s of units."""
    rng = np.random.default_rng(seed)
    low, high = (int(seconds * UNITS_PER_SECOND) for seconds in SECONDS)
    return [tokens.unit_sequence(rng.integers(0, num_units, rng.integers(low, high + 1))) for _ in range(2 * num_pairs)]


def build(num_pairs: int, dtypes: list[str]) -> tuple[dict[str, Callable[[], object]], dict]:
    """Timed functions by name (JAX and PyTorch per dtype, alternating) and facts about the set-up."""
    config, params = slam_params()
    sequences = make_pairs(num_pairs, config.vocab_size - 2)
    batch_size = len(sequences)
    torch.set_num_threads(os.cpu_count())
    device = common.torch_device()
    fns, results = {}, {}
    for short in dtypes:
        model = SpeechLM(qwen2.model_from_params(config.replace(compute_dtype=DTYPES[short]), params))
        scorer = scoring.Scorer(model, batch_size=batch_size)
        twin = torch_twin(config, params, DTYPES[short]).to(device)

        def run_jax(scorer=scorer, short=short):
            results[f"jax_{short}"] = scorer(sequences)

        def run_torch(twin=twin, short=short):
            results[f"torch_{short}"] = torch_scores(twin, sequences, batch_size)

        fns[f"jax_{short}"], fns[f"torch_{short}"] = run_jax, run_torch
    setup = {
        "num_pairs": num_pairs,
        "batch_size": batch_size,
        "sequence_tokens": [len(sequence) for sequence in sequences],
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    return fns, setup


def summarise(times: dict[str, list[float]], setup: dict, repeats: int) -> dict:
    """Medians, pairs/s and tokens/s, JAX/PyTorch ratios, and how far the two implementations' scores differ."""
    implementations = {
        name: {
            "seconds": common.median(values),
            "all_seconds": values,
            "pairs_per_s": setup["num_pairs"] / common.median(values),
            "tokens_per_s": sum(setup["sequence_tokens"]) / common.median(values),
        }
        for name, values in times.items()
    }
    shorts = sorted({name.split("_", 1)[1] for name in times})
    results = setup["results"]
    return {
        "benchmark": "scoring",
        "config": "slam",
        "repeats": repeats,
        "num_pairs": setup["num_pairs"],
        "sequences_per_batch": setup["batch_size"],
        "sequence_tokens": setup["sequence_tokens"],
        "torch_threads": setup["torch_threads"],
        "implementations": implementations,
        "jax_over_torch_pairs_per_s": {
            short: implementations[f"jax_{short}"]["pairs_per_s"] / implementations[f"torch_{short}"]["pairs_per_s"]
            for short in shorts
        },
        "max_abs_score_difference": {
            short: float(np.abs(results[f"jax_{short}"] - results[f"torch_{short}"]).max()) for short in shorts
        },
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"slam pair scoring, {result['num_pairs']} pairs ({sum(result['sequence_tokens'])} tokens) in batches of "
        f"{result['sequences_per_batch']}, median of {result['repeats']} after a warm-up"
    ]
    for name, figures in result["implementations"].items():
        lines.append(
            f"{name:10s} {figures['seconds']:7.2f} s  {figures['pairs_per_s']:6.2f} pairs/s  "
            f"{figures['tokens_per_s']:7.1f} tokens/s"
        )
    for short, ratio in result["jax_over_torch_pairs_per_s"].items():
        difference = result["max_abs_score_difference"][short]
        lines.append(f"JAX / PyTorch pairs/s, {short}: {ratio:.2f}x (scores differ by at most {difference:.2e})")
    lines.append(common.describe(result["machine"]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs scored per timed call")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma list of bf16, fp32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fns, setup = build(args.pairs, [short.strip() for short in args.dtypes.split(",") if short.strip()])
    result = summarise(common.alternate(fns, args.repeats), setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
