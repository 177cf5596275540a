"""Offline speech tokeniser: MFCC frames at 25 Hz + k-means fitted on the data itself; nothing to download.

    python -m slam_jax.main --config configs/tokenize_mfcc.py --config.tokenize.data_path=AUDIO_DIR

The first run fits `fit_units` centroids on a sample of the data's MFCC frames and saves them as
OUT/centroids.npy (or at `kmeans_path` if set), then tokenises; later runs reuse them. Units come out at
the paper's 25 Hz but carry less linguistic content than HuBERT's: this is for demos and tests.
"""

from configs import tokenize


def get_config():
    config = tokenize.get_config()
    config.tokenize.encoder_path = "mfcc"  # MFCC features, no encoder weights (paper: mhubert-base-25hz)
    config.tokenize.kmeans_path = ""  # '' = OUT/centroids.npy, fitted on the first run (paper: official km500)
    config.tokenize.fit_units = 100  # centroids to fit (paper: 500 over HuBERT features)
    config.tokenize.fit_num_init = 3  # k-means++ restarts (cheap on 20-dim MFCCs)
    return config
