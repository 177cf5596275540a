"""`mode: tokenize` on two real JAX processes (jax.distributed, gloo): the same features.jsonl, errors.jsonl, unit
store and report as one process, whichever host finishes last, every output written once and by process 0."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from multihost import launch, writes_by_process, written_more_than_once
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize, write_silent_wav

from configs import tokenize as tokenize_config
from slam_jax.files import read_jsonl
from slam_jax.models import kmeans
from slam_jax.speech import audio, features, tokenize

SHORT = [f"short{index}.wav" for index in range(len(SENTENCES))]
LONG = "quiet.wav"  # 20 minutes of silence: ~2 s of work for the host that gets it, nothing on disk (sparse)
EMPTY = "empty.wav"  # fails: a line in errors.jsonl
SHARD_SIZE = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(audio folder, MFCC centroids): the sentences spoken by espeak-ng, a long silent file and an empty one."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, sentence in zip(SHORT, SENTENCES, strict=True):
        soundfile.write(folder / name, synthesize(sentence).astype(np.float32) / 32768, ESPEAK_RATE)
    write_silent_wav(folder / LONG, 20 * 60, 16_000)
    (folder / EMPTY).write_bytes(b"")
    samples = audio.read_audio(str(folder / SHORT[1])).samples
    frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
    chosen = frames[np.random.default_rng(0).choice(len(frames), 12, replace=False)]
    return folder, kmeans.save_centroids(folder / "km12.npy", chosen)


def overrides(data_path: Path, out: Path, centroids: Path) -> dict:
    return {
        "data_path": str(data_path),
        "out_path": str(out),
        "encoder_path": "mfcc",
        "kmeans_path": str(centroids),
        "shard_size": SHARD_SIZE,
        "progress": False,
    }


def one_process(data_path: Path, out: Path, centroids: Path) -> dict:
    """The reference: the same job in this process."""
    config = tokenize_config.get_config()
    config.tokenize.update(overrides(data_path, out, centroids))
    return tokenize.run(config, out.parent)


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    return {str(path.relative_to(store)): np.load(path) for path in sorted(store.rglob("*.npy"))}


def last_part_written(parts: Path, host: int) -> int:
    return max(path.stat().st_mtime_ns for path in parts.glob(f"host{host:04d}of0002-*.jsonl"))


@pytest.mark.parametrize("slow_host", [0, 1])
def test_two_hosts_write_what_one_writes_whichever_finishes_last(tmp_path, corpus, slow_host):
    folder, centroids = corpus
    # Host h takes files h, h + 2, ...: the long file at position `slow_host` makes that host finish last.
    names = SHORT[:slow_host] + [LONG] + SHORT[slow_host:] + [EMPTY]
    listing = folder / f"list{slow_host}.txt"
    listing.write_text("".join(f"{name}\n" for name in names))
    reference = one_process(listing, tmp_path / "one" / "units", centroids)

    out = tmp_path / "two" / "units"
    args = ["--config", "configs/tokenize.py", "--workdir", str(out.parent)]
    args += [f"--config.tokenize.{key}={value}" for key, value in overrides(listing, out, centroids).items()]
    results = launch(args, tmp_path / "writes")

    parts = out / tokenize.PARTS
    fast_host = 1 - slow_host
    assert last_part_written(parts, slow_host) > last_part_written(parts, fast_host) + 1e8  # 0.1 s apart at least
    one = tmp_path / "one" / "units"
    assert (out / tokenize.FEATURES).read_text() == (one / tokenize.FEATURES).read_text()
    assert (out / tokenize.ERRORS).read_text() == (one / tokenize.ERRORS).read_text()
    assert [Path(line["file_name"]).name for line in read_jsonl(out / tokenize.ERRORS)] == [EMPTY]
    two_store, one_store = store_arrays(out / tokenize.STORE), store_arrays(one / tokenize.STORE)
    assert sorted(two_store) == sorted(one_store) and "train/shard-00000.tokens.npy" in one_store
    for name, array in one_store.items():
        np.testing.assert_array_equal(two_store[name], array, err_msg=name)
    offsets = [array for name, array in two_store.items() if name.endswith("offsets.npy")]
    assert sum(len(array) - 1 for array in offsets) == 5  # the 5 tokenised files

    report = json.loads((out / tokenize.REPORT).read_text())
    speed = ("seconds", "audio_seconds_per_second", "files_per_second", "out", "hosts", "store")
    assert {key: value for key, value in report.items() if key not in speed} == {
        key: value for key, value in reference.items() if key not in speed
    }
    assert report["hosts"] == 2 and report["tokenized"] == 5 and report["failed"] == 1
    assert report["store"] == {"path": str(out / tokenize.STORE), "train_tokens": reference["store"]["train_tokens"]}
    lines = [[line for line in result.stdout.splitlines() if line.startswith("tokenized ")] for result in results]
    assert lines[0] == lines[1] and lines[0][0].startswith("tokenized 5 of 6 files (1 failed, 0 truncated, 0 from")

    writes = writes_by_process(tmp_path / "writes", out)
    assert written_more_than_once(writes) == []
    own_parts = {host: sorted(str(path.relative_to(out)) for path in parts.glob(f"host{host:04d}*")) for host in (0, 1)}
    assert sorted(str(path) for path in writes[1]) == own_parts[1]
    outputs = [tokenize.DESCRIPTION, tokenize.FEATURES, tokenize.ERRORS, tokenize.STORE, tokenize.REPORT]
    assert sorted(str(path) for path in writes[0]) == sorted(own_parts[0] + outputs)
