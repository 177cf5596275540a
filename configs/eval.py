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
    config.seed = 0  # generative metrics: prompt i samples from (seed, i); also fits k-means for an mfcc tokeniser

    config.eval = ConfigDict()
    config.eval.metric = "tstorycloze"  # sblimp | sstorycloze | tstorycloze | swuggy | salmon | genppl | auto_bleu |
    # llm_judge; comma list for several
    config.eval.data_path = ""  # benchmark folder or pairs .jsonl, one per metric (comma list, same order);
    # each local, gs:// or s3://
    config.eval.model = ""  # converted model dir, training workdir (its newest checkpoint) or checkpoint step dir;
    # local or gs:// (Orbax reads model weights from local disks and gs:// only)
    config.eval.compute_dtype = "float32"  # float32 | bfloat16 | '' (the model's own); float32 avoids bf16 ties
    config.eval.batch_size = 32  # sequences (a pair is two) per scoring batch, over all local devices
    config.eval.salmon_parts = "all"  # SALMon parts to score (comma list of folder names) or all eight
    config.eval.units_cache = ""  # folder of cached audio units ('' = WORKDIR/units_cache); shared across runs
    config.eval.progress = True  # tqdm bar over scoring batches

    # genppl | auto_bleu (configs/genppl.py): prompts -> sampled units -> vocoder -> Whisper -> text LM
    config.eval.genppl = ConfigDict()
    config.eval.genppl.vocoder = ""  # conversion.vocoder_to_flax dir (an MFCC tokeniser dir: its inverse)
    config.eval.genppl.asr_model = ""  # conversion.whisper_to_flax dir (paper: openai/whisper-large-v3-turbo)
    config.eval.genppl.text_lm = ""  # conversion.hf_to_flax dir of a text LM (paper: meta-llama/Llama-3.2-1B)
    config.eval.genppl.prompt_files = "correct"  # correct: each pair's correct file (sStoryCloze) | all: every file
    config.eval.genppl.num_prompts = 1000  # the first N usable files (0 = all); paper: 1000
    config.eval.genppl.prompt_seconds = 3.0  # prompt = the first seconds of each file; shorter files are skipped
    config.eval.genppl.max_new_tokens = 150  # units sampled after the prompt (paper: 150)
    config.eval.genppl.temperature = 0.8  # paper: 0.8
    config.eval.genppl.top_k = 25  # paper: 25 (0 = off)
    config.eval.genppl.top_p = 1.0  # 1.0 = off
    config.eval.genppl.predict_durations = True  # the vocoder's duration predictor (the paper's vocoder has one)
    # Whisper (docs/recipe.md §6): single_pass = one greedy pass per clip, prompted for English (fast); the
    # reference (slamkit: transformers' ASR pipeline, no settings) = asr_decoding=reference, language=auto,
    # asr_num_beams=0, asr_max_new_tokens=0
    config.eval.genppl.asr_decoding = "single_pass"  # single_pass | reference (+ transformers' seek loop: a pass
    # that emits two timestamp tokens in a row is cut there and the clip decoded again from that time)
    config.eval.genppl.language = "en"  # Whisper's language token, or auto: detected per clip (as the reference)
    config.eval.genppl.asr_num_beams = 1  # 1 = greedy; 0 = the generation config's num_beams, else the pipeline's 5
    config.eval.genppl.asr_max_new_tokens = 128  # transcript tokens per pass at most (Whisper's limit: 444); 0 = the
    # generation config's max_new_tokens, else its max_length (448 - prompt), else the pipeline's 256
    config.eval.genppl.asr_batch_size = 16  # clips per Whisper batch, over all local devices
    config.eval.genppl.lm_batch_size = 16  # transcripts per text-LM batch
    config.eval.genppl.lm_compute_dtype = "float32"  # float32 | bfloat16
    config.eval.genppl.auto_bleu_n = 2  # Auto-BLEU-n of the transcripts' words (paper: 2)
    # llm_judge (configs/llm_judge.py): the prompt's and the continuation's transcripts rated 1-5 by a local chat LM
    config.eval.genppl.judge = ConfigDict()
    config.eval.genppl.judge.model = ""  # conversion.hf_to_flax dir of an instruction-tuned Llama / Qwen2 (its
    # tokenizer needs a chat template); slamkit asks GPT-4o, e.g. meta-llama/Llama-3.1-8B-Instruct here
    config.eval.genppl.judge.instruction = ""  # '' = slamkit's (llm_judge.INSTRUCTION); one of your own must hold
    # [prompt_audio_transcription] and [generated_audio_transcription], where the transcripts go
    config.eval.genppl.judge.max_new_tokens = 512  # answer tokens at most (slamkit's local judge: 512)
    config.eval.genppl.judge.temperature = 0.0  # 0 = greedy (slamkit's local judge samples at 0.8)
    config.eval.genppl.judge.top_k = 0  # 0 = off
    config.eval.genppl.judge.top_p = 1.0  # 1.0 = off
    config.eval.genppl.judge.seed = 0  # answer i samples from (seed, i) when temperature > 0
    config.eval.genppl.judge.batch_size = 16  # answers per batch, over all local devices
    config.eval.genppl.judge.compute_dtype = "bfloat16"  # float32 | bfloat16: the judge's weights are cast to it
    config.eval.genppl.judge.mesh = "fsdp"  # fsdp | tensor: how the judge's weights split over the local devices

    config.tokenize = tokenize.get_config().tokenize  # audio -> units: same keys and defaults as configs/tokenize.py
    del config.tokenize.data_path  # set per benchmark
    del config.tokenize.out_path  # the unit cache decides
    return config
