"""sTinyStories, docs/recipe.md §4's synthetic pre-training data: TinyStories text read by TTS, then tokenised.

    python -m slam_jax.main --config configs/stinystories.py --config.synth.text_path=TinyStories-train.txt \\
        [--config.tokenize.encoder_path=mfcc --config.tokenize.kmeans_path= --config.tokenize.fit_units=100]

Writes OUT/tts (16 kHz wavs, manifest.jsonl, skipped.jsonl, report.json), OUT/units/features.jsonl (feed it to
`prepare`) and OUT/report.json; OUT = synth.out_path or WORKDIR/stinystories. Re-running resumes every step.
"""

from ml_collections import ConfigDict

from configs import tokenize


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "synthesize"  # the job: text -> TTS audio -> units
    config.seed = 0  # global seed (k-means fitting only, for an mfcc tokeniser)

    config.synth = ConfigDict()
    config.synth.kind = "stinystories"  # stinystories | spokenswag | tts (speak rows {"id", "text"}, no units)
    config.synth.text_path = ""  # stories: .txt (<|endoftext|>-separated, or one per line) or .jsonl with `text`
    config.synth.out_path = ""  # output folder ('' = WORKDIR/<kind>); re-running resumes
    config.synth.backend = "espeak"  # TTS backend name (tts.register_backend adds more; paper: a neural TTS)
    config.synth.voices = ""  # 'name:rate:pitch' comma list ('' = tts.DEFAULT_VOICES, 4 voices; paper: 4 speakers)
    config.synth.num_workers = 2  # TTS processes (espeak: one core each, a few hundred audio s per s)
    config.synth.seed = 0  # voice choice per row (a stable hash of id and seed)
    config.synth.max_chars = 10_000  # characters; longer texts are skipped and counted
    config.synth.auto_bleu_threshold = 0.3  # SpokenSwag only: keep prompt+chosen Auto-BLEU-2 below this (paper: 0.3)
    config.synth.progress = True  # tqdm bar with audio seconds per second

    config.tokenize = tokenize.get_config().tokenize  # audio -> units: same keys and defaults as configs/tokenize.py
    del config.tokenize.data_path  # the TTS audio folder
    del config.tokenize.out_path  # OUT/units
    return config
