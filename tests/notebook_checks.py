"""Each notebook's CI parameters (tiny offline stand-ins for what it downloads) and the checks on what its run
produced: summary.json's numbers in range, the files it names (wavs at 16 kHz, PNG plots, checkpoints, exports).

`ci_params_NAME(workdir, stand_ins)` gives the parameters tests/test_notebooks.py injects (stand_ins: the paths of
tests/notebook_stand_ins.build); `check_NAME(workdir)` asserts on what the run wrote. The stand-in HuBERT has 3
layers (so CI passes `HUBERT_LAYER`/`LAYER` 3) and the stand-in vocoder no duration predictor.
"""

import json
import math
import struct
from pathlib import Path

import numpy as np
import soundfile


def _summary(workdir: Path) -> dict:
    path = Path(workdir, "summary.json")
    assert path.is_file(), f"{path}: the notebook's last cell did not write it"
    return json.loads(path.read_text())


def _png(path) -> None:
    path = Path(path)
    assert path.is_file(), f"{path}: missing plot"
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    assert width >= 300 and height >= 200, f"{path}: {width}x{height}"
    assert path.stat().st_size > 5_000, f"{path}: suspiciously small plot"


def _finite(value, what: str) -> float:
    assert isinstance(value, (int, float)) and math.isfinite(value), f"{what}={value!r}: not a finite number"
    return float(value)


def _all_finite(*values) -> None:
    for value in values:
        _finite(value, "value")


def _plots(workdir: Path, summary: dict, count: int) -> None:
    """summary.json's `plots`: `count` PNG files in `workdir`."""
    assert len(summary["plots"]) == count, summary["plots"]
    for name in summary["plots"]:
        _png(workdir / name)


def _speech_stand_ins(stand_ins: dict) -> dict:
    """The tokeniser and vocoder parameters (mHuBERT, its k-means, the converted vocoder) set to the stand-ins;
    the stand-in HuBERT has 3 layers."""
    return {
        "HUBERT": stand_ins["hubert"],
        "HUBERT_LAYER": 3,
        "KMEANS": stand_ins["kmeans"],
        "VOCODER": stand_ins["vocoder"],
    }


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _wav(path: Path, rate: int = 16_000, min_seconds: float = 0.1):
    assert Path(path).is_file(), f"{path}: missing wav"
    info = soundfile.info(str(path))
    assert info.samplerate == rate and info.channels == 1, f"{path}: {info.samplerate} Hz, {info.channels} channels"
    assert info.duration >= min_seconds, f"{path}: only {info.duration:.3f} s"
    return info


# quickstart ---------------------------------------------------------------------------------------------------


def ci_params_quickstart(workdir: Path, stand_ins: dict) -> dict:
    return {
        "WORKDIR": str(workdir),
        "QWEN": stand_ins["qwen"],
        "PRETRAIN_STEPS": 20,
        "PRETRAIN_BATCH": 4,
        "CONTEXT_LENGTH": 128,
        "SYNTHETIC_FILES": 200,
    }


