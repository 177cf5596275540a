"""`mode: tokenize` with its paths in buckets (issue 27): audio read from gs://, outputs (parts, features.jsonl,
errors.jsonl, report.json, tokenizer.json, the unit store, fitted centroids) written to gs:// and s3://, the same
bytes as a local run; a kill and a re-run, two hosts into one bucket folder, and bad bucket paths as one line.
Real servers on 127.0.0.1 (tests/buckets.py)."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
from multihost import launch
from speech_fixtures import ESPEAK_RATE, SENTENCES, random_hubert, synthesize
from test_tokenize import NATIVE_LOG, read_jsonl, settings

from conversion import hubert_to_flax
from slam_jax import paths
from slam_jax.models import kmeans
from slam_jax.speech import audio, features, tokenize

ROOT = Path(__file__).resolve().parents[1]
SPEECH = [f"a{index}.wav" for index in range(len(SENTENCES))]
BAD = {"b_empty.wav": "empty file (0 bytes)", "b_notes.mp3": "not readable as audio"}
SHARD_SIZE = 2  # 6 files: 3 parts
MFCC = dict(encoder_path="mfcc", shard_size=SHARD_SIZE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """This module's own cache of bucket files (encoder_path copies), for it and the commands it starts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(paths.CACHE_VARIABLE, str(tmp_path_factory.mktemp("bucket-cache")))
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(local audio folder, local MFCC centroids): the sentences spoken by espeak-ng and two bad files."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, sentence in zip(SPEECH, SENTENCES, strict=True):
        soundfile.write(folder / name, synthesize(sentence).astype(np.float32) / 32768, ESPEAK_RATE)
    (folder / "b_empty.wav").write_bytes(b"")
    (folder / "b_notes.mp3").write_text("not audio at all\n")
    samples = audio.read_audio(str(folder / SPEECH[1])).samples
    frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
    chosen = frames[np.random.default_rng(0).choice(len(frames), 12, replace=False)]
    return folder, kmeans.save_centroids(tmp_path_factory.mktemp("centroids") / "km12.npy", chosen)


@pytest.fixture(scope="module")
def bucket_corpus(gcs, corpus, cache) -> tuple[str, str]:
    """(gs:// audio folder, gs:// centroids): the corpus uploaded, with a list file of relative names."""
    folder, centroids = corpus
    root = gcs.bucket("tokenize-input")
    fs = paths.filesystem(root)
    for file in sorted(folder.iterdir()):
        fs.put_file(str(file), f"{paths.object_key(root)}/audio/{file.name}")
    fs.pipe_file(f"{paths.object_key(root)}/audio/speech.txt", "".join(f"{name}\n" for name in SPEECH).encode())
    fs.put_file(str(centroids), f"{paths.object_key(root)}/km12.npy")
    return f"{root}/audio", f"{root}/km12.npy"


@pytest.fixture(scope="module")
def bucket_run(gcs, bucket_corpus, tmp_path_factory) -> tuple[str, dict]:
    """(gs:// out folder, report): the bucket corpus tokenised into a bucket, centroids read from the bucket."""
    data, centroids = bucket_corpus
    out = f"{gcs.bucket('tokenize-output')}/one"
    return out, tokenize.run(settings(data, out, kmeans_path=centroids, **MFCC), tmp_path_factory.mktemp("workdir"))


def overrides(data: str, out: str, centroids: str) -> list[str]:
    """The command-line flags of `settings(data, out, kmeans_path=centroids, **MFCC)`."""
    values = {"data_path": data, "out_path": out, "kmeans_path": centroids, "progress": False, "buckets_per_octave": 1}
    return [f"--config.tokenize.{key}={value}" for key, value in {**values, **MFCC}.items()]


def finished(process: subprocess.Popen, timeout: float = 180) -> str:
    """The stderr of `process` once it has exited; past `timeout` it is aborted (its faulthandler shows where it
    stood) and the test fails with that."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stderr = process.communicate()[1]
        raise AssertionError(f"{process.args} still running after {timeout} s:\n{stderr[-6000:]}") from None


def command_env(server) -> dict[str, str]:
    """The environment of a command that uses `server`; a Python fault dumps every thread's stack."""
    return {**os.environ, **server.environ, "PYTHONFAULTHANDLER": "1"}


def read_bytes(url: str) -> bytes:
    return paths.Path(url).read_bytes()


def store_arrays(store: str | Path) -> dict[str, np.ndarray]:
    """{relative name: array} of every .npy of a unit store, local or in a bucket."""
    if not paths.is_remote(store):
        return {str(path.relative_to(store)): np.load(path) for path in sorted(Path(store).rglob("*.npy"))}
    fs, key = paths.filesystem(store), paths.object_key(store)
    names = [name for name in sorted(fs.find(key)) if name.endswith(".npy")]
    return {name[len(key) + 1 :]: np.load(io.BytesIO(fs.cat_file(name))) for name in names}


