"""SpokenSwag, docs/recipe.md §5's DPO data: SWAG rows read by TTS (one voice per row), tokenised into pairs.

    python -m slam_jax.main --config configs/spokenswag.py --config.synth.text_path=swag/train.csv

SWAG rows: the HF `swag` "regular" csv (sent1, sent2, ending0..ending3, label) or a jsonl with those keys.
prompt = sent1, chosen = sent2 + the gold ending, rejected = sent2 + a seeded random wrong ending; rows whose
prompt + chosen text has Auto-BLEU-2 >= synth.auto_bleu_threshold are dropped. Writes OUT/preference.jsonl (feed
it to `preference.prepare` / configs/slam_dpo.py) next to OUT/tts, OUT/units and OUT/report.json.
"""

from ml_collections import ConfigDict

from configs import stinystories


def get_config() -> ConfigDict:
    config = stinystories.get_config()
    config.synth.kind = "spokenswag"  # stinystories | spokenswag
    config.synth.text_path = ""  # SWAG rows: .csv (HF swag 'regular') or .jsonl with the same keys
    config.synth.max_chars = 2000  # characters; SWAG sentences are short
    return config
