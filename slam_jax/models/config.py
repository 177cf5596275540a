"""Qwen2 decoder configuration: named sizes, parameter counting and the JSON stored beside weights."""

import dataclasses

from slam_jax import tokens
from slam_jax.settings import Settings, setting

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "xla", "splash", "pallas_gpu", "cudnn")  # models/attention.py


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
    """Architecture plus the execution knobs (dtype, layer scan, remat, attention kernel) of a Qwen2 decoder."""

    vocab_size: int = setting(minimum=1)
    hidden_size: int = setting(minimum=1)
    intermediate_size: int = setting(minimum=1)
    num_layers: int = setting(minimum=1)
    num_heads: int = setting(minimum=1)
    num_kv_heads: int = setting(minimum=1)
    head_dim: int = setting(minimum=1)
    rope_theta: float = setting(10_000.0, above=0)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = setting(1024, minimum=1)
    compute_dtype: str = setting("bfloat16", choices=COMPUTE_DTYPES)
    scan_layers: bool = True
    remat_policy: str = setting("none", choices=REMAT_POLICIES)
    attention: str = setting("auto", choices=ATTENTION_BACKENDS)

    def validate(self) -> None:
        """Grouped-query heads and RoPE's half-split need these sizes to divide."""
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{self._source}.num_heads={self.num_heads}: not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"{self._source}.head_dim={self.head_dim}: must be even for RoPE")

    @property
    def num_query_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count from the shapes alone (no weights allocated)."""
        d, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        attention = d * q + q + 2 * (d * kv + kv) + q * d
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
}


def from_preset(name: str, **overrides) -> ModelConfig:
    """The named size (`model.preset` in configs) with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"model.preset={name!r} is not one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