def test_bucket_audio_into_a_bucket_is_what_a_local_run_writes(
    tmp_path, monkeypatch, corpus, bucket_corpus, bucket_run
):
    monkeypatch.chdir(tmp_path)  # a bucket path taken for a local one would show up here as `gs:/...`
    folder, centroids = corpus
    data, _ = bucket_corpus
    out, report = bucket_run
    assert report["files"] == 6 and report["tokenized"] == 4 and report["failed"] == 2 and report["merged"]
    assert report["out"] == out and report["store"]["path"] == f"{out}/store"

    # The same audio from the bucket into a local folder: the same bytes.
    local = tmp_path / "local"
    local_report = tokenize.run(settings(data, local, kmeans_path=str(centroids), **MFCC), tmp_path)
    assert read_bytes(f"{out}/{tokenize.FEATURES}") == (local / tokenize.FEATURES).read_bytes()
    assert read_bytes(f"{out}/{tokenize.ERRORS}") == (local / tokenize.ERRORS).read_bytes()
    assert json.loads(read_bytes(f"{out}/{tokenize.REPORT}")) == report
    speed = ("seconds", "audio_seconds_per_second", "files_per_second", "out", "store")
    assert {k: v for k, v in report.items() if k not in speed} == {
        k: v for k, v in local_report.items() if k not in speed
    }
    bucket_store, local_store = store_arrays(f"{out}/{tokenize.STORE}"), store_arrays(local / tokenize.STORE)
    assert sorted(bucket_store) == sorted(local_store) and "train/shard-00000.tokens.npy" in local_store
    for name, array in local_store.items():
        np.testing.assert_array_equal(bucket_store[name], array, err_msg=name)
    for name in ("train/manifest.json", "valid/manifest.json", "prepare_summary.json"):
        assert paths.Path(f"{out}/{tokenize.STORE}/{name}").is_file(), name
    description = json.loads(read_bytes(f"{out}/{tokenize.DESCRIPTION}"))
    assert description["kmeans"] == bucket_corpus[1] and description["num_units"] == 12
    part_names = sorted(path.name for path in paths.Path(f"{out}/{tokenize.PARTS}").iterdir())
    assert len(part_names) == 6 and all(name.startswith("host0000of0001-shard") for name in part_names)
    errors = {Path(line["file_name"]).name: line["reason"] for line in read_jsonl(local / tokenize.ERRORS)}
    assert sorted(errors) == sorted(BAD) and all(BAD[name] in reason for name, reason in errors.items())

    # The same audio read from the local disk: the same units (only the file names differ).
    from_disk = tmp_path / "from_disk"
    tokenize.run(settings(folder, from_disk, kmeans_path=str(centroids), **MFCC), tmp_path)
    lines = read_jsonl(local / tokenize.FEATURES)
    assert [line["file_name"] for line in lines] == [f"{data}/{name}" for name in SPEECH]
    assert [
        {**line, "file_name": Path(line["file_name"]).name} for line in read_jsonl(from_disk / tokenize.FEATURES)
    ] == [{**line, "file_name": Path(line["file_name"]).name} for line in lines]
    assert not any(path.name.startswith(("gs:", "s3:")) for path in tmp_path.rglob("*"))


def test_bucket_folders_globs_and_list_files_name_the_same_audio(bucket_corpus):
    data, _ = bucket_corpus
    everything = [f"{data}/{name}" for name in sorted([*SPEECH, *BAD])]
    assert audio.list_audio(data) == audio.list_audio(f"{data}/") == everything
    assert audio.list_audio(f"{data}/a*.wav") == audio.list_audio(f"{data}/speech.txt") == everything[:4]
    assert audio.list_audio(f"{data}/a1.wav,{data}/a*.wav") == [everything[1], everything[0], *everything[2:4]]
    assert audio.probe_seconds(everything[0]) == pytest.approx(
        soundfile.info(io.BytesIO(read_bytes(everything[0]))).duration
    )


# `python -m slam_jax.main` that pauses before its second shard (as a long shard would), so that the kill below
# lands after the first part is written and before the job ends, whatever the machine's speed.
PAUSED_BEFORE_SECOND_SHARD = """
import runpy, sys, time
from slam_jax.speech import tokenize
shard, calls = tokenize._tokenize_shard, []
def paused(*args, **kwargs):
    calls.append(None)
    if len(calls) == 2:
        time.sleep(600)
    return shard(*args, **kwargs)
tokenize._tokenize_shard = paused
sys.argv[0] = "slam_jax.main"
runpy.run_module("slam_jax.main", run_name="__main__", alter_sys=True)
"""


