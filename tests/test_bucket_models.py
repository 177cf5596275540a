"""Models, conversion and evaluation with their files in a bucket (fake-gcs-server and moto's S3 server, the `gcs`
and `s3` fixtures): the converters into and out of a bucket; `load_model` (a model folder or a training workdir),
`load_vocoder`, `load_asr`, `load_text_lm` and `hubert.load_encoder` reading a gs:// bucket in place with the
results of a local disk; `mode: eval` reading its pairs from a bucket and writing its results there, and
`mode: generate` with its model, prompts, vocoder and outputs there, both writing what they write locally; an
export to s3://, and one-line failures for a missing folder, a missing bucket and model weights on s3://. Every
test works in a temporary current folder, which must stay free of a local `gs:` folder (what a bucket URL taken
for a local path makes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers
import whisper_fixtures
from speech_fixtures import random_hubert
from test_conversion import assert_bit_identical, state_dict
from test_vocoder import CONFIGS, embedding_tensors, reference_generator, save_textless, textless_state
from text_lm_fixtures import random_llama, save_word_tokenizer

import slam_jax
from configs import eval as eval_config
from configs import generate as generate_config
from conversion import flax_to_hf, hf_to_flax, hubert_to_flax, vocoder_to_flax, whisper_to_flax
from slam_jax import paths
from slam_jax.evaluation import generation, pair_metrics
from slam_jax.evaluation.text_lm import load_text_lm
from slam_jax.models import hubert, storage
from slam_jax.speech.asr import load_asr

ROOT = Path(__file__).resolve().parents[1]
NUM_UNITS = 20


@pytest.fixture
def workspace(gcs, tmp_path, monkeypatch) -> Path:
    """A temporary working folder (the current one) with its own cache of bucket files."""
    monkeypatch.setenv(paths.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / "gs:").exists(), "a bucket URL was taken for a local path"


def upload(folder: Path, url: str) -> str:
    paths.upload_dir(folder, paths.Path(url))
    return url


def one_error_line(capsys, code: int, *fragments: str) -> str:
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_convert_into_a_bucket_load_from_it_and_export_out_of_it(gcs, workspace, hf_checkpoint):
    original, folder = hf_checkpoint()
    bucket = gcs.bucket("models-convert")
    source = upload(folder, f"{bucket}/hf")  # the HF checkpoint itself in the bucket too
    assert hf_to_flax.main(["--model", source, "--out", f"{bucket}/flax"]) == 0
    hf_to_flax.convert(str(folder), workspace / "flax")
    remote = paths.Path(bucket) / "flax"
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in (workspace / "flax").iterdir())
    assert json.loads((remote / "provenance.json").read_text())["source"] == source
    assert storage.resolve_model_dir(str(remote)) == remote

    input_ids = np.random.default_rng(0).integers(0, 300, (2, 19))
    from_bucket = np.asarray(slam_jax.load_model(str(remote), compute_dtype="float32")(input_ids))
    from_disk = np.asarray(slam_jax.load_model(workspace / "flax", compute_dtype="float32")(input_ids))
    np.testing.assert_array_equal(from_bucket, from_disk)

    run = f"{bucket}/run"  # a training workdir: its newest checkpoint step is the model
    items = {
        storage.PARAMS_DIR: ocp.args.StandardSave(storage.load_params(workspace / "flax")),
        storage.CONFIG_ITEM: ocp.args.JsonSave(storage.load_config(workspace / "flax").to_dict()),
    }
    with ocp.CheckpointManager(f"{run}/checkpoints") as manager:
        manager.save(7, args=ocp.args.Composite(**items))
        manager.wait_until_finished()
    assert storage.resolve_model_dir(run) == paths.Path(run) / "checkpoints" / "7"
    from_step = np.asarray(slam_jax.load_model(run, compute_dtype="float32")(input_ids))
    np.testing.assert_array_equal(from_step, from_disk)

    assert flax_to_hf.main(["--checkpoint", str(remote), "--out", str(workspace / "back")]) == 0
    assert flax_to_hf.main(["--checkpoint", run, "--out", f"{bucket}/back"]) == 0
    for back in (workspace / "back", paths.local_copy(f"{bucket}/back")):
        reloaded = transformers.Qwen2ForCausalLM.from_pretrained(back).eval()
        assert_bit_identical(state_dict(reloaded), state_dict(original))


def test_eval_reads_pairs_from_a_bucket_and_writes_its_results_there(gcs, workspace, hf_checkpoint):
    _, folder = hf_checkpoint(vocab_size=NUM_UNITS + 2)
    bucket = gcs.bucket("models-eval")
    hf_to_flax.convert(str(folder), workspace / "speech")
    hf_to_flax.convert(str(folder), f"{bucket}/speech")
    rng = np.random.default_rng(3)
    lines = [
        {"positive": rng.integers(0, NUM_UNITS, n).tolist(), "negative": rng.integers(0, NUM_UNITS, m).tolist()}
        | {"subset": subset}
        for subset, (n, m) in zip("aabab", rng.integers(3, 20, (5, 2)), strict=True)
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (workspace / "pairs.jsonl").write_text(text)
    (paths.Path(bucket) / "pairs.jsonl").write_text(text)

    config = eval_config.get_config()
    config.eval.data_path, config.eval.model = str(workspace / "pairs.jsonl"), str(workspace / "speech")
    config.eval.progress = False
    local = pair_metrics.run(config, workspace / "run")["tstorycloze"]

    command = [sys.executable, "-m", "slam_jax.main", "--config", str(ROOT / "configs" / "eval.py")]
    command += [f"--config.eval.data_path={bucket}/pairs.jsonl", f"--config.eval.model={bucket}/speech"]
    command += [f"--workdir={bucket}/run", "--config.eval.progress=False"]
    environ = {**os.environ, **gcs.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=workspace, env=environ)
    assert result.returncode == 0, result.stderr[-2000:]
    out = paths.Path(bucket) / "run" / "eval"
    saved = json.loads((out / "tstorycloze.json").read_text())
    assert saved["model"] == f"{bucket}/speech" and saved["data_path"] == f"{bucket}/pairs.jsonl"
    for key in ("accuracy", "num_pairs", "breakdown", "num_skipped"):
        assert saved[key] == local[key], key
    rows = [json.loads(line) for line in (out / "tstorycloze_pairs.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (workspace / "run" / "eval" / "tstorycloze_pairs.jsonl").open()]
    assert rows == expected and len(rows) == len(lines)


def test_load_vocoder_and_generate_with_a_bucket_as_with_a_disk(gcs, workspace, hf_checkpoint):
    config = CONFIGS["durations"]
    checkpoint, config_file = save_textless(
        workspace / "textless", config, textless_state(reference_generator(config), embedding_tensors(config))
    )
    bucket = gcs.bucket("models-vocoder")
    upload(workspace / "textless", f"{bucket}/textless")
    assert vocoder_to_flax.main(["--checkpoint", str(checkpoint), "--config", str(config_file), "--out", "local"]) == 0
    remote = [f"{bucket}/textless/{checkpoint.name}", f"{bucket}/textless/{config_file.name}"]
    assert vocoder_to_flax.main(["--checkpoint", remote[0], "--config", remote[1], "--out", f"{bucket}/vocoder"]) == 0
    num_units = config["num_embeddings"]
    units = np.random.default_rng(4).integers(0, num_units, 17)
    here, there = slam_jax.load_vocoder("local"), slam_jax.load_vocoder(f"{bucket}/vocoder")
    assert there.predicts_durations and there.sample_rate == here.sample_rate
    np.testing.assert_array_equal(there.vocode(units), here.vocode(units))  # generate below predicts durations

    # mode: generate with its model, prompts, vocoder and outputs in the bucket writes what it writes locally
    _, folder = hf_checkpoint(vocab_size=num_units + 2)
    hf_to_flax.convert(str(folder), workspace / "speech")
    hf_to_flax.convert(str(folder), f"{bucket}/speech")
    rng = np.random.default_rng(5)
    prompts = [{"file_name": f"p{index}", "units": rng.integers(0, num_units, 6).tolist()} for index in range(3)]
    text = "".join(json.dumps(prompt) + "\n" for prompt in prompts)
    (workspace / "prompts.jsonl").write_text(text)
    (paths.Path(bucket) / "prompts.jsonl").write_text(text)
    outputs = []
    for root, workdir in ((str(workspace), workspace / "run"), (bucket, f"{bucket}/run")):
        job = generate_config.get_config()
        job.generate.model, job.generate.data_path = f"{root}/speech", f"{root}/prompts.jsonl"
        job.generate.vocoder = f"{root}/vocoder" if root == bucket else "local"
        job.generate.max_new_tokens, job.generate.progress = 8, False
        generation.run(job, workdir)
        out = paths.Path(workdir) / "generate"
        wavs = {name: (out / "audio" / name).read_bytes() for name in ("0000_full.wav", "0002_continuation.wav")}
        outputs.append(((out / "generations.jsonl").read_text(), wavs))
    assert outputs[1] == outputs[0]


def test_text_lm_whisper_and_hubert_convert_and_load_from_a_bucket_as_from_a_disk(gcs, workspace):
    bucket = gcs.bucket("models-genppl")
    random_llama("llama3_tied").save_pretrained(workspace / "llama")
    save_word_tokenizer(workspace / "llama")
    hf_to_flax.convert(str(workspace / "llama"), workspace / "text_lm")
    assert hf_to_flax.main(["--model", upload(workspace / "llama", f"{bucket}/llama"), "--out", f"{bucket}/lm"]) == 0
    texts = ["the cat sat on the mat", "a big red dog ran under the log", ""]
    here, there = load_text_lm(workspace / "text_lm"), load_text_lm(f"{bucket}/lm")
    np.testing.assert_array_equal(there.nll(texts), here.nll(texts))

    made = whisper_fixtures.tokenizer()
    model = transformers.WhisperForConditionalGeneration(whisper_fixtures.whisper_config(made)).eval()
    whisper_fixtures.randomise(model, seed=0)
    prompting = whisper_fixtures.generation_config(made, [])
    whisper_fixtures.save_checkpoint(workspace / "whisper", model, made, prompting)
    whisper_to_flax.convert(str(workspace / "whisper"), workspace / "asr")
    source = upload(workspace / "whisper", f"{bucket}/whisper")
    assert whisper_to_flax.main(["--model", source, "--out", f"{bucket}/asr"]) == 0
    here, there = load_asr(workspace / "asr"), load_asr(f"{bucket}/asr")
    assert there.prompting == here.prompting and there.tokenizer.get_vocab() == here.tokenizer.get_vocab()
    for mine, theirs in zip(jax.tree.leaves(there._state), jax.tree.leaves(here._state), strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))

    random_hubert().save_pretrained(workspace / "hubert")  # the tokeniser's encoder
    hubert_to_flax.convert(workspace / "hubert", workspace / "encoder")
    source = upload(workspace / "hubert", f"{bucket}/hubert")
    assert hubert_to_flax.main(["--model", source, "--out", f"{bucket}/encoder"]) == 0
    here, there = (
        hubert.get_params(hubert.load_encoder(path)) for path in (workspace / "encoder", f"{bucket}/encoder")
    )
    for mine, theirs in zip(jax.tree.leaves(there), jax.tree.leaves(here), strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_missing_folders_buckets_and_s3_weights_are_one_line_naming_them(gcs, workspace, capsys, hf_checkpoint):
    bucket = gcs.bucket("models-errors")
    nothing, no_bucket = f"{bucket}/nothing", "gs://no-such-bucket-here/model"
    with pytest.raises(FileNotFoundError, match=f"^{nothing}: no such model dir"):
        slam_jax.load_model(nothing)
    with pytest.raises(FileNotFoundError, match=f"^{no_bucket}: no such bucket gs://no-such-bucket-here$"):
        slam_jax.load_model(no_bucket)
    with pytest.raises(FileNotFoundError, match=f"^{nothing}: no such vocoder folder"):
        slam_jax.load_vocoder(nothing)
    with pytest.raises(FileNotFoundError, match=f"^{nothing}: no such Whisper model folder"):
        load_asr(nothing)
    with pytest.raises(FileNotFoundError, match=f"^{no_bucket}: no such bucket"):
        load_text_lm(no_bucket)
    with pytest.raises(ValueError, match=r"^s3://b/m: model weights cannot be on s3:// \(Orbax"):
        slam_jax.load_model("s3://b/m")

    _, folder = hf_checkpoint()
    capsys.readouterr()
    code = hf_to_flax.main(["--model", nothing, "--out", "out"])
    one_error_line(capsys, code, f"{nothing}: no such checkpoint folder")
    code = hf_to_flax.main(["--model", no_bucket, "--out", "out"])
    one_error_line(capsys, code, f"{no_bucket}: no such bucket gs://no-such-bucket-here")
    code = flax_to_hf.main(["--checkpoint", nothing, "--out", "out"])
    one_error_line(capsys, code, f"{nothing}: no such model dir")
    code = flax_to_hf.main(["--checkpoint", no_bucket, "--out", "out"])
    one_error_line(capsys, code, f"{no_bucket}: no such bucket gs://no-such-bucket-here")
    code = hf_to_flax.main(["--model", str(folder), "--out", no_bucket])
    one_error_line(capsys, code, f"{no_bucket}: no such bucket")
    code = hf_to_flax.main(["--model", str(folder), "--out", "s3://b/m"])
    one_error_line(capsys, code, "s3://b/m: model weights cannot be on s3://")
    assert not (workspace / "out").exists()

    config = eval_config.get_config()
    config.eval.data_path, config.eval.model = f"{bucket}/pairs.jsonl", nothing
    with pytest.raises(FileNotFoundError, match=f"eval.model='{nothing}': no such file or folder"):
        pair_metrics.run(config, workspace / "run")
    config.eval.model = str(workspace / "flax")
    hf_to_flax.convert(str(folder), workspace / "flax")
    with pytest.raises(FileNotFoundError, match=f"^{no_bucket}: no such bucket"):
        pair_metrics.run(config, no_bucket)

    (folder / "config.json").unlink()  # a checkpoint read from its local copy: errors name the bucket's object
    capsys.readouterr()
    code = hf_to_flax.main(["--model", upload(folder, f"{bucket}/broken"), "--out", "out"])
    one_error_line(capsys, code, f"{bucket}/broken/config.json: file not found")


def test_an_export_goes_to_s3_but_model_weights_do_not(s3, workspace, capsys, hf_checkpoint):
    original, folder = hf_checkpoint()
    bucket = s3.bucket("models-s3")
    hf_to_flax.convert(str(folder), workspace / "flax")
    capsys.readouterr()
    assert flax_to_hf.main(["--checkpoint", str(workspace / "flax"), "--out", f"{bucket}/back"]) == 0
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(paths.local_copy(f"{bucket}/back")).eval()
    assert_bit_identical(state_dict(reloaded), state_dict(original))
    capsys.readouterr()
    code = hf_to_flax.main(["--model", f"{bucket}/back", "--out", f"{bucket}/flax"])
    one_error_line(capsys, code, f"{bucket}/flax: model weights cannot be on s3://")
    with pytest.raises(ValueError, match=f"^{bucket}/speech: model weights cannot be on s3://"):
        storage.save_model(f"{bucket}/speech", storage.load_config(workspace / "flax"), {})
    # an HF checkpoint on s3:// converts (read from a local copy)
    assert hf_to_flax.main(["--model", f"{bucket}/back", "--out", str(workspace / "again")]) == 0
    again, first = (storage.load_params(workspace / name)["embed_tokens"] for name in ("again", "flax"))
    np.testing.assert_array_equal(again, first)
