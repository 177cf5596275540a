"""Shared fixtures: tiny random `transformers` Qwen2 models saved to disk, the independent reference."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu and the CUDA plugin are installed only to compile for them


def share_compiled_programs() -> None:
    """One JAX compilation cache for the whole test session: the pytest process, its xdist workers and every
    command a test starts (they inherit the environment). Many tests compile the same tiny programs (a resume,
    a second process, the same model in another test); XLA then compiles each once. The cache is new for each
    session (nothing from an earlier code version is reused) and removed at the end; a size cap turns on JAX's
    file lock, so two workers never read an entry the other is still writing."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # a worker (it inherits the session's) or the user's own
        return
    folder = tempfile.mkdtemp(prefix="slam-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=folder,
        JAX_COMPILATION_CACHE_MAX_SIZE=str(4 * 2**30),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


share_compiled_programs()


def keep_bucket_copies_in_the_session() -> None:
    """One local cache of bucket files (`SLAM_JAX_CACHE`, slam_jax/paths.py) for the session and its commands, removed
    at the end, rather than the user's ~/.cache/slam_jax."""
    if "SLAM_JAX_CACHE" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="slam-jax-test-bucket-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["SLAM_JAX_CACHE"] = folder


keep_bucket_copies_in_the_session()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

TINY_HF = dict(
    vocab_size=300,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10_000.0,
    tie_word_embeddings=True,
)


def random_hf_model(seed: int = 0, **overrides) -> transformers.Qwen2ForCausalLM:
    """A Qwen2ForCausalLM with every tensor random (biases and norm scales too), so no mapping hides."""
    config = transformers.Qwen2Config(**{**TINY_HF, **overrides})
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.15)
    return model


def hf_logits(model: transformers.Qwen2ForCausalLM, input_ids: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long), **kwargs).logits.float().numpy()


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: save a random HF model and return (model, folder)."""

    def make(name: str = "hf", seed: int = 0, save_kwargs: dict | None = None, **overrides):
        model = random_hf_model(seed, **overrides)
        folder = tmp_path / name
        model.save_pretrained(folder, **(save_kwargs or {}))
        return model, folder

    return make


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A fake-gcs-server on 127.0.0.1 for this test worker, its environment applied (see tests/buckets.py)."""
    import buckets

    server = buckets.gcs_server(tmp_path_factory.mktemp("gcs") / "server.log")
    server.use()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 for this test worker, its environment applied (see tests/buckets.py)."""
    import buckets

    server = buckets.s3_server()
    server.use()
    yield server
    server.stop()