def test_a_killed_run_into_a_bucket_resumes_to_the_same_output(tmp_path, gcs, bucket_corpus, bucket_run):
    data, centroids = bucket_corpus
    out = f"{gcs.bucket('tokenize-output')}/killed"
    args = ["--config", "configs/tokenize.py", "--workdir", str(tmp_path), *overrides(data, out, centroids)]
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_BEFORE_SECOND_SHARD, *args],
        cwd=ROOT,
        env=command_env(gcs),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fs, parts = paths.filesystem(out), f"{paths.object_key(out)}/{tokenize.PARTS}"
    deadline = time.monotonic() + 120
    written = []
    while not written and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        written = [name for name in fs.find(parts) if name.endswith(".jsonl") and not name.endswith(".errors.jsonl")]
    process.send_signal(signal.SIGKILL)
    stderr = finished(process)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    assert len(written) == 1 and "-shard000000-" in written[0], written
    first_part = {name: fs.info(name) for name in fs.find(parts)}
    assert len(first_part) == 2  # the first shard's features and errors, nothing half-written
    assert not paths.Path(f"{out}/{tokenize.FEATURES}").exists()

    report = tokenize.run(settings(data, out, kmeans_path=centroids, **MFCC), tmp_path)
    assert report["resumed_files"] == SHARD_SIZE and report["tokenized_this_run"] == 2 and report["failed"] == 2
    for name, info in first_part.items():  # the committed part was not written again
        again = fs.info(name)
        assert (again["generation"], again["updated"]) == (info["generation"], info["updated"]), name
    assert len(fs.find(parts)) == 6
    reference, _ = bucket_run
    assert read_bytes(f"{out}/{tokenize.FEATURES}") == read_bytes(f"{reference}/{tokenize.FEATURES}")
    assert read_bytes(f"{out}/{tokenize.ERRORS}") == read_bytes(f"{reference}/{tokenize.ERRORS}")
    assert not (ROOT / "gs:" / "tokenize-output").exists()  # the command's cwd: no bucket path taken for a local one


def test_two_hosts_into_one_bucket_folder_write_what_one_writes(tmp_path, gcs, bucket_corpus, bucket_run):
    data, centroids = bucket_corpus
    out = f"{gcs.bucket('tokenize-output')}/two"
    args = ["--config", "configs/tokenize.py", "--workdir", str(tmp_path / "workdir"), *overrides(data, out, centroids)]
    results = launch(args, tmp_path / "writes", devices=1)
    lines = [[line for line in result.stdout.splitlines() if line.startswith("tokenized ")] for result in results]
    assert lines[0] == lines[1] and lines[0][0].startswith("tokenized 4 of 6 files (2 failed, 0 truncated, 0 from")

    reference, _ = bucket_run
    for name in (tokenize.FEATURES, tokenize.ERRORS):
        assert read_bytes(f"{out}/{name}") == read_bytes(f"{reference}/{name}"), name
    two_store, one_store = store_arrays(f"{out}/{tokenize.STORE}"), store_arrays(f"{reference}/{tokenize.STORE}")
    assert sorted(two_store) == sorted(one_store)
    for name, array in one_store.items():
        np.testing.assert_array_equal(two_store[name], array, err_msg=name)
    part_names = [path.name for path in paths.Path(f"{out}/{tokenize.PARTS}").iterdir()]
    hosts = sorted({name.split("-")[0] for name in part_names})
    assert hosts == ["host0000of0002", "host0001of0002"] and len(part_names) == 2 * 4  # 3 files per host: 2 shards
    report = json.loads(read_bytes(f"{out}/{tokenize.REPORT}"))
    assert report["hosts"] == 2 and report["tokenized"] == 4 and report["failed"] == 2 and report["out"] == out
    assert not (ROOT / "gs:" / "tokenize-output").exists()


def test_into_s3_with_centroids_fitted_there(tmp_path, s3, corpus, cache):
    folder, _ = corpus
    out = f"{s3.bucket('tokenize-s3')}/units"
    fitted = dict(kmeans_path="", fit_units=8, **MFCC)
    report = tokenize.run(settings(folder, out, **fitted), tmp_path)
    local = tmp_path / "local"
    local_report = tokenize.run(settings(folder, local, **fitted), tmp_path)
    assert report["tokenized"] == local_report["tokenized"] == 4 and report["store"]["path"] == f"{out}/store"
    np.testing.assert_array_equal(
        kmeans.load_centroids(f"{out}/{tokenize.FITTED_CENTROIDS}"), np.load(local / tokenize.FITTED_CENTROIDS)
    )
    for name in (tokenize.FEATURES, tokenize.ERRORS):
        assert read_bytes(f"{out}/{name}") == (local / name).read_bytes(), name
    assert json.loads(read_bytes(f"{out}/{tokenize.DESCRIPTION}"))["kmeans"] == f"{out}/{tokenize.FITTED_CENTROIDS}"
    assert sorted(store_arrays(f"{out}/{tokenize.STORE}")) == sorted(store_arrays(local / tokenize.STORE))
    again = tokenize.run(settings(folder, out, **fitted), tmp_path)  # the fitted centroids are read back
    assert again["resumed_files"] == 6 and again["tokenized_this_run"] == 0
    assert read_bytes(f"{out}/{tokenize.FEATURES}") == (local / tokenize.FEATURES).read_bytes()


