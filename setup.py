"""slam_jax: the Slam speech-LM recipe (Maimon et al., 2025) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="slam_jax",
    version="0.1.0",
    description="Train speech language models the Slam way (one GPU, one day) in JAX/Flax, TPU to CPU.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["slam_jax", "slam_jax.*", "conversion", "conversion.*", "configs"]),
    install_requires=[
        "jax",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "grain",
        "ml-collections",
        "librosa",
        "soundfile",
        "transformers",
        "safetensors",
        "tqdm",
        "espeakng-loader",
        "absl-py",
        "pyarrow",
        "tensorboardX",
        "ml_dtypes",
        "numpy",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "torch==2.13.0", "ruff", "scikit-learn"],
        "notebook": ["jupyter"],
        "eval": ["scikit-learn"],
    },
)
