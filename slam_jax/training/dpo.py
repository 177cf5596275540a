"""`mode: dpo`: preference optimisation of a pre-trained speech LM (paper Table 5).

The loop, checkpoints, budget, logging and preemption are the pre-training ones (`loop.Trainer`); this
module swaps in preference data and the DPO step. Chosen and rejected rows go through the model in one
forward pass; a sequence's log-prob is summed over its completion tokens only. Reference log-probs are
either precomputed once with the starting model and stored beside the data (default: one model in
memory), or computed in the step from a frozen copy (`dpo.reference = "frozen"`).
"""

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import files, parallel, paths
from slam_jax.data import fingerprints, pipeline, preference
from slam_jax.files import expand_paths
from slam_jax.models import storage
from slam_jax.models.speech_lm import next_token_log_probs
from slam_jax.paths import Path
from slam_jax.speech import preference_audio
from slam_jax.speech.tokenize import TokenizeSettings
from slam_jax.training import loop, metrics
from slam_jax.training.dpo_loss import dpo_loss, dpo_metrics
from slam_jax.training.settings import DpoSettings, PretrainJob
from slam_jax.training.step import TrainState, accumulate, accumulated_batch_shardings, apply_gradients


def sequence_logps(params, batch, graphdef) -> jax.Array:
    """[pairs, 2] summed log-probs of the chosen and rejected completions (one forward pass for both)."""
    pairs, _, length = batch["input_ids"].shape
    input_ids = batch["input_ids"].reshape(2 * pairs, length)
    model = nnx.merge(graphdef, params)
    logits = model(input_ids, batch["segment_ids"].reshape(2 * pairs, length))
    token_logps = next_token_log_probs(logits, input_ids)
    return jnp.sum(token_logps * batch["completion_mask"].reshape(2 * pairs, length - 1), axis=-1).reshape(pairs, 2)


def pair_losses(params, batch, reference_params, graphdef, dpo: DpoSettings, num_pairs, chosen_tokens):
    """A micro-batch's share of the step's objective and its per-pair (losses, chosen rewards, rejected rewards).

    The objective is the DPO loss averaged over the step's `num_pairs` pairs plus, when `dpo.rpo_alpha` > 0,
    TRL's RPO term: `rpo_alpha` times the NLL of the chosen completions averaged over their `chosen_tokens`
    tokens (all of the step's), which keeps the model's likelihood of the preferred speech up.
    """
    policy = sequence_logps(params, batch, graphdef)
    if reference_params is None:
        reference = batch["reference_logps"]
    else:
        reference = jax.lax.stop_gradient(sequence_logps(reference_params, batch, graphdef))
    losses, chosen, rejected = dpo_loss(
        policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], dpo.beta, dpo.label_smoothing, dpo.loss_type
    )
    objective = jnp.sum(losses) / num_pairs
    if dpo.rpo_alpha:
        objective = objective - dpo.rpo_alpha * jnp.sum(policy[:, 0]) / chosen_tokens
    return objective, (losses, chosen, rejected)


def dpo_step(state: TrainState, batches, learning_rate, reference_params, graphdef, optimizer, dpo: DpoSettings):
    """One optimiser step over micro-batches [accum, pairs, 2, length]: mean DPO loss over every pair (+ RPO).

    The shared accumulation and update of the pre-training step (training/step.py); the step's pair and
    chosen-token counts are known before the scan, so each micro-batch's gradient is already its share of the
    step's mean and the summed gradients need no rescaling.
    """
    num_pairs = batches["input_ids"].shape[0] * batches["input_ids"].shape[1]
    chosen_tokens = jnp.maximum(jnp.sum(batches["completion_mask"][:, :, 0]), 1).astype(jnp.float32)

    def grad_fn(params, micro):
        grads, per_pair = jax.grad(pair_losses, has_aux=True)(
            params, micro, reference_params, graphdef, dpo, num_pairs, chosen_tokens
        )
        return grads, (), per_pair

    grads, _, (losses, chosen, rejected) = accumulate(grad_fn, state.params, batches)
    state, grad_norm = apply_gradients(state, grads, learning_rate, optimizer)
    step_metrics = dpo_metrics(losses.reshape(-1), chosen.reshape(-1), rejected.reshape(-1))
    step_metrics["grad_norm"] = grad_norm
    return state, step_metrics


