"""Speech continuation, docs/recipe.md §6: prompt = first 3 s of audio, 150 new tokens, T 0.8, top-k 25.

    python -m slam_jax.main --config configs/generate.py --config.generate.data_path=AUDIO_OR_JSONL \\
        --config.generate.model=PATH [--workdir W]

Writes WORKDIR/generate/generations.jsonl (prompt and generated units per prompt, Auto-BLEU) and summary.json;
with `generate.vocoder` (a vocoder folder from conversion.vocoder_to_flax, an MFCC tokeniser's output folder, or
its centroids .npy read with the tokenize.mfcc keys), also each prompt + continuation and continuation alone as
wav files in WORKDIR/generate/audio/, named in generations.jsonl.
Audio prompts go through the tokeniser below (the `tokenize` keys of configs/tokenize.py), cached.
Paper (Slam, 1 GPU day): GenPPL 62.8, Auto-BLEU 3.88 (on ASR transcripts; here on units).
"""

from ml_collections import ConfigDict

from configs import tokenize


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "generate"  # the job: sample continuations
    config.seed = 0  # sampling seed: prompt i draws from (seed, i), whatever the batching

    config.generate = ConfigDict()
    config.generate.model = ""  # converted model dir, training workdir (its newest checkpoint) or checkpoint step dir
    config.generate.data_path = ""  # audio folder / list / glob, or a units .jsonl (features.jsonl, tokens.jsonl)
    config.generate.num_prompts = 0  # first N prompts in sorted order (0 = all; paper's GenPPL: 1000 sSC files)
    config.generate.prompt_seconds = 3.0  # s of each file used as the prompt (paper: 3; 0 = the whole file)
    config.generate.frame_seconds = 0.04  # s per unit frame, to crop units jsonl prompts (mHuBERT-25Hz: 0.04)
    config.generate.max_new_tokens = 150  # tokens sampled after the prompt (paper: 150, i.e. up to 6 s at 25 Hz)
    config.generate.temperature = 0.8  # softmax temperature (paper: 0.8; 0 = greedy)
    config.generate.top_k = 25  # sample among the k most likely tokens (paper: 25; 0 = off)
    config.generate.top_p = 1.0  # nucleus mass kept (paper: off = 1.0)
    config.generate.repetition_penalty = 1.0  # transformers-style penalty (paper: 1.0; reference uses 1.1 post-DPO)
    config.generate.batch_size = 32  # prompts per decode batch, over all local devices (reference: 32)
    config.generate.compute_dtype = "float32"  # float32 | bfloat16 | '' (the model's own)
    config.generate.auto_bleu_n = 2  # n-gram size of Auto-BLEU (paper: 2)
    config.generate.units_cache = ""  # folder of cached audio units ('' = WORKDIR/units_cache)
    config.generate.progress = True  # tqdm bar over decode batches
    config.generate.vocoder = ""  # vocoder dir, MFCC tokeniser dir or centroids .npy: wavs in generate/audio/
    config.generate.predict_durations = True  # the vocoder decides each unit's length (units are deduplicated)

    config.tokenize = tokenize.get_config().tokenize  # audio -> units: same keys and defaults as configs/tokenize.py
    del config.tokenize.data_path  # set from generate.data_path
    del config.tokenize.out_path  # the unit cache decides
    return config