def check_quickstart(workdir: Path) -> None:
    workdir = Path(workdir)
    summary = _summary(workdir)
    assert summary["platform"] == "cpu"
    twist = summary["twist"]
    assert twist["vocab_size"] == 502 and twist["parameters"] > 0
    assert json.loads(Path(twist["path"], "model_config.json").read_text())["vocab_size"] == 502
    names = set(twist["scores"])
    assert len(names) == 4 and names == set(summary["pretrain"]["scores"])
    for model in ("twist", "pretrain"):
        for name, score in summary[model]["scores"].items():
            assert -20 < _finite(score, f"{model} score {name}") < 0, f"{model} {name}: {score}"
    pretrain = summary["pretrain"]
    assert pretrain["steps"] == 20
    first, last = _finite(pretrain["first_loss"], "first_loss"), _finite(pretrain["last_loss"], "last_loss")
    assert abs(first - math.log(102)) < 0.3, f"first loss {first}: a fresh 102-token model starts near log(102)"
    assert last < first - 0.3, f"loss did not fall: {first} -> {last}"
    assert 0 < _finite(pretrain["validation_loss"], "validation_loss") < first
    assert (workdir / "pretrain" / "metrics.jsonl").is_file()
    # the repeated pattern is the easiest sequence for a model trained on repeated words
    scores = pretrain["scores"]
    assert scores["8 units, repeated 8 times"] > scores["64 random units"]
    for kind in ("hf", "slamkit"):
        assert summary["exports"][kind] == ["config.json", "model.safetensors"], summary["exports"]
    hf_config = json.loads((workdir / "export_hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["Qwen2ForCausalLM"] and hf_config["vocab_size"] == 102
    slamkit_config = json.loads((workdir / "export_slamkit" / "config.json").read_text())
    assert slamkit_config["vocab_size"] == 102
    diff = summary["logits_max_abs_diff"]
    assert diff is None or _finite(diff, "logits_max_abs_diff") < 1e-3  # None: no torch in the notebooks' venv
    _plots(workdir, summary, 3)


# tokenize -----------------------------------------------------------------------------------------------------


def ci_params_tokenize(workdir: Path, stand_ins: dict) -> dict:
    return {
        "WORKDIR": str(workdir),
        **_speech_stand_ins(stand_ins),
        "OWN_UNITS": 20,
        "NUM_SENTENCES": 2,
    }


def check_tokenize(workdir: Path) -> None:
    workdir = Path(workdir)
    summary = _summary(workdir)
    assert summary["platform"] == "cpu"
    assert summary["sentences"] == 2 and summary["audio_files"] == ["00.wav", "01.wav"]
    for name in summary["audio_files"]:
        _wav(workdir / "audio" / name, min_seconds=1.0)
    assert summary["tokenized"] == 2
    rows = [json.loads(line) for line in (workdir / "units" / "features.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2
    for row in rows:
        assert set(row) >= {"units", "duration", "file_name"} and len(row["units"]) == len(row["duration"]) > 0
        assert all(0 <= unit < 500 for unit in row["units"]) and all(run >= 1 for run in row["duration"])
        units = row["units"]
        assert all(a != b for a, b in zip(units, units[1:], strict=False)), "features.jsonl units are deduplicated"
        seconds = soundfile.info(row["file_name"]).duration
        assert abs(sum(row["duration"]) * 0.04 - seconds) < 0.1, f"{row['file_name']}: frames do not cover the audio"
    for key, size in (("official_units", 500), ("own_units", 20)):
        stats = summary[key]
        assert stats["codebook_size"] == size
        assert 1 <= stats["distinct_units"] <= size
        assert 0 < _finite(stats["units_per_second"], "units_per_second") <= 25.0 + 1e-6  # at most one per 40 ms
        assert _finite(stats["mean_run_frames"], "mean_run_frames") >= 1.0
        assert 0 <= _finite(stats["entropy_bits"], "entropy_bits") <= stats["max_entropy_bits"] + 1e-9
        assert abs(stats["max_entropy_bits"] - math.log2(size)) < 1e-9
    own_kmeans = Path(summary["own_kmeans"])
    assert own_kmeans.is_file() and own_kmeans.name == "own_km20.npy"
    own_rows = (workdir / "units_own" / "features.jsonl").read_text().splitlines()
    assert len(own_rows) == 2 and all(0 <= u < 20 for line in own_rows for u in json.loads(line)["units"])
    assert summary["resynthesis_sample_rate"] == 16_000
    assert len(summary["resynthesized"]) == 2
    for row in (json.loads(line) for line in (workdir / "resynthesize" / "resynthesis.jsonl").read_text().splitlines()):
        info = _wav(workdir / "resynthesize" / row["wav"])
        # frame units at the input's timing: the output lasts as long as the input, to a frame
        assert abs(info.duration - soundfile.info(row["file_name"]).duration) <= 0.04 + 1e-6
    _plots(workdir, summary, 3)


# generate_and_listen ------------------------------------------------------------------------------------------


def ci_params_generate_and_listen(workdir: Path, stand_ins: dict) -> dict:
    return {
        "WORKDIR": str(workdir),
        "SLM": stand_ins["slam"],
        **_speech_stand_ins(stand_ins),
        "PREDICT_DURATIONS": False,
        "NUM_PROMPTS": 2,
        "PROMPT_SECONDS": 1.0,
        "MAX_NEW_TOKENS": 30,
    }


def check_generate_and_listen(workdir: Path) -> None:
    workdir = Path(workdir)
    summary = _summary(workdir)
    assert summary["platform"] == "cpu"
    assert summary["prompts"] == 2 and summary["generated"] == 2
    assert json.loads(Path(summary["model"], "model_config.json").read_text())["vocab_size"] == 502
    assert summary["max_new_tokens"] == 30 and 0 < summary["new_tokens"] <= 60
    for key in ("auto_bleu_2", "auto_bleu_2_continuation"):
        assert 0.0 <= _finite(summary[key], key) <= 1.0
    assert len(summary["prompt_auto_bleu_2"]) == 2 and all(0 <= v <= 1 for v in summary["prompt_auto_bleu_2"])
    generate = workdir / "generate"
    assert json.loads((generate / "summary.json").read_text())["settings"]["top_k"] == 25
    rows = [json.loads(line) for line in (generate / "generations.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2
    for row in rows:
        assert 0 < len(row["prompt_units"]) <= 25  # 1 s of prompt: at most 25 frames
        assert 0 < len(row["units"]) <= 30 and all(0 <= unit < 500 for unit in row["units"])
        full = _wav(generate / row["wav_full"])
        continuation = _wav(generate / row["wav_continuation"], min_seconds=0.04)
        # no duration predictor here: one 40 ms frame per unit
        assert abs(continuation.duration - 0.04 * len(row["units"])) < 1e-6
        assert abs(full.duration - 0.04 * (len(row["prompt_units"]) + len(row["units"]))) < 1e-6
    assert summary["sample_rate"] == 16_000 and len(summary["wavs"]) == 4
    _plots(workdir, summary, 2)


# --- pretrain_tpu -------------------------------------------------------------------------------------------------
def ci_params_pretrain_tpu(workdir: Path, stand_ins: dict) -> dict:
    return {
        "WORKDIR": str(workdir),
        "QWEN": stand_ins["qwen"],  # 2 layers x 48 wide: the TWIST model itself is trained on the CPU
        "NUM_STORIES": 30,
        "FIRST_STEPS": 8,
        "TOTAL_STEPS": 12,
        "TIME_BUDGET": "3m",
    }


def check_pretrain_tpu(workdir: Path) -> None:
    summary = _summary(workdir)
    assert summary["platform"] == "cpu" and summary["devices"] >= 1
    assert summary["model"] == "twist", summary["model"]  # the stand-in is small enough to train on a CPU
    assert summary["parameters"] == 40_624, summary["parameters"]  # TWIST of the stand-in, 100 + 2 rows
    assert summary["attention"] == "xla", summary["attention"]  # auto on a CPU
    assert summary["mesh"] == "{'data': 1, 'fsdp': 1, 'tensor': 1}", summary["mesh"]
    assert summary["time_budget"] == "3m"
    assert summary["resumed_step"] == summary["first_steps"] == 8
    assert summary["final_step"] == summary["total_steps"] == 12
    _all_finite(summary["first_loss"], summary["final_loss"])
    assert 0 < summary["final_loss"] < summary["first_loss"] < 6, (summary["first_loss"], summary["final_loss"])
    assert summary["valid_evaluations"] >= 1
    after = summary["scores"]["after pre-training"]
    _all_finite(after["real"], after["shuffled"])
    assert after["real"] > summary["scores"]["TWIST init"]["real"]  # it learnt the corpus
    assert 0.0 <= after["real_preferred"] <= 1.0
    _png(summary["files"]["curves"])
    run = Path(summary["files"]["run"])
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12, steps
    rows = [row for row in _jsonl(run / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, 13)), [row["step"] for row in rows]
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["settings"]["data.num_units"] == 100
    assert json.loads(Path(summary["files"]["twist"], "model_config.json").read_text())["vocab_size"] == 102
    second = Path(workdir, "pretrain_second.log").read_text()
    assert "[pretrain] resumed from" in second and "(step 8)" in second
    first_step = summary["first_step_seconds"]  # each run's first step, its compilation included
    assert len(first_step) == 2 and all(seconds > 0 for seconds in first_step), first_step
    cache = f"(compilation cache {Path(workdir, 'xla_cache').absolute()})"  # COMPILATION_CACHE, the default
    assert all(cache in Path(workdir, log).read_text() for log in ("pretrain_first.log", "pretrain_second.log"))


# --- dpo ----------------------------------------------------------------------------------------------------------
def ci_params_dpo(workdir: Path, stand_ins: dict) -> dict:
    del stand_ins  # offline: MFCC units, a small model pre-trained in the notebook
    return {
        "WORKDIR": str(workdir),
        "MODEL": "",
        "NUM_ROWS": 32,
        "NUM_STORIES": 30,
        "PRETRAIN_STEPS": 5,
        "DPO_STEPS": 4,
        "TIME_BUDGET": "3m",
    }


def ci_params_dpo_converted(workdir: Path, stand_ins: dict) -> dict:
    """The real parameters' path: a slamkit model converted by hf_to_flax, the pairs tokenised by mHuBERT + k-means."""
    return {
        "WORKDIR": str(workdir),
        "MODEL": stand_ins["slam"],
        "HUBERT": stand_ins["hubert"],
        "LAYER": 3,
        "KMEANS": stand_ins["kmeans"],
        "NUM_ROWS": 32,
        "DPO_STEPS": 4,
        "TIME_BUDGET": "3m",
    }


def check_dpo(workdir: Path) -> None:
    summary = _summary(workdir)
    units = 100 if summary["offline"] else 500  # the demo's MFCC units, or the 500 of mHuBERT's k-means
    assert summary["num_units"] == units
    assert summary["pairs"] >= 24, summary["pairs"]  # 32 rows, few dropped by Auto-BLEU
    assert summary["held_out"] == max(8, min(64, summary["pairs"] // 10))
    assert summary["dpo_steps"] == 4
    first, last = summary["first"], summary["last"]
    for row in (first, last):
        _all_finite(*row.values())
        assert 0.0 <= row["reward_accuracy"] <= 1.0
        assert abs(row["reward_margin"] - (row["chosen_reward"] - row["rejected_reward"])) < 1e-4
    assert abs(first["loss"] - math.log(2)) < 0.02, first["loss"]  # policy == reference at step 1
    assert 0 < last["loss"] < 1.0
    for label in ("before DPO", "after DPO"):
        assert 0.0 <= summary["held_out_accuracy"][label] <= 1.0
        _all_finite(summary["held_out_mean_margin"][label])
    _png(summary["files"]["rewards"])
    _png(summary["files"]["before_after"])
    rows = _jsonl(summary["files"]["metrics"])
    assert all(key in rows[-1] for key in ("chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"))
    pair = _jsonl(summary["files"]["pairs"])[0]
    assert all(max(pair[part]["units"]) < units for part in ("prompt", "chosen", "rejected"))
    audio = Path(summary["files"]["pairs"]).parent / "tts" / "audio" / pair["id"]
    for part in ("prompt", "chosen", "rejected"):
        wav = (audio / f"{part}.wav").read_bytes()
        assert wav[:4] == b"RIFF" and struct.unpack("<I", wav[24:28])[0] == 16_000, f"{part}.wav not 16 kHz"


# --- evaluate -----------------------------------------------------------------------------------------------------
def ci_params_evaluate(workdir: Path, stand_ins: dict) -> dict:
    del stand_ins  # offline: MFCC units, a small model pre-trained in the notebook
    return {"WORKDIR": str(workdir), "MODEL": "", "NUM_PAIRS": 16, "NUM_STORIES": 30, "PRETRAIN_STEPS": 5}


def ci_params_evaluate_converted(workdir: Path, stand_ins: dict) -> dict:
    """The real parameters' path: a slamkit model converted by hf_to_flax, the pairs tokenised by mHuBERT + k-means."""
    return {
        "WORKDIR": str(workdir),
        "MODEL": stand_ins["slam"],
        "HUBERT": stand_ins["hubert"],
        "LAYER": 3,
        "KMEANS": stand_ins["kmeans"],
        "NUM_PAIRS": 8,
    }


def check_evaluate(workdir: Path) -> None:
    summary = _summary(workdir)
    expected = {"tstorycloze", "sblimp", "swuggy"}
    assert set(summary["accuracy"]) == expected, summary["accuracy"]
    pairs_wanted = 16 if summary["offline"] else 8
    for name in expected:
        assert summary["num_pairs"][name] == pairs_wanted, summary["num_pairs"]
        assert 0.0 <= summary["accuracy"][name] <= 1.0
        groups = summary["breakdown"][name]
        assert sum(group["pairs"] for group in groups.values()) == pairs_wanted
        for group in groups.values():
            low, high = group["ci95"]
            assert 0.0 <= low <= group["accuracy"] <= high <= 1.0, group
        scored = json.loads(Path(summary["files"]["scores"], f"{name}.json").read_text())
        assert scored["metric"] == name and scored["num_skipped"] == 0
        rows = _jsonl(Path(summary["files"]["scores"], f"{name}_pairs.jsonl"))
        assert len(rows) == pairs_wanted
        for row in rows:
            _all_finite(row["positive_log_likelihood"], row["negative_log_likelihood"])
            assert row["score"] in (0.0, 0.5, 1.0)
    report = Path(summary["files"]["report"]).read_text()
    assert "| benchmark | subset | pairs | accuracy | 95% CI |" in report and "tstorycloze" in report
    _png(summary["files"]["margins"])
    _png(summary["files"]["breakdown"])
    wav = next(Path(summary["benchmarks"]["sblimp"]).glob("*+correct.wav")).read_bytes()
    assert wav[:4] == b"RIFF" and struct.unpack("<I", wav[24:28])[0] == 16_000


# --- new_voice ----------------------------------------------------------------------------------------------------
def ci_params_new_voice(workdir: Path, stand_ins: dict) -> dict:
    del stand_ins  # offline: German sentences from espeak-ng, MFCC units, a tiny vocoder and LM trained in the notebook
    return {
        "WORKDIR": str(workdir),
        "ENCODER": "mfcc",
        "NUM_CLIPS": 12,
        "HELD_OUT": 2,
        "NUM_UNITS": 32,
        "VOCODER_SIZE": "tiny",
        "VOCODER_STEPS": 4,
        "LM_PRESET": "demo",
        "LM_STEPS": 5,
        "PROMPT_SECONDS": 1.0,
        "MAX_NEW_TOKENS": 20,
    }


def check_new_voice(workdir: Path) -> None:
    import slam_jax  # JAX only for this check (the vocoder folder must load)

    workdir = Path(workdir)
    summary = _summary(workdir)
    assert summary["platform"] == "cpu" and summary["language"] == "de"
    assert summary["recordings"] == 12 and summary["too_short"] == 0, summary
    assert summary["train_recordings"] == 10 and len(summary["held_out"]) == 2
    assert summary["encoder"] == "mfcc" and summary["frame_samples"] == 640 and summary["num_units"] == 32
    features = _jsonl(workdir / "units" / "features.jsonl")
    assert len(features) == 12 and all(0 <= unit < 32 for row in features for unit in row["units"])
    assert Path(summary["kmeans"]).is_file()
    train, held = _jsonl(workdir / "split" / "train.jsonl"), _jsonl(workdir / "split" / "held_out.jsonl")
    assert len(train) == 10 and [row["file_name"] for row in held] == summary["held_out"]
    assert not {row["file_name"] for row in train} & set(summary["held_out"]), "a held-out clip was trained on"
    # the vocoder: its run wrote metrics, checkpoints and TensorBoard; its folder loads and vocodes the units
    vocoder_summary = summary["vocoder"]
    run = Path(vocoder_summary["run"])
    rows = _jsonl(run / "metrics.jsonl")
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4], [row["step"] for row in steps]
    for row in steps:
        for key in ("loss", "mel_l1", "discriminator_loss", "feature_matching", "adversarial", "duration_mse"):
            _finite(row[key], key)
    validation = [row for row in rows if "validation_mel_l1" in row]
    assert [row["step"] for row in validation] == [4], validation
    assert 0 < _finite(validation[0]["validation_mel_l1"], "validation_mel_l1") < 20
    assert vocoder_summary["validation_mel_l1"] == [validation[0]["validation_mel_l1"]]
    assert (run / "checkpoints" / "4").is_dir() and list((run / "tensorboard").glob("events.out.tfevents.*"))
    vocoder = slam_jax.load_vocoder(vocoder_summary["dir"])
    assert vocoder.num_units == 32 and vocoder.hop_length == 640 and vocoder.sample_rate == 16_000
    assert vocoder.predicts_durations and vocoder_summary["predicts_durations"]
    wave = vocoder.vocode([3, 1, 4, 1, 5])
    assert wave.shape == (5 * 640,) and np.isfinite(wave).all()
    textless = vocoder_summary["textless"]  # None: no torch in the notebooks' venv (Colab has it)
    assert textless is None or textless == ["config.json", "generator.pt"], textless
    # resynthesis of the held-out clips at their own timing: as long as their frames
    assert len(summary["resynthesized"]) == 2
    for path, row in zip(summary["resynthesized"], held, strict=True):
        info = _wav(path)
        assert info.frames == 640 * sum(row["duration"]), (path, info.frames)
        _wav(Path(path).with_name(Path(path).stem + "_predicted_durations.wav"), min_seconds=0.04)
    # the speech LM and its continuations through the new vocoder
    lm = summary["lm"]
    assert lm["preset"] == "demo" and lm["steps"] == 5
    _all_finite(lm["first_loss"], lm["last_loss"])
    assert abs(lm["first_loss"] - math.log(34)) < 0.5, lm["first_loss"]  # a fresh 34-token model: near log(34)
    generate = summary["generate"]
    assert generate["prompts"] == 2 and 0 < generate["new_tokens"] <= 40
    for key in ("auto_bleu_2", "auto_bleu_2_continuation"):
        assert 0.0 <= _finite(generate[key], key) <= 1.0
    generations = _jsonl(workdir / "generate" / "generations.jsonl")
    assert sorted(row["file_name"] for row in generations) == sorted(summary["held_out"])
    for row in generations:
        assert all(0 <= unit < 32 for unit in row["units"])
        _wav(workdir / "generate" / row["wav_full"])
        _wav(workdir / "generate" / row["wav_continuation"], min_seconds=0.0)
    assert len(generate["wavs"]) == 4
    _plots(workdir, summary, 3)


# run id -> (notebook, its CI parameters): every notebook with its CI parameters, and the two whose CI parameters
# take the offline branch again with the real parameters' branch (converted models, mHuBERT units) on stand-ins
RUNS = {
    "quickstart": ("quickstart", ci_params_quickstart),
    "tokenize": ("tokenize", ci_params_tokenize),
    "pretrain_tpu": ("pretrain_tpu", ci_params_pretrain_tpu),
    "dpo": ("dpo", ci_params_dpo),
    "dpo_converted_models": ("dpo", ci_params_dpo_converted),
    "generate_and_listen": ("generate_and_listen", ci_params_generate_and_listen),
    "evaluate": ("evaluate", ci_params_evaluate),
    "evaluate_converted_models": ("evaluate", ci_params_evaluate_converted),
    "new_voice": ("new_voice", ci_params_new_voice),
}
CHECKS = {
    "quickstart": check_quickstart,
    "tokenize": check_tokenize,
    "pretrain_tpu": check_pretrain_tpu,
    "dpo": check_dpo,
    "generate_and_listen": check_generate_and_listen,
    "evaluate": check_evaluate,
    "new_voice": check_new_voice,
}
