"""DPO step time vs a pre-training step of the same token count (issue 5), with both reference modes.

    python -m benchmarks.dpo_step --json [--preset slam] [--length 1024] [--repeats 3]

One pair (chosen + rejected, `length` tokens each) per DPO step; the pre-training step gets 2 rows of
`length` tokens. All three run the project's real jitted steps on one device, alternating after warm-up.
Targets: precomputed reference <= 2.2x, frozen-copy reference <= 3.2x the pre-training step.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from configs import slam_dpo
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.training import optimizer
from slam_jax.training.dpo import dpo_step
from slam_jax.training.settings import DpoSettings, TrainSettings
from slam_jax.training.step import init_state, train_step


def pretrain_batch(rows: int, length: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input_ids": jnp.asarray(rng.integers(2, vocab, (1, rows, length)), jnp.int32),
        "segment_ids": jnp.ones((1, rows, length), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (1, rows, length)),
    }


def pair_batch(length: int, vocab: int) -> dict:
    rng = np.random.default_rng(1)
    prompt = length // 4
    mask = np.zeros((1, 1, 2, length - 1), np.float32)
    mask[..., prompt - 1 :] = 1.0
    return {
        "input_ids": jnp.asarray(rng.integers(2, vocab, (1, 1, 2, length)), jnp.int32),
        "segment_ids": jnp.ones((1, 1, 2, length), jnp.int32),
        "completion_mask": jnp.asarray(mask),
        "reference_logps": jnp.full((1, 1, 2), -100.0, jnp.float32),
    }


def steps(preset: str, length: int) -> dict:
    """name -> a function that runs one real step and blocks until it is done.

    The model settings (bf16 compute, remat policy) are `configs/slam_dpo.py`'s. The three steps share one
    donated training state (the step times do not depend on its values): one copy of the parameters and AdamW
    moments in memory, plus the frozen reference's parameters, so the 358M model fits a 24 GiB machine.
    """
    recipe = slam_dpo.get_config()
    model = recipe.model
    config = model_config.from_preset(preset, compute_dtype=model.compute_dtype, remat_policy=model.remat_policy)
    chain = optimizer.build(TrainSettings.from_config(recipe.train, "train"))
    graphdef, state = nnx.split(qwen2.init_model(config))
    params = state.to_pure_dict()
    dpo_config = DpoSettings.from_config(
        recipe.dpo, "dpo"
    )  # the objective's settings (beta, loss type, RPO) as the DPO mode reads them
    pretrain = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=chain), donate_argnums=0)
    dpo = jax.jit(functools.partial(dpo_step, graphdef=graphdef, optimizer=chain, dpo=dpo_config), donate_argnums=0)
    holder = {"state": init_state(jax.tree.map(jnp.array, params), chain)}
    lr = jnp.float32(1e-5)
    batches = {"pretrain": pretrain_batch(2, length, config.vocab_size), "pairs": pair_batch(length, config.vocab_size)}

    def run(name):
        if name == "pretrain":
            holder["state"], out = pretrain(holder["state"], batches["pretrain"], lr)
        else:
            reference = params if name == "frozen" else None
            holder["state"], out = dpo(holder["state"], batches["pairs"], lr, reference)
        jax.block_until_ready(out)

    return {name: functools.partial(run, name) for name in ("pretrain", "precomputed", "frozen")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="slam", help="model preset (slam = the paper's 358M)")
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    times = common.alternate(steps(args.preset, args.length), args.repeats)
    medians = {name: common.median(values) for name, values in times.items()}
    result = {
        "benchmark": "dpo_step",
        "preset": args.preset,
        "tokens_per_step": 2 * args.length,
        "remat_policy": slam_dpo.get_config().model.remat_policy,
        "seconds": medians,
        "precomputed_vs_pretrain": medians["precomputed"] / medians["pretrain"],
        "frozen_vs_pretrain": medians["frozen"] / medians["pretrain"],
        "targets": {"precomputed_vs_pretrain": 2.2, "frozen_vs_pretrain": 3.2},
        "device": jax.devices()[0].device_kind,
        "machine": common.machine(),
    }
    lines = [f"{name}: {seconds:.2f} s/step" for name, seconds in medians.items()]
    lines += [
        f"precomputed / pretrain = {result['precomputed_vs_pretrain']:.2f}x (target <= 2.2x)",
        f"frozen / pretrain = {result['frozen_vs_pretrain']:.2f}x (target <= 3.2x)",
    ]
    common.emit(result, args.json, lines)


if __name__ == "__main__":
    main()
