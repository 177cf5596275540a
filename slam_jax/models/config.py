"""Decoder configuration (Qwen2, and Llama: the same block without q/k/v biases): named sizes, parameter
counting and the JSON stored beside weights."""

import dataclasses

from slam_jax import tokens
from slam_jax.settings import Settings, setting

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "xla", "splash", "pallas_gpu", "cudnn")  # models/attention.py
ARCHITECTURES = ("qwen2", "llama")  # the transformers model an export writes; the weights differ only by biases
ROPE_SCALINGS = ("none", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """Architecture plus the execution knobs (dtype, layer scan, remat, attention kernel) of the decoder.

    `rope_scaling="llama3"` rescales RoPE's inverse frequencies as Llama 3.1+ does, with the `rope_*` factors
    and `rope_original_max_position_embeddings` (the context of the unscaled pre-training); they are unused
    otherwise. A folder saved before these keys existed loads as the Qwen2 it is (the defaults).
    """

    vocab_size: int = setting(minimum=1)
    hidden_size: int = setting(minimum=1)
    intermediate_size: int = setting(minimum=1)
    num_layers: int = setting(minimum=1)
    num_heads: int = setting(minimum=1)
    num_kv_heads: int = setting(minimum=1)
    head_dim: int = setting(minimum=1)
    architecture: str = setting("qwen2", choices=ARCHITECTURES)
    rope_theta: float = setting(10_000.0, above=0)
    rope_scaling: str = setting("none", choices=ROPE_SCALINGS)
    rope_factor: float = setting(8.0, above=0)
    rope_low_freq_factor: float = setting(1.0, above=0)
    rope_high_freq_factor: float = setting(4.0, above=0)
    rope_original_max_position_embeddings: int = setting(8192, minimum=1)
    attention_bias: bool = True  # q/k/v biases: Qwen2 has them, Llama not
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = setting(1024, minimum=1)
    compute_dtype: str = setting("bfloat16", choices=COMPUTE_DTYPES)
    scan_layers: bool = True
    remat_policy: str = setting("none", choices=REMAT_POLICIES)
    attention: str = setting("auto", choices=ATTENTION_BACKENDS)

    def validate(self) -> None:
        """Grouped-query heads and RoPE's half-split need these sizes to divide; llama3 scaling needs its
        frequency band to be non-empty (it divides by high - low)."""
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{self._source}.num_heads={self.num_heads}: not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"{self._source}.head_dim={self.head_dim}: must be even for RoPE")
        if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError(
                f"{self._source}.rope_high_freq_factor={self.rope_high_freq_factor}: must be > "
                f"rope_low_freq_factor={self.rope_low_freq_factor} for llama3 RoPE scaling"
            )

    @property
    def num_query_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count from the shapes alone (no weights allocated)."""
        d, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.attention_bias else 0)
        mlp = 3 * d * self.intermediate_size
        per_layer = attention + mlp + 2 * d
        total = self.num_layers * per_layer + d
        if include_embedding:
            embedding = self.vocab_size * d
            total += embedding if self.tie_word_embeddings else 2 * embedding
        return total


def tiny(num_units: int = 20, **overrides) -> ModelConfig:
    """A few-thousand-parameter speech LM for tests: runs in milliseconds on a CPU."""
    values = dict(
        vocab_size=tokens.vocab_size_for(num_units),
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        compute_dtype="float32",
    )
    return ModelConfig(**{**values, **overrides})


def qwen2_5_0_5b(**overrides) -> ModelConfig:
    """Qwen2.5-0.5B, the text LM the Slam recipe starts from (docs/recipe.md §3)."""
    values = dict(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=1_000_000.0,
        max_position_embeddings=32_768,
    )
    return ModelConfig(**{**values, **overrides})


def llama3_2_1b(**overrides) -> ModelConfig:
    """Llama-3.2-1B, the text LM that scores transcripts for GenPPL (1,235,814,400 parameters)."""
    values = dict(
        architecture="llama",
        vocab_size=128_256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rope_theta=500_000.0,
        rope_scaling="llama3",
        rope_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
        attention_bias=False,
        rms_norm_eps=1e-5,
        max_position_embeddings=131_072,
    )
    return ModelConfig(**{**values, **overrides})


def llama3_1_8b(**overrides) -> ModelConfig:
    """Llama-3.1-8B(-Instruct), the size of an LLM judge (`eval.metric=llm_judge`; 8,030,261,248 parameters)."""
    values = dict(
        architecture="llama",
        vocab_size=128_256,
        hidden_size=4096,
        intermediate_size=14_336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=500_000.0,
        rope_scaling="llama3",
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
        attention_bias=False,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        max_position_embeddings=131_072,
    )
    return ModelConfig(**{**values, **overrides})


def slam(num_units: int = 500, **overrides) -> ModelConfig:
    """The Slam speech LM (paper Table 4): Qwen2.5-0.5B body, 502-token vocab, rope 1e4, context 1024."""
    values = dict(
        vocab_size=tokens.vocab_size_for(num_units),
        rope_theta=10_000.0,
        max_position_embeddings=1024,
    )
    return qwen2_5_0_5b(**{**values, **overrides})


def slam_small(num_units: int = 500, **overrides) -> ModelConfig:
    """A 12-layer, 512-wide speech LM (~46M params) for single-CPU or quick GPU experiments."""
    values = dict(
        vocab_size=tokens.vocab_size_for(num_units),
        hidden_size=512,
        intermediate_size=2048,
        num_layers=12,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
    )
    return ModelConfig(**{**values, **overrides})


def demo(num_units: int = 100, **overrides) -> ModelConfig:
    """A 4-layer, 128-wide speech LM that trains in minutes on a laptop CPU."""
    values = dict(
        vocab_size=tokens.vocab_size_for(num_units),
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        compute_dtype="float32",
    )
    return ModelConfig(**{**values, **overrides})


SPEECH_PRESETS = ("tiny", "demo", "slam_small", "slam")  # sized by num_units
PRESETS = {
    "tiny": tiny,
    "demo": demo,
    "slam_small": slam_small,
    "slam": slam,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "llama3_2_1b": llama3_2_1b,
    "llama3_1_8b": llama3_1_8b,
}


def from_preset(name: str, **overrides) -> ModelConfig:
    """The named size (`model.preset` in configs) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"model.preset={name!r} is not one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
