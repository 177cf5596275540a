"""Resynthesis: audio -> units -> audio, to hear what a tokeniser keeps and how a vocoder speaks its units.

    python -m slam_jax.main --config configs/resynthesize.py --config.resynthesize.data_path=AUDIO \\
        --config.resynthesize.vocoder=DIR [--workdir W]

Writes WORKDIR/resynthesize/<name>.wav per input file, resynthesis.jsonl (input, units vocoded, output, both
durations) and summary.json. The audio goes through the tokeniser below (the `tokenize` keys of
configs/tokenize.py), cached; for the offline MFCC tokeniser, give `--config.tokenize.encoder_path=mfcc
--config.tokenize.kmeans_path=DIR/centroids.npy --config.resynthesize.vocoder=DIR` with DIR its output folder.
"""

from ml_collections import ConfigDict

from configs import tokenize


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "resynthesize"  # the job: audio -> units -> audio
    config.seed = 0  # global seed (only used to fit k-means for an mfcc tokeniser)

    config.resynthesize = ConfigDict()
    config.resynthesize.data_path = ""  # audio folder / list file / glob (comma list for several)
    config.resynthesize.vocoder = ""  # vocoder dir (conversion.vocoder_to_flax), MFCC tokeniser dir or centroids .npy
    config.resynthesize.out_path = ""  # folder of the wavs ('' = WORKDIR/resynthesize); must not hold the inputs
    config.resynthesize.num_files = 0  # first N files in sorted order (0 = all)
    config.resynthesize.units_cache = ""  # folder of cached audio units ('' = WORKDIR/units_cache)
    config.resynthesize.progress = True  # tqdm bar over files

    config.tokenize = tokenize.get_config().tokenize  # audio -> units: same keys and defaults as configs/tokenize.py
    del config.tokenize.data_path  # set from resynthesize.data_path
    del config.tokenize.out_path  # the unit cache decides
    config.tokenize.dedup = False  # frame units at the input's timing (True: deduplicated, durations predicted)
    return config
