"""GenPPL and Auto-BLEU of generated speech, the paper's protocol (docs/recipe.md §6).

    python -m slam_jax.main --config configs/genppl.py --config.eval.data_path=SSTORYCLOZE_DIR \\
        --config.eval.model=PATH --config.eval.genppl.vocoder=DIR --config.eval.genppl.asr_model=DIR \\
        --config.eval.genppl.text_lm=DIR [--workdir W]

The first 1000 "correct" sStoryCloze files -> 3 s prompts -> 150 units (temperature 0.8, top-k 25) -> the unit
vocoder -> whisper-large-v3-turbo transcripts -> Llama-3.2-1B: GenPPL = exp(mean over transcripts of each one's
mean token NLL), and Auto-BLEU-2 of the transcripts. Convert the models first (README, "Conversion").
Paper (Slam, 1 GPU day): GenPPL 62.8, Auto-BLEU 3.88.
"""

from ml_collections import ConfigDict

from configs import eval as eval_config


def get_config() -> ConfigDict:
    config = eval_config.get_config()
    config.eval.metric = "genppl"  # genppl writes Auto-BLEU too; auto_bleu alone needs no text LM
    return config
