"""Tiny random stand-ins for what the notebooks download (no hub here): the same formats, a few KB each.

`build(folder)` writes, in the source formats the notebooks' conversion cells read:
- `qwen`: an HF Qwen2 text model (safetensors + config.json), for `conversion.hf_to_flax --twist`;
- `slam`: a slamkit speech LM (TWIST of `qwen`, exported by `conversion.flax_to_hf --format slamkit`), for the
  notebooks that start from a trained SLM (`slprl/slam_scaled`);
- `hubert`: an HF HuBERT with the 25 Hz front end, for `conversion.hubert_to_flax`;
- `kmeans`: a scikit-learn `KMeans` of 500 centroids over its features, saved with joblib (the official `.bin`);
- `vocoder_checkpoint` / `vocoder_config`: a unit HiFi-GAN in textlesslib's files (640 samples per unit at
  16 kHz, 500 units), and `vocoder`: it converted by `conversion.vocoder_to_flax` (which needs torch, absent on
  the notebooks' Python 3.12 here; Colab has it);
- `textless`: `vocoder_checkpoint`'s folder, as the notebooks' download cells leave it.
Built with torch and transformers (the reference stack of the tests), on the tests' Python.
"""

import json
from pathlib import Path

import joblib
import numpy as np
import torch
from conftest import random_hf_model
from hifi_gan.models import Generator
from sklearn.cluster import KMeans
from speech_fixtures import random_hubert
from test_vocoder import embedding_tensors, reference_generator, textless_state

from conversion import flax_to_hf, hf_to_flax, vocoder_to_flax

NUM_UNITS = 500
HUBERT_DIM = 32
# 16 kHz, 640 samples per unit (8 * 8 * 10): the 25 Hz vocoder's hop, with a few channels
VOCODER = dict(
    num_embeddings=NUM_UNITS,
    embedding_dim=8,
    model_in_dim=8,
    upsample_rates=[8, 8, 10],
    upsample_kernel_sizes=[16, 16, 20],
    upsample_initial_channel=16,
    resblock_kernel_sizes=[3],
    resblock_dilation_sizes=[[1, 3, 5]],
    sampling_rate=16_000,
)


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"building the notebooks' stand-in {what} failed (exit {code})")


def build(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    qwen = folder / "qwen2_text"
    random_hf_model(0, vocab_size=600).save_pretrained(qwen)
    paths["qwen"] = str(qwen)

    twist, slam = folder / "slam_twist_flax", folder / "slam_slamkit"
    twist_argv = ["--model", str(qwen), "--out", str(twist), "--twist", "--num_units", str(NUM_UNITS)]
    _check(hf_to_flax.main(twist_argv), "TWIST")
    _check(flax_to_hf.main(["--checkpoint", str(twist), "--out", str(slam), "--format", "slamkit"]), "slamkit")
    paths["slam"] = str(slam)

    hubert = folder / "mhubert_hf"
    random_hubert(0, hidden_size=HUBERT_DIM).save_pretrained(hubert)
    paths["hubert"] = str(hubert)

    features = np.random.default_rng(0).normal(0.0, 1.0, (4 * NUM_UNITS, HUBERT_DIM)).astype(np.float32)
    kmeans = KMeans(n_clusters=NUM_UNITS, n_init=1, max_iter=5, random_state=0).fit(features)
    paths["kmeans"] = str(folder / "mhubert_L11_km500.bin")
    joblib.dump(kmeans, paths["kmeans"])

    textless = folder / "textless"
    textless.mkdir(exist_ok=True)
    generator: Generator = reference_generator(VOCODER)
    state = textless_state(generator, embedding_tensors(VOCODER))
    paths["vocoder_checkpoint"] = str(textless / "hifigan_lj_mhubert_base_25hz.pt")
    paths["vocoder_config"] = str(textless / "hifigan_lj_mhubert_base_25hz_config.json")
    torch.save({"generator": state}, paths["vocoder_checkpoint"])
    Path(paths["vocoder_config"]).write_text(json.dumps(VOCODER))
    paths["textless"] = str(textless)
    vocoder = folder / "vocoder_flax"
    argv = ["--checkpoint", paths["vocoder_checkpoint"], "--config", paths["vocoder_config"], "--out", str(vocoder)]
    _check(vocoder_to_flax.main(argv), "vocoder")
    paths["vocoder"] = str(vocoder)
    return paths
