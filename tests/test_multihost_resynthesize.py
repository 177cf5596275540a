"""`mode: resynthesize` on two real JAX processes (jax.distributed, gloo) of 4 CPU devices each against one process of
8 (this one): the same resynthesis.jsonl, summary and wavs (byte for byte); the files dealt out between the processes
(file i of the tokenised ones vocoded and written by process i mod 2), the lines and summary written once and by
process 0, the audio tokenised by both hosts through the unit cache, a file that cannot be tokenised skipped; a unit
the vocoder lacks stops both processes with the error one process gives, the lines naming every wav written."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
from multihost import launch, writes_by_process, written_more_than_once
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize

from configs import resynthesize as resynthesize_config
from slam_jax.models import kmeans
from slam_jax.speech import audio, features, resynthesize

DEVICES = 4  # per process of the two; this process has 8 (tests/conftest.py): the same total
COPIES = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Each sentence spoken by espeak-ng in COPIES files (the second at half length), an empty file (not
    tokenised), and 16 MFCC centroids: the tokeniser and, as its inverse, the vocoder."""
    folder = tmp_path_factory.mktemp("world")
    (folder / "audio").mkdir()
    for index, sentence in enumerate(SENTENCES):
        wave = synthesize(sentence).astype(np.float32) / 32768
        for copy in range(COPIES):
            soundfile.write(folder / "audio" / f"s{index}_{copy}.wav", wave[::2] if copy else wave, ESPEAK_RATE)
    (folder / "audio" / "empty.wav").write_bytes(b"")
    samples = audio.read_audio(str(folder / "audio" / "s1_0.wav")).samples
    frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
    chosen = frames[np.random.default_rng(0).choice(len(frames), 16, replace=False)]
    return {"audio": folder / "audio", "centroids": kmeans.save_centroids(folder / "km16.npy", chosen)}


def test_two_hosts_resynthesize_as_one(tmp_path, world):
    assert jax.local_device_count() == 2 * DEVICES
    job = {
        "resynthesize": {"data_path": world["audio"], "vocoder": world["centroids"], "progress": False},
        "tokenize": {"encoder_path": "mfcc", "kmeans_path": world["centroids"], "shard_size": 2, "progress": False},
    }
    config = resynthesize_config.get_config()
    for section, keys in job.items():
        config[section].update({key: str(value) if isinstance(value, Path) else value for key, value in keys.items()})
    one = resynthesize.run(config, tmp_path / "one")

    args = ["--config", "configs/resynthesize.py", "--workdir", str(tmp_path / "two")]
    args += [f"--config.{section}.{key}={value}" for section, keys in job.items() for key, value in keys.items()]
    results = launch(args, tmp_path / "writes", devices=DEVICES)
    writes = writes_by_process(tmp_path / "writes", tmp_path / "two")

    out_one, out_two = tmp_path / "one" / "resynthesize", tmp_path / "two" / "resynthesize"
    two = json.loads((out_two / resynthesize.SUMMARY).read_text())
    assert {key: value for key, value in two.items() if key != "seconds"} == {
        key: value for key, value in one.items() if key != "seconds"
    }
    files = 1 + COPIES * len(SENTENCES)
    assert one["files"] == files and one["resynthesized"] == files - 1 and len(one["skipped"]) == 1
    assert one["skipped"][0]["file"].endswith("empty.wav")
    assert (out_two / resynthesize.LINES).read_text() == (out_one / resynthesize.LINES).read_text()
    lines = [json.loads(line) for line in (out_one / resynthesize.LINES).read_text().splitlines()]
    assert [line["wav"] for line in lines] == sorted(f"s{i}_{c}.wav" for i in range(len(SENTENCES)) for c in (0, 1))
    for line in lines:
        assert (out_two / line["wav"]).read_bytes() == (out_one / line["wav"]).read_bytes()
    printed = [result.stdout.strip().splitlines()[-1].split(" s of audio")[0] for result in results]
    assert (
        printed[0]
        == printed[1]
        == f"resynthesized {files - 1} of {files} files (1 not tokenised) -> {out_two}; "
        + (f"{one['output_seconds']:.1f}")
    )

    outputs = [Path("resynthesize") / name for name in (resynthesize.LINES, resynthesize.SUMMARY)]
    for host in (0, 1):  # file i (input order, tokenised ones) by process i mod 2, then the lines and summary by 0
        mine = [path for path in writes[host] if path.parts[0] == "resynthesize"]
        assert mine == [Path("resynthesize") / line["wav"] for line in lines[host::2]] + (outputs if host == 0 else [])
    cache = [path for paths in writes.values() for path in paths if path.parts[0] == "units_cache"]
    assert written_more_than_once({0: cache}) == [] and cache
    assert all(path.parts[0] in ("units_cache", "resynthesize") for paths in writes.values() for path in paths)


def test_a_unit_the_vocoder_lacks_stops_both_hosts_with_one_error(tmp_path, world):
    centroids = np.load(world["centroids"])
    smaller = kmeans.save_centroids(tmp_path / "km15.npy", centroids[:-1])  # unit 15 unknown to the vocoder
    job = {
        "resynthesize": {"data_path": world["audio"], "vocoder": smaller, "progress": False},
        "tokenize": {"encoder_path": "mfcc", "kmeans_path": world["centroids"], "shard_size": 2, "progress": False},
    }
    config = resynthesize_config.get_config()
    for section, keys in job.items():
        config[section].update({key: str(value) if isinstance(value, Path) else value for key, value in keys.items()})
    with pytest.raises(ValueError) as caught:
        resynthesize.run(config, tmp_path / "one")
    message = str(caught.value)
    assert message.startswith(f"resynthesize.vocoder='{smaller}': {world['audio']}") and "unit ids must be" in message

    args = ["--config", "configs/resynthesize.py", "--workdir", str(tmp_path / "two")]
    args += [f"--config.{section}.{key}={value}" for section, keys in job.items() for key, value in keys.items()]
    with pytest.raises(AssertionError) as failed:
        launch(args, tmp_path / "writes", devices=DEVICES)
    report = str(failed.value)
    assert "process 0:" in report and "process 1:" in report and report.count(message) == 2, report
    writes = writes_by_process(tmp_path / "writes", tmp_path / "two")
    out = tmp_path / "two" / "resynthesize"
    lines = [json.loads(line)["wav"] for line in (out / resynthesize.LINES).read_text().splitlines()]
    assert lines == sorted(path.name for path in out.glob("*.wav"))  # every wav written named, in input order
    assert [path for path in writes[0] if path.name == resynthesize.LINES] == [
        Path("resynthesize") / resynthesize.LINES
    ]
    assert not any(path.name in (resynthesize.LINES, resynthesize.SUMMARY) for path in writes[1])
    assert not (out / resynthesize.SUMMARY).exists()
