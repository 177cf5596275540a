"""Offline Whisper checkpoints for the tests and the benchmark: random `transformers` Whisper models saved with a
byte-level tokenizer, a generation config and a feature extractor config, as a hub checkpoint folder holds them.

The tokenizer's vocabulary is the 256 byte symbols (in GPT-2's byte order, so id 220 is the space, as in
Whisper's), then filler tokens, then Whisper's special tokens; its merges are empty, so text encodes byte by byte.
"""

from pathlib import Path

import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|fr|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
BYTES = 256
BLANK_ID = 220  # the space byte: Whisper's begin_suppress_tokens start with it


def tokenizer(vocab_size: int = BYTES + len(SPECIAL_TOKENS)) -> transformers.WhisperTokenizer:
    """A Whisper tokenizer of exactly `vocab_size` ids: bytes, fillers ("<w0>", ...), then the special tokens."""
    fillers = vocab_size - BYTES - len(SPECIAL_TOKENS)
    assert fillers >= 0, vocab_size
    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    vocab.update({f"<w{index}>": BYTES + index for index in range(fillers)})
    vocab[SPECIAL_TOKENS[0]] = len(vocab)
    made = transformers.WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    assert len(made) == vocab_size, len(made)
    return made


def token_id(made: transformers.WhisperTokenizer, token: str) -> int:
    return made.convert_tokens_to_ids(token)


def generation_config(made: transformers.WhisperTokenizer, suppress_tokens: list[int]) -> transformers.GenerationConfig:
    """Whisper's generation config for `made`: prompt ids, EOS, suppressed tokens, the old forced_decoder_ids."""
    eos = token_id(made, "<|endoftext|>")
    return transformers.GenerationConfig(
        decoder_start_token_id=token_id(made, "<|startoftranscript|>"),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        no_timestamps_token_id=token_id(made, "<|notimestamps|>"),
        is_multilingual=True,
        lang_to_id={language: token_id(made, language) for language in ("<|en|>", "<|fr|>")},
        task_to_id={task: token_id(made, f"<|{task}|>") for task in ("transcribe", "translate")},
        forced_decoder_ids=[[1, None], [2, token_id(made, "<|transcribe|>")]],
        suppress_tokens=suppress_tokens,
        begin_suppress_tokens=[BLANK_ID, eos],
        max_length=448,
        return_timestamps=False,
    )


def whisper_config(made: transformers.WhisperTokenizer, **overrides) -> transformers.WhisperConfig:
    """A small WhisperConfig (2 + 2 layers x 64, 80 mel bins, 30 s windows) whose token ids are `made`'s."""
    eos = token_id(made, "<|endoftext|>")
    values = dict(
        vocab_size=len(made),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        decoder_start_token_id=token_id(made, "<|startoftranscript|>"),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return transformers.WhisperConfig(**{**values, **overrides})


def randomise(model: transformers.WhisperForConditionalGeneration, seed: int, scale: float = 0.15) -> None:
    """Every tensor random (norm scales around 1, biases and both position tables too), so no mapping hides."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_norm_scale = "layer_norm" in name and name.endswith("weight")
            parameter.copy_(1.0 + 0.2 * noise if is_norm_scale else scale * noise)


def save_checkpoint(
    folder: Path,
    model: transformers.WhisperForConditionalGeneration,
    made: transformers.WhisperTokenizer,
    generation: transformers.GenerationConfig,
) -> Path:
    """`model` (safetensors + config.json + generation_config.json), the tokenizer and the feature extractor's
    config, as a hub checkpoint folder holds them."""
    model.generation_config = generation
    model.save_pretrained(folder)
    made.save_pretrained(folder)
    transformers.WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(folder)
    return folder
