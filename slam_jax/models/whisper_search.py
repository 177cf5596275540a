"""Whisper's searches beyond one greedy pass, as transformers' Whisper `generate` runs them: language detection,
beam search, and the window that a later pass of its seek loop reads.

- `detect_language`: transformers' `WhisperGenerationMixin.detect_language`: the decoder's logits after
  `<|startoftranscript|>` alone, every id but the language tokens at -inf, the first highest wins.
- `beam_search`: transformers' `GenerationMixin._beam_search` (5.x, the vectorised one), for one EOS id: at each step
  the log-softmax of the logits, the suppressed ids at -inf (`begin_suppress_tokens` too at the first step), plus
  each beam's running score; the 2k best of the k x vocab continuations of a clip (`lax.top_k`: the first on ties,
  as `torch.topk`); of these the k best that did not just end run on, and those among the k best that just ended
  (EOS, or the clip's token cap) join the clip's k finished hypotheses with their score divided by
  `length ** length_penalty`; a clip stops when no running beam can beat its worst finished hypothesis
  (`early_stopping` False: at the current length; "never": at the longest length when `length_penalty` > 0) or,
  with `early_stopping` True, once it holds k finished hypotheses. The answer is the best finished hypothesis.
  A clip that stops is frozen while the others go on, which is what the batched reference computes for it.
- `shift_features`: the log-mel window of a later pass: the frames from `seek` on, zeros after the end (transformers'
  `_get_input_segment` pads the cut features with zeros).

`search` is one pass for a batch: the encoder once, the detection (if asked), then greedy (`whisper.greedy_search`)
or beam search, all inside one jit; its loops are `lax.while_loop`s.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax.models import whisper

# transformers' beam search marks impossible scores by adding this (not -inf, so that sums stay ordered).
NEG = -1.0e9
EARLY_STOPPING = (False, True, "never")


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """One pass of transformers' Whisper search (static under jit)."""

    max_new_tokens: int  # the buffer: the most new tokens of any pass (a row's own cap is `limit`)
    eos_token_id: int
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    num_beams: int = 1  # 1: greedy search
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    decoder_start_token_id: int = 0
    language_ids: tuple[int, ...] = ()  # not empty: rows asking for it get the language detected among these ids
    language_slot: int = 1  # where the detected language goes in the prompt

    def greedy(self) -> whisper.GreedySettings:
        return whisper.GreedySettings(
            self.max_new_tokens, self.eos_token_id, self.suppress_tokens, self.begin_suppress_tokens
        )


def shift_features(features: jax.Array, seek: jax.Array) -> jax.Array:
    """`features` [batch, mels, frames] from frame `seek` [batch] on, zeros past the end (seek 0: unchanged)."""
    frames = features.shape[-1]
    index = jnp.arange(frames)[None, :] + seek[:, None]
    shifted = jnp.take_along_axis(features, jnp.minimum(index, frames - 1)[:, None, :], axis=2)
    return jnp.where((index < frames)[:, None, :], shifted, 0.0)


