"""The speech steps with their audio and outputs in buckets (issue 27): `mode: eval` on audio pairs in gs:// (units
cached there), `mode: resynthesize` from and into gs://, TTS into s3:// (and its resume there), SpokenSwag from
and into gs://, DPO preference rows naming audio in gs:// — each writing what a local run writes — and
`paths.local_copy` raced by two threads and by several processes on one cache, and its eviction. Real servers on
127.0.0.1 (tests/buckets.py); every test works in a temporary current folder that must stay free of a local `gs:`
or `s3:` folder (what a bucket URL taken for a local path makes)."""

import csv
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize
from test_eval_audio import single_file_encoder
from test_preference_audio import TEXTS

from configs import eval as eval_config
from configs import resynthesize as resynthesize_config
from configs import slam_dpo, spokenswag
from conversion import hf_to_flax
from slam_jax import paths
from slam_jax.data import preference
from slam_jax.evaluation import pair_metrics
from slam_jax.models import kmeans
from slam_jax.speech import audio, features, preference_audio, resynthesize, spoken_sets, tts
from slam_jax.speech.tokenize import TokenizeSettings

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A temporary current folder with its own cache of bucket files; no bucket URL may become a folder in it."""
    monkeypatch.setenv(paths.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not any(path.name.startswith(("gs:", "s3:")) for path in tmp_path.rglob("*")), "a URL became a folder"


def upload(folder: Path, url: str) -> str:
    """Every file under `folder` to the bucket folder `url`."""
    fs, key = paths.filesystem(url), paths.object_key(url)
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            fs.put_file(str(file), f"{key}/{file.relative_to(folder).as_posix()}")
    return url


def bucket_files(url: str) -> dict[str, bytes]:
    """{name relative to `url`: bytes} of every object under a bucket folder."""
    fs, key = paths.filesystem(url), paths.object_key(url)
    return {name[len(key) + 1 :]: fs.cat_file(name) for name in sorted(fs.find(key))}


def local_files(folder: Path) -> dict[str, bytes]:
    """{name relative to `folder`: bytes} of every file under a local folder."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in paths.Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- mode: eval on audio pairs in a bucket


