"""Offline Llama text LMs for the tests: random `transformers` Llama models (every tensor random) with a word-level
tokenizer that prepends a BOS as Llama 3's does, and the reference's per-sample NLL of texts (slamkit's formula).
"""

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = "the a cat dog sat ran on under mat log and then it was very big small red blue green".split()
SPECIALS = ["<unk>", "<bos>", "<eos>"]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # wavelengths 6.3 .. 20,000 positions: kept below 4, interpolated in 4..16, divided by 8 above 16
    "original_max_position_embeddings": 16,
}
TINY_LLAMA = dict(
    vocab_size=len(SPECIALS) + len(WORDS),
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # not hidden / heads: q and o projections are not square
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)
CONFIGS = {
    "llama3_tied": dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True),
    "default_untied": dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=False),
}


def random_llama(name: str, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A LlamaForCausalLM with every tensor random (norm scales too), so no mapping hides."""
    return randomized(transformers.LlamaConfig(**TINY_LLAMA, **CONFIGS[name]), seed)


def randomized(config: transformers.LlamaConfig, seed: int = 0) -> transformers.LlamaForCausalLM:
    """The LlamaForCausalLM of `config` (eval mode) with every tensor drawn from `seed`: norm scales 1 + N(0, 0.2),
    the rest N(0, 0.3)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "norm" in parameter_name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.3)
    return model


def save_word_tokenizer(folder) -> None:
    """A word-level tokenizer that prepends <bos> (as Llama 3's does) and has no pad token, saved as transformers
    saves one."""
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


def reference_nll(model: transformers.LlamaForCausalLM, folder, texts: list[str]) -> np.ndarray:
    """slamkit's per-sample NLL: pad = eos, right padding, pad-id labels ignored, mean over the counted labels."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    labels = inputs["input_ids"].clone()
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
    ).view(shift_labels.shape)
    counted = (shift_labels != -100).sum(dim=1)
    return (losses.sum(dim=1) / counted).double().numpy()  # 0 / 0 = nan for a text with nothing counted