def detect_language(
    steps: whisper.DecoderSteps, cross: whisper.Cache, start_token_id: int, language_ids: tuple[int, ...]
) -> jax.Array:
    """The language token [batch] whose logit after `<|startoftranscript|>` alone is highest among `language_ids`."""
    batch = cross[0]["k"].shape[0]
    start = jnp.full((batch, 1), start_token_id, jnp.int32)
    logits, _ = steps(start, 0, steps.init_cache(batch, 1), cross)
    is_language = whisper.suppression_mask(steps.config.vocab_size, language_ids)
    return jnp.argmax(jnp.where(is_language, logits[:, -1], -jnp.inf), axis=-1).astype(jnp.int32)


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    """values [batch, n, ...] at index [batch, m] along axis 1 -> [batch, m, ...]."""
    index = index.reshape(index.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def _where_rows(active: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """`new` in the rows [batch] where `active`, else `old`."""
    return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)


def beam_search(
    steps: whisper.DecoderSteps,
    cross: whisper.Cache,
    prompt: jax.Array,
    live: jax.Array,
    limit: jax.Array,
    settings: SearchSettings,
) -> jax.Array:
    """The best hypothesis [batch, max_new_tokens] of a beam search of `settings.num_beams` beams after `prompt`
    [batch, prompt_length], over the memory `cross` of the encoded clips ([batch, ...]); EOS after its end. `limit`
    [batch]: each row's cap on new tokens (transformers' max_length less the prompt); rows where `live` is False
    are padding. See the module docstring for the algorithm."""
    config = steps.config
    batch, prompt_length = prompt.shape
    beams, length, vocab = settings.num_beams, settings.max_new_tokens, config.vocab_size
    keep = 2 * beams  # transformers keeps max(2, 1 + number of EOS ids) x beams candidates
    eos = settings.eos_token_id
    # length ** length_penalty for lengths 1..max_new_tokens, in float64 then float32 as Python's power and torch's
    # division by a Python float compute it.
    penalty = jnp.asarray(np.arange(1, length + 1, dtype=np.float64) ** settings.length_penalty, jnp.float32)
    always = whisper.suppression_mask(vocab, settings.suppress_tokens)
    first = always | whisper.suppression_mask(vocab, settings.begin_suppress_tokens)
    # The prompt runs once per clip; its cache is then the same for every beam of the clip.
    cache = steps.init_cache(batch, prompt_length + length)
    logits, cache = steps(prompt, 0, cache, cross)
    cache = [{name: jnp.repeat(layer[name], beams, axis=0) for name in layer} for layer in cache]
    logits = jnp.repeat(logits[:, -1], beams, axis=0)
    top_of_keep = jnp.arange(keep) < beams

    def reorder(values: jax.Array, parents: jax.Array) -> jax.Array:
        """Cache rows [batch * beams, ...] taken from each clip's `parents` [batch, beams]: within a clip, so
        that rows split over devices stay where they are."""
        return _take(values.reshape((batch, beams) + values.shape[1:]), parents).reshape(values.shape)

    def update(carry, logits, suppressed):
        step, active = carry["step"], ~carry["frozen"]
        log_probs = jnp.where(suppressed, -jnp.inf, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
        scores = log_probs.reshape(batch, beams, vocab) + carry["running_scores"][:, :, None]
        top_scores, top_index = jax.lax.top_k(scores.reshape(batch, beams * vocab), keep)
        parents, tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        candidates = _take(carry["running"], parents)
        candidates = jax.lax.dynamic_update_slice_in_dim(candidates, tokens[:, :, None], step, axis=2)
        ended = (tokens == eos) | (step + 1 >= limit)[:, None]
        # The best `beams` candidates that did not just end run on.
        running_scores = top_scores + ended.astype(jnp.float32) * NEG
        _, chosen = jax.lax.top_k(running_scores, beams)
        # Those among the best `beams` candidates that just ended join the finished hypotheses.
        just_finished = ended & top_of_keep[None, :]
        finished_scores = top_scores / penalty[step]
        full = jnp.all(carry["finished"], axis=-1, keepdims=True) & (settings.early_stopping is True)
        finished_scores += full.astype(jnp.float32) * NEG
        finished_scores += (~carry["improvable"])[:, None].astype(jnp.float32) * NEG
        finished_scores += (~just_finished).astype(jnp.float32) * NEG
        merged_scores = jnp.concatenate([carry["scores"], finished_scores], axis=1)
        _, best = jax.lax.top_k(merged_scores, beams)
        new = {
            "running": _take(candidates, chosen),
            "running_scores": _take(running_scores, chosen),
            "sequences": _take(jnp.concatenate([carry["sequences"], candidates], axis=1), best),
            "scores": _take(merged_scores, best),
            "finished": _take(jnp.concatenate([carry["finished"], just_finished], axis=1), best),
        }
        # Can a running beam still beat the worst finished hypothesis? (transformers' early-stop heuristic)
        if settings.early_stopping == "never" and settings.length_penalty > 0.0:
            best_length = penalty[limit - 1]
        else:
            best_length = penalty[step]
        best_possible = new["running_scores"][:, 0] / best_length
        worst = jnp.where(new["finished"], jnp.min(new["scores"], axis=1, keepdims=True), NEG)
        improvable = carry["improvable"] & jnp.any(best_possible[:, None] > worst, axis=1)
        stops = ~improvable | (step + 1 >= limit)
        if settings.early_stopping is True:
            stops = stops | jnp.all(new["finished"], axis=-1)
        carry = {
            **carry,
            **{name: _where_rows(active, value, carry[name]) for name, value in new.items()},
            "improvable": jnp.where(active, improvable, carry["improvable"]),
            "frozen": carry["frozen"] | stops,
        }
        return carry, new["running"][:, :, step].reshape(-1), _take(parents, chosen)

    running = jnp.full((batch, beams, length), eos, jnp.int32)
    carry = {
        "step": jnp.zeros((), jnp.int32),
        "frozen": ~live,
        "running": running,
        "running_scores": jnp.tile(jnp.where(jnp.arange(beams) == 0, 0.0, NEG).astype(jnp.float32), (batch, 1)),
        "sequences": running,
        "scores": jnp.full((batch, beams), NEG, jnp.float32),
        "finished": jnp.zeros((batch, beams), bool),
        "improvable": jnp.ones((batch,), bool),
    }
    carry, tokens, parents = update(carry, logits, first)

    def step(state):
        carry, cache, tokens, parents = state
        cache = [{name: reorder(layer[name], parents) for name in layer} for layer in cache]
        carry = {**carry, "step": carry["step"] + 1}
        logits, cache = steps(tokens[:, None], prompt_length + carry["step"] - 1, cache, cross)
        carry, tokens, parents = update(carry, logits[:, -1], always)
        return carry, cache, tokens, parents

    def keep_going(state):
        carry = state[0]
        return (carry["step"] < length - 1) & ~jnp.all(carry["frozen"])

    carry, *_ = jax.lax.while_loop(keep_going, step, (carry, cache, tokens, parents))
    return carry["sequences"][:, 0]


def search(
    model: whisper.Whisper,
    features: jax.Array,
    prompt: jax.Array,
    detect: jax.Array,
    live: jax.Array,
    limit: jax.Array,
    settings: SearchSettings,
) -> tuple[jax.Array, jax.Array]:
    """One pass: (new ids [batch, max_new_tokens], EOS after each row's end; the prompts [batch, prompt_length] the
    rows were decoded from) of log-mel `features` after `prompt` [batch, prompt_length]. Rows where `detect`
    [batch] is True get the detected language at `settings.language_slot` of their prompt (when
    `settings.language_ids` names the languages); `limit` [batch] caps each row's new tokens."""
    steps = whisper.DecoderSteps(model.decoder, model.config)
    cross = steps.cross_attention_memory(model.encoder(features))
    if settings.language_ids:
        language = detect_language(steps, cross, settings.decoder_start_token_id, settings.language_ids)
        slot = settings.language_slot
        prompt = prompt.at[:, slot].set(jnp.where(detect, language, prompt[:, slot]))
    if settings.num_beams == 1:
        return whisper.greedy_search(steps, cross, prompt, live, settings.greedy(), limit), prompt
    return beam_search(steps, cross, prompt, live, limit, settings), prompt