def tsc_benchmark(folder: Path) -> np.ndarray:
    """A tStoryCloze-like folder as tests/test_eval_audio.py's (3 good pairs, one with an empty wav); centroids."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for index in range(4):
        for label in ("correct", "incorrect"):
            times = np.arange(int(rng.uniform(0.3, 0.8) * RATE)) / RATE
            signal = np.sin(2 * np.pi * rng.uniform(100, 3000) * times * (1 + times)) + 0.3 * rng.normal(
                size=len(times)
            )
            soundfile.write(folder / f"{index}_{label}.wav", (0.3 * signal).astype(np.float32), RATE)
    soundfile.write(folder / "3_incorrect.wav", np.zeros(0, np.float32), RATE)
    encoder = single_file_encoder()
    files = [folder / f"{index}_correct.wav" for index in range(3)]
    frames = np.concatenate([encoder.features([audio.read_audio(str(file)).samples])[0] for file in files])
    return frames[rng.choice(len(frames), 20, replace=False)]


def test_eval_of_audio_pairs_in_a_bucket_scores_as_the_local_files(workspace, gcs, hf_checkpoint):
    tmp_path = workspace
    centroids = tsc_benchmark(tmp_path / "tsc")
    _, hf_folder = hf_checkpoint(vocab_size=20 + 2)
    hf_to_flax.convert(str(hf_folder), tmp_path / "speech")
    root = gcs.bucket("speech-eval")
    data = upload(tmp_path / "tsc", f"{root}/tsc")
    config = eval_config.get_config()
    config.eval.update(data_path=str(tmp_path / "tsc"), model=str(tmp_path / "speech"), progress=False)
    config.tokenize.update(encoder_path="mfcc", progress=False)
    config.tokenize.kmeans_path = str(kmeans.save_centroids(tmp_path / "centroids.npy", centroids))
    local = pair_metrics.run(config, tmp_path / "local")["tstorycloze"]

    config.eval.data_path = data
    workdir = f"{root}/run"  # the unit cache too: WORKDIR/units_cache
    remote = pair_metrics.run(config, workdir)["tstorycloze"]
    assert remote["num_pairs"] == local["num_pairs"] == 3 and remote["accuracy"] == local["accuracy"]
    assert remote["skipped"] == [{"pair": "3", "file": f"{data}/3_incorrect.wav", "reason": "empty audio (0 samples)"}]
    assert remote["data_path"] == data and remote["breakdown"] == local["breakdown"]
    rows = read_jsonl(f"{workdir}/eval/tstorycloze_pairs.jsonl")
    local_rows = read_jsonl(tmp_path / "local" / "eval" / "tstorycloze_pairs.jsonl")
    assert [row["positive"] for row in rows] == [f"{data}/{index}_correct.wav" for index in range(3)]
    drop = ("positive", "negative")
    assert [{k: v for k, v in row.items() if k not in drop} for row in rows] == [
        {k: v for k, v in row.items() if k not in drop} for row in local_rows
    ]
    cached = [name for name in bucket_files(f"{workdir}/units_cache") if name.endswith("features.jsonl")]
    assert len(cached) == 1  # the units were cached in the bucket


# ---------------------------------------------------------------- resynthesis from and into a bucket


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, Path]:
    """(folder of the sentences as espeak-ng's 22,050 Hz wavs, 12 MFCC centroids from their frames)."""
    folder = tmp_path_factory.mktemp("speech")
    for index, sentence in enumerate(SENTENCES):
        soundfile.write(folder / f"s{index}.wav", synthesize(sentence).astype(np.float32) / 32768, ESPEAK_RATE)
    samples = [audio.read_audio(str(folder / f"s{index}.wav")).samples for index in range(2)]
    frames = np.concatenate(
        [np.asarray(features.spectral_features(features.SpectralConfig(), s[None]))[0] for s in samples]
    )
    chosen = frames[np.random.default_rng(0).choice(len(frames), 12, replace=False)]
    return folder, kmeans.save_centroids(tmp_path_factory.mktemp("centroids") / "km12.npy", chosen)


def resynthesis_config(data: str, centroids: str, out: str, cache: str):
    config = resynthesize_config.get_config()
    config.resynthesize.update(data_path=data, vocoder=centroids, out_path=out, units_cache=cache, progress=False)
    config.tokenize.update(encoder_path="mfcc", kmeans_path=centroids, progress=False)
    return config


def test_resynthesis_from_and_into_a_bucket_writes_the_local_files(workspace, gcs, speech):
    tmp_path = workspace
    folder, centroids = speech
    root = gcs.bucket("speech-resynthesis")
    data = upload(folder, f"{root}/audio")
    paths.filesystem(root).put_file(str(centroids), f"{paths.object_key(root)}/km12.npy")
    local = resynthesize.run(
        resynthesis_config(str(folder), str(centroids), str(tmp_path / "out"), str(tmp_path / "units")), tmp_path
    )
    out = f"{root}/out"
    remote = resynthesize.run(resynthesis_config(data, f"{root}/km12.npy", out, f"{root}/units"), tmp_path)

    assert remote["resynthesized"] == local["resynthesized"] == len(SENTENCES)
    assert remote["vocoder"] == f"{root}/km12.npy"
    differ = ("data_path", "vocoder", "seconds")
    assert {k: v for k, v in remote.items() if k not in differ} == {k: v for k, v in local.items() if k not in differ}
    wavs = [f"s{index}.wav" for index in range(len(SENTENCES))]
    written, expected = bucket_files(out), local_files(tmp_path / "out")
    assert sorted(written) == sorted(expected) == sorted([*wavs, resynthesize.LINES, resynthesize.SUMMARY])
    for name in wavs:
        assert written[name] == expected[name], name
    lines, local_lines = read_jsonl(f"{out}/{resynthesize.LINES}"), read_jsonl(tmp_path / "out" / resynthesize.LINES)
    assert [line["file_name"] for line in lines] == [f"{data}/s{index}.wav" for index in range(len(SENTENCES))]
    assert [{**line, "file_name": ""} for line in lines] == [{**line, "file_name": ""} for line in local_lines]
    with pytest.raises(ValueError, match=r"holds input audio"):  # an output folder over the bucket's inputs
        resynthesize.run(resynthesis_config(data, f"{root}/km12.npy", root, f"{root}/units"), tmp_path)
    assert resynthesize.output_names([f"{data}/s0.wav", f"{data}/x/s1.flac"]) == [Path("s0.wav"), Path("x/s1.wav")]


# ---------------------------------------------------------------- TTS and SpokenSwag into buckets

ROWS = [
    {"id": "a/one", "text": "The quick brown fox jumps over the lazy dog."},
    {"id": "a/two", "text": "Seven small boats sailed slowly across the quiet bay.", "voice": "en-us+m3:150:30"},
    {"id": "empty", "text": " "},
    {"id": "three", "text": "Hello world."},
]
TIMING = ("wall_seconds", "realtime_factor", "out", "num_workers")


def test_tts_into_a_bucket_writes_the_local_bytes_and_resumes_there(workspace, s3):
    tmp_path = workspace
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    local = tts.synthesize_corpus(rows, tmp_path / "local", num_workers=0, progress=False)
    root = s3.bucket("speech-tts")
    paths.filesystem(root).put_file(str(rows), f"{paths.object_key(root)}/rows.jsonl")
    out = f"{root}/out"
    remote = tts.synthesize_corpus(f"{root}/rows.jsonl", out, num_workers=1, progress=False)  # a worker uploads

    assert (remote["written"], remote["skipped_total"], remote["out"]) == (3, 1, out)
    assert {k: v for k, v in remote.items() if k not in TIMING} == {k: v for k, v in local.items() if k not in TIMING}
    written, expected = bucket_files(out), local_files(tmp_path / "local")
    assert sorted(written) == sorted(expected)
    for name, data in expected.items():
        if name != tts.REPORT:
            assert written[name] == data, name

    again = tts.synthesize_corpus(f"{root}/rows.jsonl", out, num_workers=0, progress=False)
    assert (again["written"], again["reused"], again["audio_seconds"]) == (0, 3, local["audio_seconds"])
    paths.filesystem(out).rm(f"{paths.object_key(out)}/audio/a/two.wav")
    third = tts.synthesize_corpus(f"{root}/rows.jsonl", out, num_workers=0, progress=False)
    assert (third["written"], third["reused"]) == (1, 2)
    assert {name: data for name, data in bucket_files(out).items() if name != tts.REPORT} == {
        name: data for name, data in expected.items() if name != tts.REPORT
    }


SWAG_HEADER = ["video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source"]
SWAG_HEADER += ["ending0", "ending1", "ending2", "ending3", "label"]
SWAG_ROWS = [
    ["v0", "0", "", "A man opens the door.", "He", "gold", "walks in.", "eats the door.", "flies away.", "sings.", "0"],
    ["v1", "1", "", "The girl picks up a pen.", "She", "gold", "drinks it.", "writes a note.", "runs.", "jumps.", "1"],
]


def test_spokenswag_from_and_into_a_bucket_writes_the_local_pairs(workspace, gcs):
    tmp_path = workspace
    swag = tmp_path / "swag.csv"
    with open(swag, "w", newline="") as handle:
        csv.writer(handle).writerows([SWAG_HEADER, *SWAG_ROWS])
    stories = tmp_path / "stories.txt"
    stories.write_text("A dog ran.\r\n<|endoftext|>\nThe cat sat.\nIt slept.\n")
    root = gcs.bucket("speech-swag")
    for file in (swag, stories):
        paths.filesystem(root).put_file(str(file), f"{paths.object_key(root)}/{file.name}")
    assert [story[1:] for story in spoken_sets.read_stories(f"{root}/stories.txt")] == [
        story[1:] for story in spoken_sets.read_stories(stories)
    ]
    assert [where for where, _ in spoken_sets.read_swag(f"{root}/swag.csv")] == [
        f"{root}/swag.csv:2",
        f"{root}/swag.csv:3",
    ]

    config = spokenswag.get_config()
    config.tokenize.update(encoder_path="mfcc", kmeans_path="", fit_units=8, fit_num_init=1, progress=False)
    config.tokenize.buckets_per_octave = 1
    config.synth.update(text_path=str(swag), out_path=str(tmp_path / "local"), num_workers=0, progress=False)
    local = spoken_sets.run(config, tmp_path)
    out = f"{root}/out"
    config.synth.update(text_path=f"{root}/swag.csv", out_path=out)
    remote = spoken_sets.run(config, tmp_path)
    assert remote["pairs"] == local["pairs"] == 2 and remote["preference"] == f"{out}/{spoken_sets.PREFERENCE}"
    assert bucket_files(out)[spoken_sets.PREFERENCE] == (tmp_path / "local" / spoken_sets.PREFERENCE).read_bytes()
    wavs = bucket_files(f"{out}/tts/audio")
    assert wavs == local_files(tmp_path / "local" / "tts" / "audio") and len(wavs) == 6


# ---------------------------------------------------------------- DPO rows naming audio in a bucket


def dpo_tokenizer() -> TokenizeSettings:
    tokenize = slam_dpo.get_config().tokenize
    tokenize.update(encoder_path="mfcc", kmeans_path="", fit_units=8, fit_num_init=1, progress=False)
    return TokenizeSettings.from_config(tokenize, "tokenize")


def pair_lines(audio_root: str) -> list[dict]:
    return [
        {"prompt": "audio/p0.wav", "chosen": "audio/c0.wav", "rejected": f"{audio_root}/r0.wav"},
        {"prompt": {"units": [1, 2, 3]}, "chosen": "<Un4><Un5>", "rejected": [6, 7]},
        {"prompt": "audio/p1.wav", "chosen": "audio/c1.wav", "rejected": "audio/r1.wav"},
        {"prompt": "audio/p1.wav", "chosen": "audio/missing.wav", "rejected": "audio/r1.wav"},
    ]


def test_dpo_pairs_naming_audio_in_a_bucket_are_prepared_as_local_ones(workspace, gcs):
    tmp_path = workspace
    folder = tmp_path / "pairs"
    (folder / "audio").mkdir(parents=True)
    for name, text in TEXTS.items():
        soundfile.write(folder / "audio" / f"{name}.wav", tts.synthesize(text, tts.DEFAULT_VOICES[0]), RATE)
    root = gcs.bucket("speech-dpo")
    upload(folder / "audio", f"{root}/pairs/audio")
    local_jsonl = folder / "pairs.jsonl"
    local_jsonl.write_text("".join(json.dumps(line) + "\n" for line in pair_lines(str(folder / "audio"))))
    remote_jsonl = f"{root}/pairs/pairs.jsonl"
    paths.Path(remote_jsonl).write_text("".join(json.dumps(line) + "\n" for line in pair_lines(f"{root}/pairs/audio")))

    local = preference_audio.resolve(str(local_jsonl), dpo_tokenizer(), tmp_path / "out", tmp_path / "cache-units")
    remote = preference_audio.resolve(
        remote_jsonl, dpo_tokenizer(), paths.Path(f"{root}/out"), paths.Path(f"{root}/units")
    )
    assert remote.startswith(f"{root}/out/preference-units-")
    lines, local_lines = read_jsonl(remote), read_jsonl(local)
    assert [line.pop(preference.ORIGIN) for line in lines] == [f"{remote_jsonl}:{number}" for number in range(1, 5)]
    for line in local_lines:
        del line[preference.ORIGIN]
    missing = f"audio file 'audio/missing.wav' ({root}/pairs/audio/missing.wav): no such file"
    assert lines[3]["chosen"] == {preference.AUDIO_ERROR: missing}
    assert lines[:3] == local_lines[:3] and lines[0]["prompt"]["units"]
    limits = preference.Limits(64, 64, bad_rows="skip")
    prepared = preference.prepare(remote, tmp_path / "store", 8, limits)
    assert prepared["num_pairs"] == 3 and sum(prepared["skipped"].values()) == 1


# ---------------------------------------------------------------- local_copy raced on one cache


def cache_entries(cache: Path) -> list[str]:
    """The cache's entries and hidden folders (staging, retired); its lock files (empty, kept) aside."""
    return sorted(path.name for path in (cache / "objects").iterdir() if path.suffix != ".lock")


def test_two_threads_copying_one_url_at_once_share_one_valid_entry(workspace, gcs, monkeypatch):
    """Both download (each into its own staging folder); the one that places its copy second keeps the first's and
    drops its own, where it used to fail with 'Directory not empty'. A changed object then replaces the entry."""
    folder = paths.Path(gcs.bucket("speech-race")) / "model"
    (folder / "config.json").write_text("{}")
    fs = paths.filesystem(str(folder))
    barrier, get_file = threading.Barrier(2, timeout=60), fs.get_file

    def together(remote, local, **kwargs):  # both copies are complete before either is placed
        get_file(remote, local, **kwargs)
        if remote.endswith("w.bin"):
            barrier.wait()

    monkeypatch.setattr(fs, "get_file", together)
    for content in (b"1" * 4096, b"2" * 100):
        (folder / "w.bin").write_bytes(content)
        with ThreadPoolExecutor(2) as pool:
            copies = list(pool.map(lambda _: paths.local_copy(folder), range(2)))
        assert copies[0] == copies[1] and copies[0].name == "model"
        assert (copies[0] / "w.bin").read_bytes() == content and (copies[0] / "config.json").read_text() == "{}"
        assert len(cache_entries(workspace / "cache")) == 1  # no staging or retired folder left behind
    monkeypatch.setattr(fs, "get_file", get_file)
    assert paths.local_copy(folder) == copies[0]  # reused, nothing downloaded


COPY = "import sys; from slam_jax import paths; print(paths.local_copy(sys.argv[1]))"


def test_processes_copying_one_url_at_once_all_get_the_same_copy(workspace, gcs):
    url = f"{gcs.bucket('speech-race')}/big.bin"
    content = np.random.default_rng(0).bytes(8 << 20)
    paths.Path(url).write_bytes(content)
    env = {**os.environ, **gcs.environ, paths.CACHE_VARIABLE: str(workspace / "cache"), "PYTHONPATH": str(ROOT)}
    running = [
        subprocess.Popen(
            [sys.executable, "-c", COPY, url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [process.communicate(timeout=120) for process in running]
    for process, (_, stderr) in zip(running, results, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    copies = {stdout.strip() for stdout, _ in results}
    assert len(copies) == 1 and Path(copies.pop()).read_bytes() == content
    assert len(cache_entries(workspace / "cache")) == 1


def test_eviction_renames_entries_aside_and_clears_what_killed_copies_left(workspace, gcs, monkeypatch):
    root = paths.Path(gcs.bucket("speech-race"))
    (root / "one.bin").write_bytes(b"1" * 600)
    (root / "two.bin").write_bytes(b"2" * 600)
    first = paths.local_copy(root / "one.bin")
    objects = workspace / "cache" / "objects"
    old = [objects / f".{first.parent.name}.tmp-1", objects / f".{first.parent.name}.old-2-ab"]
    fresh = objects / ".abc.tmp-3-cd"  # a copy under way in another process
    for folder in [*old, fresh]:
        (folder / "part").mkdir(parents=True)
    os.utime(old[0], (0, 0))  # left by a process killed long ago
    monkeypatch.setenv(paths.CACHE_LIMIT_VARIABLE, str(1000 / 2**30))  # room for one of the two
    second = paths.local_copy(root / "two.bin")
    assert second.read_bytes() == b"2" * 600 and not first.parent.exists()
    assert cache_entries(workspace / "cache") == sorted([fresh.name, second.parent.name])
