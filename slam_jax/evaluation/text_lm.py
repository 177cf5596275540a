"""A text LM (a converted Llama or Qwen2 folder with its tokenizer) scoring text: the per-sample mean token NLL
that GenPPL averages.

The reference (slamkit) tokenises a batch with the model's tokenizer (pad = eos when it has no pad token, right
padding; Llama 3's tokenizer prepends `<|begin_of_text|>`), copies the ids as labels with every pad id set to
-100, and takes per sample the mean cross-entropy of the logits at t against the label at t + 1 over the labels
that count. Because pad = eos, an eos inside a text is not scored either, and that is kept here. A text with no
scored token (an empty one: BOS alone) gives nan, which the caller leaves out.

Here the texts are sorted longest first and right-padded to a length bucket (16, 32, 64, ...: a run compiles a
program per bucket), padding in segment 0 (never attended); the rows are split over this host's devices with
the parameters replicated. A text's score does not depend on the batch it ran in.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel
from slam_jax.models import qwen2, weights
from slam_jax.models.speech_lm import next_token_log_probs
from slam_jax.paths import Path

SHORTEST_BUCKET = 16
# any of these marks a folder holding a transformers tokenizer (the conversion copies the text model's)
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class TextLM:
    """A text LM and its tokenizer, ready to score texts with `nll`."""

    def __init__(self, model: qwen2.Qwen2, tokenizer, mesh=None):
        self.model = model
        self.tokenizer = tokenizer
        self.mesh = mesh or parallel.local_mesh()
        self.graphdef, state = nnx.split(model)
        self.state = jax.device_put(state, parallel.replicated(self.mesh))
        self.batch_sharding = parallel.batch_sharding(self.mesh)
        self._log_probs = parallel.traced_under(self.mesh, token_log_probs)  # a fused attention kernel per shard

    def nll(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """[len(texts)] float64: each text's mean next-token NLL as the reference computes it (nan where no token
        is scored), in input order, `batch_size` texts (rounded up to a multiple of the devices) at a time."""
        if isinstance(texts, str):
            raise ValueError("nll: expected a list of texts, got one string")
        scores = np.full(len(texts), np.nan)
        if not len(texts):
            return scores
        pad_id = self.tokenizer.pad_token_id
        sequences = [np.asarray(ids, np.int32) for ids in self.tokenizer(list(texts))["input_ids"]]
        devices = parallel.data_parallel_size(self.mesh)
        rows = -(-max(batch_size, 1) // devices) * devices
        order = np.argsort([-len(ids) for ids in sequences], kind="stable")
        for start in range(0, len(order), rows):
            chosen = order[start : start + rows]
            width = length_bucket(len(sequences[chosen[0]]))
            input_ids = np.full((rows, width), pad_id, np.int32)
            segment_ids = np.zeros((rows, width), np.int32)
            for row, index in enumerate(chosen):
                input_ids[row, : len(sequences[index])] = sequences[index]
                segment_ids[row, : len(sequences[index])] = 1
            arrays = (jax.device_put(jnp.asarray(array), self.batch_sharding) for array in (input_ids, segment_ids))
            log_probs = np.asarray(self._log_probs(self.graphdef, self.state, *arrays), np.float64)
            # the reference's labels: inside the text, and not the pad id (so not eos either, pad being eos)
            scored = (segment_ids[:, 1:] > 0) & (input_ids[:, 1:] != pad_id)
            for row, index in enumerate(chosen):
                count = int(scored[row].sum())
                scores[index] = -log_probs[row, scored[row]].sum() / count if count else np.nan
        return scores


def length_bucket(length: int) -> int:
    """The padded width of a batch whose longest text has `length` tokens: the power of two >= it, at least 16."""
    return max(SHORTEST_BUCKET, 1 << (length - 1).bit_length())


@functools.partial(jax.jit, static_argnums=0)
def token_log_probs(graphdef, state, input_ids: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """[rows, width - 1] float32 log-probability of each next token (the caller reads the scored ones)."""
    return next_token_log_probs(nnx.merge(graphdef, state)(input_ids, segment_ids), input_ids)


def load_tokenizer(directory: str | Path):
    """The transformers tokenizer saved in `directory` (locally or in a bucket: read from a local copy of its
    files), its pad token the eos token if it has none (as the reference sets it)."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_MARKERS):
        raise FileNotFoundError(
            f"{directory}: no tokenizer files ({', '.join(TOKENIZER_MARKERS)}); convert the text model with "
            "conversion.hf_to_flax without --twist, which copies them"
        )
    from transformers import AutoTokenizer  # deferred: only text scoring needs transformers

    with weights.local_side_files(directory) as folder:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as error:
            message = " ".join(str(error).split()).replace(str(folder), str(directory))
            raise ValueError(f"{directory}: the tokenizer does not load ({type(error).__name__}: {message})") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{directory}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_text_lm(model_dir: str | Path, compute_dtype: str = "float32") -> TextLM:
    """The text LM in `model_dir` (conversion.hf_to_flax's output without --twist: weights and tokenizer), a local
    folder or one in a gs:// bucket."""
    model = weights.load_model(qwen2.FAMILY, model_dir, compute_dtype=compute_dtype)
    return TextLM(model, load_tokenizer(model_dir))
