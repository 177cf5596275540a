"""`mode: selfcheck`: the conversion and forward-pass path end to end on a small random model.

Builds a random text Qwen2, exports it as an HF checkpoint, converts it back with the TWIST vocabulary
swap, scores unit sequences, checks KV-cache decoding against the full forward pass and round-trips the
speech LM through the slamkit format. Every step prints what it did; any mismatch fails the run.
"""

import dataclasses
import json
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from conversion import flax_to_hf, hf_to_flax
from slam_jax import tokens
from slam_jax.models import config as model_config
from slam_jax.models import qwen2, storage
from slam_jax.models.speech_lm import load_model
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting

_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class SelfcheckModelSettings(Settings):
    """`model`: the size of the random text model."""

    preset: str = setting("demo", choices=tuple(model_config.PRESETS))


@dataclasses.dataclass(frozen=True)
class SelfcheckSettings(Settings):
    """`selfcheck`: the random model's text vocabulary, the units after the TWIST swap, the scored lengths."""

    text_vocab_size: int = setting(2048, above=0)
    num_units: int = setting(500, above=0)
    lengths: tuple[int, ...] = (50, 125, 250)

    def validate(self) -> None:
        vocab = tokens.vocab_size_for(self.num_units)
        if self.text_vocab_size < vocab:
            raise ValueError(
                f"{self._source}.text_vocab_size={self.text_vocab_size}: the TWIST swap keeps num_units + "
                f"{vocab - self.num_units} = {vocab} of its rows"
            )
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"{self._source}.lengths={self.lengths}: give one or more lengths >= 1")


@dataclasses.dataclass(frozen=True)
class SelfcheckJob(Settings):
    """A whole `mode: selfcheck` config."""

    mode: str = setting("selfcheck", choices=("selfcheck",))
    seed: int = 0  # weights and unit sequences
    model: SelfcheckModelSettings = SelfcheckModelSettings()
    selfcheck: SelfcheckSettings = SelfcheckSettings()


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: selfcheck`: the config checked into a `SelfcheckJob`, then `check_all`."""
    return check_all(SelfcheckJob.from_config(config, "config"), workdir)


def check_all(job: SelfcheckJob, workdir: Path) -> dict:
    """Run every step under `workdir/selfcheck/` and return (and save) the measured figures."""
    settings = job.selfcheck
    root = Path(workdir) / "selfcheck"
    start = time.perf_counter()
    text_config = model_config.from_preset(job.model.preset, vocab_size=settings.text_vocab_size)
    text_model = qwen2.init_model(text_config, seed=job.seed)
    storage.save_model(root / "text_flax", text_config, qwen2.get_params(text_model), overwrite=True)
    flax_to_hf.export(root / "text_flax", root / "text_hf", format="hf", overwrite=True)
    _say(f"random text LM: {text_config.num_params():,} params, vocab {text_config.vocab_size} -> {root / 'text_hf'}")

    hf_to_flax.convert(
        str(root / "text_hf"), root / "speech", twist_vocab=True, num_units=settings.num_units, overwrite=True
    )
    speech = load_model(root / "speech", compute_dtype="float32")
    first_rows = np.asarray(text_model.embed_tokens[...])[: speech.config.vocab_size]
    embedding_equal = bool(np.array_equal(np.asarray(speech.model.embed_tokens[...]), first_rows))
    _check(embedding_equal, "TWIST embedding rows are not the text model's first rows")
    _say(
        f"TWIST speech LM: vocab {speech.config.vocab_size}, {speech.config.num_params():,} params, rows copied exactly"
    )

    rng = np.random.default_rng(job.seed)
    units = [rng.integers(0, settings.num_units, length) for length in settings.lengths]
    sequences = [[tokens.BOS_ID, *(unit_ids + tokens.UNIT_OFFSET), tokens.EOS_ID] for unit_ids in units]
    log_likelihoods = speech.log_likelihood(sequences)
    _say(f"log-likelihood of {len(sequences)} unit sequences: {np.round(log_likelihoods, 3).tolist()}")

    decode_error = _decode_error(speech, np.asarray([sequences[0]], np.int32))
    _check(decode_error <= _TOLERANCE, f"KV-cache decoding differs from the full pass by {decode_error}")
    _say(f"KV-cache decoding vs full pass: max |diff| {decode_error:.2e}")

    flax_to_hf.export(root / "speech", root / "speech_slamkit", format="slamkit", overwrite=True)
    hf_to_flax.convert(str(root / "speech_slamkit"), root / "speech_reimported", overwrite=True)
    reimported = storage.load_params(root / "speech_reimported")
    identical = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reimported), jax.tree.leaves(speech.params), strict=True)
    )
    _check(identical, "slamkit export -> import changed a tensor")
    _say("slamkit export -> import: every tensor bit-identical")

    summary = {
        "text_params": text_config.num_params(),
        "speech_params": speech.config.num_params(),
        "log_likelihoods": [float(value) for value in log_likelihoods],
        "decode_max_abs_diff": decode_error,
        "seconds": round(time.perf_counter() - start, 2),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"selfcheck passed in {summary['seconds']} s; summary in {root / 'summary.json'}")
    return summary


def _decode_error(speech, input_ids: np.ndarray) -> float:
    """Max |logits| difference between token-by-token cached decoding and one full forward pass."""
    full = np.asarray(speech(input_ids))
    cache = speech.init_cache(input_ids.shape[0], input_ids.shape[1])
    steps = []
    for index in range(input_ids.shape[1]):
        logits, cache = speech.decode(input_ids[:, index : index + 1], cache)
        steps.append(np.asarray(logits))
    return float(np.abs(np.concatenate(steps, axis=1) - full).max())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"selfcheck failed: {message}")


def _say(message: str) -> None:
    print(f"[selfcheck] {message}", flush=True)