def jit_dpo_step(graphdef, optimizer, dpo, shardings: TrainState, mesh, trailing_axes: dict[str, int], frozen: bool):
    """`step(state, batches, lr, reference_params) -> (state, metrics)` compiled like `jit_train_step`.

    `trailing_axes` names the batch's keys and each one's number of axes after the pairs (which split over
    data x fsdp behind the accumulation axis); `frozen`: reference params are passed, sharded like the policy's.
    """
    return jax.jit(
        parallel.traced_under(mesh, functools.partial(dpo_step, graphdef=graphdef, optimizer=optimizer, dpo=dpo)),
        in_shardings=(
            shardings,
            accumulated_batch_shardings(mesh, trailing_axes),
            parallel.replicated(mesh),
            shardings.params if frozen else None,
        ),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def reference_key(model_dir: Path) -> str:
    """A name for reference log-probs that changes when the starting model does."""
    if paths.is_remote(model_dir):  # a folder in a bucket has no time of its own: its metadata object's
        params_dir = Path(model_dir) / storage.PARAMS_DIR
        stamp = f"{params_dir}:{paths.size_and_mtime(params_dir / '_METADATA')[1]}"
    else:
        params_dir = Path(model_dir).resolve() / storage.PARAMS_DIR
        stamp = f"{params_dir}:{params_dir.stat().st_mtime_ns}"
    return hashlib.sha1(stamp.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class DpoJob(PretrainJob):
    """A whole `dpo` config: the pre-training sections, the objective and (for rows naming audio files) the
    tokeniser."""

    mode: str = "dpo"
    dpo: DpoSettings = DpoSettings()
    tokenize: TokenizeSettings | None = None


class DPOTrainer(loop.Trainer):
    """The pre-training loop with preference pairs and the DPO step."""

    job = "dpo"
    settings_class = DpoJob

    def setup_task(self) -> None:
        config = self.settings
        if not config.model.init_from:
            raise ValueError("model.init_from must name the model DPO starts from (a checkpoint or converted model)")
        self.init_dir = storage.resolve_model_dir(config.model.init_from)
        self.store = self.prepare_pairs()
        self.context_length = config.dpo.max_prompt_length + config.dpo.max_completion_length
        self.tokens_per_step = 2 * self.global_rows * config.train.grad_accum_steps * self.context_length
        self.flops_per_token = metrics.flops_per_token(self.model_config, self.context_length)
        self.valid_stores = []
        self.reference_params = None
        reference_logps = None
        if config.dpo.reference == "frozen":
            self.reference_params = storage.load_params(self.init_dir, self.model_config, self.shardings.params)
        else:
            reference_logps = self.reference_logps()
        self.source = preference.PairSource(self.store, reference_logps)
        # The batch's keys and each one's axes after the pairs, as `to_device` shapes them from these items:
        # [pairs, 2, length] rows, [pairs, 2] precomputed reference log-probs.
        trailing_axes = {key: np.ndim(value) for key, value in self.source[0].items()}
        frozen = self.reference_params is not None
        step = jit_dpo_step(self.graphdef, self.optimizer, config.dpo, self.shardings, self.mesh, trailing_axes, frozen)
        self.train_step = lambda state, batch, lr: step(state, batch, lr, self.reference_params)

    def manifest_values(self, batch_devices: int) -> dict:
        """The pre-training keys (its unused `data.train_path` aside) plus the pairs and their lengths."""
        dpo = self.settings.dpo
        files = expand_paths(dpo.train_path) if dpo.train_path else []
        values = super().manifest_values(batch_devices)
        values.pop("data.train_path")
        return {
            **values,
            "dpo.train_path": fingerprints.summary(fingerprints.files_fingerprints(files)),
            "dpo.max_prompt_length": dpo.max_prompt_length,
            "dpo.max_completion_length": dpo.max_completion_length,
        }

    def prepare_pairs(self) -> Path:
        """The prepared preference store for `dpo.train_path` (process 0 writes it once)."""
        spec = self.settings.dpo.train_path
        files = [str(path) for path in expand_paths(spec)] if spec else []
        if not files:
            raise ValueError("dpo.train_path names no preference jsonl files")
        digest = hashlib.sha1(",".join(files).encode()).hexdigest()[:8]
        out = self.workdir / "data" / f"preference-{digest}"
        if jax.process_index() == 0 and not (out / preference.MANIFEST).is_file():
            limits = preference.Limits(
                self.settings.dpo.max_prompt_length,
                self.settings.dpo.max_completion_length,
                self.settings.dpo.truncate,
                self.settings.dpo.bad_rows,
                self.settings.dpo.auto_bleu_threshold,
            )
            if self.settings.tokenize is not None:  # rows naming audio files: tokenised first (in units_cache)
                cache = self.settings.dpo.units_cache or self.workdir / "units_cache"
                spec = preference_audio.resolve(
                    spec, self.settings.tokenize, out.parent, Path(cache), self.settings.seed
                )
            manifest = preference.prepare(spec, out, self.settings.data.num_units, limits, overwrite=True)
            print(f"[dpo] {manifest['num_pairs']} pairs prepared into {out}; skipped {manifest['skipped']}")
        parallel.barrier("slam_jax: preference pairs prepared")
        return out

    def reference_logps(self) -> np.ndarray:
        """[pairs, 2] log-probs of the starting model, computed once (by every process, over the run's mesh) and
        stored beside the pairs (by process 0)."""
        path = self.store / f"reference_logps-{reference_key(self.init_dir)}.npy"
        if not path.is_file():
            logps = self.compute_reference_logps()
            if jax.process_index() == 0:
                files.save_array(path, logps)
            parallel.barrier("slam_jax: reference log-probs written")
        return files.load_array(path)

    def compute_reference_logps(self) -> np.ndarray:
        """Every pair in order, in global batches of the run's rows per micro-batch (the last one filled with copies
        of its first pair, whose results are dropped); each process places only its rows."""
        params = storage.load_params(self.init_dir, self.model_config, self.shardings.params)
        score = jax.jit(
            parallel.traced_under(self.mesh, functools.partial(sequence_logps, graphdef=self.graphdef)),
            out_shardings=parallel.replicated(self.mesh),
        )
        source = preference.PairSource(self.store)
        results = []
        for start in range(0, len(source), self.global_rows):
            indices = list(range(start, min(start + self.global_rows, len(source))))
            mine = [indices[row] if row < len(indices) else start for row in self.batch_rows]
            items = [source[index] for index in mine]
            local = {key: np.stack([item[key] for item in items]) for key in items[0]}
            results.append(np.asarray(score(params, self.to_device(local, accumulation=False)))[: len(indices)])
        if jax.process_index() == 0:
            print(f"[dpo] reference log-probs of {len(source)} pairs computed with {self.init_dir}")
        return np.concatenate(results)

    def data_iterator(self, position: int = 0):
        """This process's pairs of the global batches from global data position `position` (pairs served)."""
        accumulation = self.settings.train.grad_accum_steps
        return preference.train_dataset(
            self.source,
            accumulation * self.global_rows,
            self.settings.seed,
            rows=pipeline.step_rows(self.global_rows, accumulation, self.batch_rows),
            start=position,
        )

    def replayed_position(self, steps: int) -> int:
        return steps * self.settings.train.grad_accum_steps * self.global_rows

    def probe_loss(self, params) -> float:
        """The policy's mean NLL per completion token of the first micro-batch's pairs (chosen and rejected)."""
        if self._probe is None:
            self._probe = self.probe_batch()
            self._probe_logps = jax.jit(
                parallel.traced_under(self.mesh, functools.partial(sequence_logps, graphdef=self.graphdef)),
                out_shardings=parallel.replicated(self.mesh),
            )
        logps = self._probe_logps(params, self._probe)
        tokens = float(jnp.sum(self._probe["completion_mask"]))
        return -float(jnp.sum(logps)) / max(tokens, 1.0)

    def evaluate(self, params) -> None:
        return None


def run(config, workdir: Path) -> dict:
    """DPO as configured; returns the final metrics."""
    return loop.run(config, workdir, trainer_class=DPOTrainer)