def test_a_missing_bucket_or_folder_is_one_error_line(tmp_path, gcs, bucket_corpus):
    data, centroids = bucket_corpus
    cases = {  # data_path: what the line says of it
        "gs://no-such-bucket/x": "no such bucket gs://no-such-bucket",
        f"{data}/absent": "no such audio folder, file, list or glob match",
    }
    running = {}
    for url in cases:  # side by side: most of each command's time is starting Python and JAX
        command = [sys.executable, "-m", "slam_jax.main", "--config", "configs/tokenize.py", "--workdir", str(tmp_path)]
        values = {"data_path": url, "encoder_path": "mfcc", "kmeans_path": centroids}
        command += [f"--config.tokenize.{key}={value}" for key, value in values.items()]
        running[url] = subprocess.Popen(
            command,
            cwd=ROOT,
            env=command_env(gcs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for url, process in running.items():
        stderr = finished(process)
        lines = [line for line in stderr.strip().splitlines() if not NATIVE_LOG.match(line)]
        assert process.returncode == 1, stderr[-3000:]
        assert lines == [f"error: {url}: {cases[url]}"], stderr[-3000:]
    # An output folder in a missing bucket fails before any work (gcsfs would otherwise make the bucket).
    with pytest.raises(FileNotFoundError, match="^gs://no-such-bucket/out: no such bucket gs://no-such-bucket$"):
        tokenize.run(settings(data, "gs://no-such-bucket/out", kmeans_path=centroids, **MFCC), tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^{data}/absent.txt: no such audio folder"):
        audio.list_audio(f"{data}/a0.wav,{data}/absent.txt")
    with pytest.raises(FileNotFoundError, match=f"^{data}/nothing\\*.wav: no such audio folder"):
        audio.list_audio(f"{data}/nothing*.wav")
    with pytest.raises(FileNotFoundError, match="^gs://no-such-bucket/km.npy: centroids file not found$"):
        kmeans.load_centroids("gs://no-such-bucket/km.npy")


def test_an_encoder_and_centroids_in_a_bucket_load_as_the_local_ones(tmp_path, gcs, cache):
    """`tokenize.encoder_path` / `kmeans_path` in a bucket: the encoder copied into the cache, the same parameters
    and centroids as the local files (the encoder is not run: test_tokenize runs HuBERT encoders)."""
    random_hubert(seed=3, num_hidden_layers=1).save_pretrained(tmp_path / "hf")
    local = hubert_to_flax.convert(tmp_path / "hf", tmp_path / "encoder")
    centroids = kmeans.save_centroids(tmp_path / "km8.npy", np.random.default_rng(0).normal(size=(8, 32)))
    root = gcs.bucket("tokenize-models")
    fs = paths.filesystem(root)
    fs.put(str(local), f"{paths.object_key(root)}/encoder", recursive=True)
    fs.put_file(str(centroids), f"{paths.object_key(root)}/km8.npy")

    def job(encoder: str, kmeans_path: str) -> tokenize.TokenizeSettings:
        config = settings(tmp_path, tmp_path / "out", encoder_path=encoder, kmeans_path=kmeans_path, layer=1)
        return tokenize.TokenizeJob.from_config(config, "config").tokenize  # checks that both exist

    remote, here = job(f"{root}/encoder", f"{root}/km8.npy"), job(str(local), str(centroids))
    ours, theirs = tokenize.build_encoder(remote), tokenize.build_encoder(here)
    assert jax.tree.structure(ours.params) == jax.tree.structure(theirs.params)
    for mine, reference in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params), strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(reference))
    assert paths.local_copy(f"{root}/encoder").is_relative_to(paths.cache_dir())
    np.testing.assert_array_equal(kmeans.load_centroids(f"{root}/km8.npy"), kmeans.load_centroids(centroids))
    description = tokenize.describe(remote, ours, paths.Path(remote.kmeans_path))
    assert description["encoder"] == f"{root}/encoder" and description["kmeans"] == f"{root}/km8.npy"
    with pytest.raises(FileNotFoundError, match=f"encoder_path='{root}/absent': no such encoder folder"):
        job(f"{root}/absent", f"{root}/km8.npy")
    with pytest.raises(FileNotFoundError, match=f"kmeans_path='{root}/absent.npy': no such file"):
        job(f"{root}/encoder", f"{root}/absent.npy")
