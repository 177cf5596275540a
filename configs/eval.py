"""Pair metrics, docs/recipe.md §6: sBLIMP, sStoryCloze, tStoryCloze, sWUGGY, SALMon (or a pairs jsonl).

    python -m slam_jax.main --config configs/eval.py --config.eval.metric=tstorycloze \\
        --config.eval.data_path=DIR --config.eval.model=PATH [--workdir W]

Score = minus the mean NLL of `[1, units + 2, 1]`; accuracy = how often the positive scores higher (ties 0.5).
Writes WORKDIR/eval/<metric>.json and <metric>_pairs.jsonl. Audio goes through the tokeniser below (the
`tokenize` keys of configs/tokenize.py); its units are cached, so later metrics and models reuse them.
Paper (Slam, 1 GPU day): sBLIMP 58.86, sStoryCloze 58.04, tStoryCloze 82.04.
"""

from ml_collections import ConfigDict

from configs import tokenize


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "eval"  # the job: pair metrics
    config.seed = 0  # global seed (only used to fit k-means for an mfcc tokeniser)

    config.eval = ConfigDict()
    config.eval.metric = "tstorycloze"  # sblimp | sstorycloze | tstorycloze | swuggy | salmon; comma list for several
    config.eval.data_path = ""  # benchmark folder or pairs .jsonl, one per metric (comma list, same order)
    config.eval.model = ""  # converted model dir, training workdir (its newest checkpoint) or checkpoint step dir
    config.eval.compute_dtype = "float32"  # float32 | bfloat16 | '' (the model's own); float32 avoids bf16 ties
    config.eval.batch_size = 32  # sequences (a pair is two) per scoring batch, over all local devices
    config.eval.salmon_parts = "all"  # SALMon parts to score (comma list of folder names) or all eight
    config.eval.units_cache = ""  # folder of cached audio units ('' = WORKDIR/units_cache); shared across runs
    config.eval.progress = True  # tqdm bar over scoring batches

    config.tokenize = tokenize.get_config().tokenize  # audio -> units: same keys and defaults as configs/tokenize.py
    del config.tokenize.data_path  # set per benchmark
    del config.tokenize.out_path  # the unit cache decides
    return config
