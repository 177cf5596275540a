"""LLM-as-judge of generated speech, slamkit's `llm_as_judge` with a local judge (docs/recipe.md §6).

    python -m slam_jax.main --config configs/llm_judge.py --config.eval.data_path=SSTORYCLOZE_DIR \\
        --config.eval.model=PATH --config.eval.genppl.vocoder=DIR --config.eval.genppl.asr_model=DIR \\
        --config.eval.genppl.judge.model=DIR [--workdir W]

The first 1000 "correct" sStoryCloze files -> 3 s prompts -> 150 units (temperature 0.8, top-k 25) -> the unit
vocoder (the continuation alone) -> whisper-large-v3-turbo transcripts of the prompt's audio and of the continuation
-> slamkit's instruction, as the user message of the judge's chat template -> the judge's answer (greedy, up to 512
tokens) -> the integer in its first \\boxed{...}; the metric is the mean over the answers that have one. slamkit asks
GPT-4o; here the judge is a converted instruction-tuned Llama or Qwen2 (e.g. meta-llama/Llama-3.1-8B-Instruct:
`python -m conversion.hf_to_flax --model DIR --out JUDGE_DIR`), its weights in bfloat16 sharded over the local
devices. Add `genppl` to the metrics (`--config.eval.metric=genppl,llm_judge`, one data path each) to get GenPPL
and Auto-BLEU of the same generations.
"""

from ml_collections import ConfigDict

from configs import eval as eval_config


def get_config() -> ConfigDict:
    config = eval_config.get_config()
    config.eval.metric = "llm_judge"  # writes Auto-BLEU of the same transcripts too; needs no text LM
    return config
